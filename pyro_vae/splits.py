"""The images of a run: the train, validation and test tensors a config asks for
(:func:`run_images`), and the fingerprint that ties a run to the images it was trained on
(:func:`data_fingerprint`, :func:`check_same_data`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.config import TrainConfig
from pyro_vae.data import (
    VALID_BINARIZATION_SEED,
    ImageData,
    as_float,
    binarize_once,
    load_dataset,
    prepare_images,
    split_validation,
)
from pyro_vae.errors import CheckpointError, ConfigError, DataError
from pyro_vae.model import image_shape_chw

__all__ = ["RunImages", "check_same_data", "data_fingerprint", "run_images"]


def data_fingerprint(data: ImageData) -> str:
    """A digest of a data set's training and test images (their dtype, shape and values), which
    a run records: the same name can hold other images later (an image folder with files added
    or removed), and a resumed run or its evaluation would then use other splits."""
    digest = hashlib.sha256()
    own_valid = () if data.valid_images is None else (data.valid_images,)
    for images in (data.train_images, data.test_images, *own_valid):
        images = images.detach().cpu().contiguous()
        digest.update(f"{images.dtype} {tuple(images.shape)};".encode())
        digest.update(images.numpy().data)
    return digest.hexdigest()[:16]


def check_same_data(recorded: str | None, data: ImageData, run_dir: Path | str) -> None:
    """Refuse data that are not the images the run in ``run_dir`` was trained on (a run from
    before fingerprints, ``recorded`` ``None``, is trusted)."""
    if recorded is not None and recorded != data_fingerprint(data):
        raise CheckpointError(
            f"the images of {data.name} are not those the run in {run_dir} was trained on (their "
            "fingerprint changed: files added, removed or edited); its splits would be of "
            "other images. Train a new run on these data"
        )


@dataclass(frozen=True)
class RunImages:
    """The images of a run, as :func:`run_images` prepares them."""

    data: ImageData
    train: torch.Tensor  # (N, ...) as stored (uint8 for 8-bit data) or binarized once
    valid: torch.Tensor  # (V, ...) float32, binarized once; empty without a validation split
    test: torch.Tensor  # (M, ...) float32, binarized once
    # each image's class index, split as the images are; None for data without labels (the
    # validation labels also for a data set's own validation set, which has none)
    train_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None


def run_images(config: TrainConfig, data: ImageData | None = None) -> RunImages:
    """The data set of a run and the train, validation and test tensors it uses, on the CPU.

    The one place where data are loaded and prepared for a config (see
    :func:`pyro_vae.data.prepare_images`): training, the estimator study and the CLI's
    ``evaluate``, ``reconstruct`` and ``plot`` all see the same images. The validation images
    are ``config.valid_fraction`` of the training set, drawn with ``config.split_seed``
    (:func:`pyro_vae.data.split_validation`), or the data set's own validation set where it has
    one (binarized MNIST; none with ``valid_fraction`` 0), before ``train_size`` takes the
    first images of the rest. Images come flat, ``(N, D)``, for the MLP, and as
    ``(N, C, H, W)`` for conv and hand-written networks.

    :param data: images to use instead of loading ``config.dataset``.
    """
    if data is None:
        data = load_dataset(config.dataset, config.data_dir, image_size=config.image_size)
    train, test = prepare_images(data, config.binarize, config.likelihood, config.seed)
    for labels, images, split in (
        (data.train_labels, train, "train"),
        (data.test_labels, test, "test"),
    ):
        if labels is not None and getattr(labels, "shape", None) != images.shape[:1]:
            shape = tuple(getattr(labels, "shape", ()))
            raise DataError(f"{data.name} has {len(images)} {split} images and labels of shape "
                            f"{shape}: one label an image")  # fmt: skip
    train_labels = valid_labels = None
    if data.valid_images is not None:  # the data set's own validation set, if any is asked for
        valid = data.valid_images[: len(data.valid_images) if config.valid_fraction > 0 else 0]
        train_labels = data.train_labels
    else:
        train, valid = split_validation(train, config.valid_fraction, config.split_seed)
        if data.train_labels is not None:  # the same draw: it depends on the count and seed
            train_labels, valid_labels = split_validation(
                data.train_labels, config.valid_fraction, config.split_seed
            )
    valid = as_float(valid)
    if config.binarize == "dynamic":
        valid = binarize_once(valid, VALID_BINARIZATION_SEED)
    if config.train_size is not None:
        if config.train_size > len(train):  # a config that says 512 of 324 would be untrue
            held = f" after the validation split of {len(valid)}" if len(valid) else ""
            raise ConfigError(
                f"train_size {config.train_size} is more than the {len(train)} training images "
                f"of {data.name}{held}; ask for {len(train)} or fewer, or leave it out for all"
            )
        train = train[: config.train_size]
        train_labels = None if train_labels is None else train_labels[: config.train_size]
    if config.arch != "mlp":
        shape = image_shape_chw(data.image_shape)
        train, valid, test = (t.reshape(-1, *shape) for t in (train, valid, test))
    if train.is_floating_point():  # float64 arrays, say, meet float32 networks
        train = train.to(torch.float32)
    return RunImages(data, train, valid, test, train_labels, valid_labels)
