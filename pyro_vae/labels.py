"""The labels of a semi-supervised run (:mod:`pyro_vae.m2`): which training images keep
theirs (:func:`draw_labelled`, class-balanced and seeded), the checks a tensor of labels
passes, the digest a run's checkpoint keeps of them, and the classifier's accuracy."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from pyro_vae.checks import is_whole, require_whole
from pyro_vae.errors import CheckpointError, ConfigError, DataError

__all__ = [
    "UNLABELLED",
    "accuracy",
    "check_batch_labels",
    "check_classes",
    "check_labels",
    "check_same_labels",
    "draw_labelled",
    "label_fingerprint",
    "run_labels",
    "score_labels",
    "takes_labels",
]

#: the class index of an unlabelled image
UNLABELLED = -1


def check_classes(classes) -> None:
    """:class:`ConfigError` unless ``classes`` is a whole number of at least 2."""
    if not (is_whole(classes) and classes >= 2):
        raise ConfigError(f"a model of labelled images (m2, cvae) needs 2 or more classes, got "
                          f"{classes!r}")  # fmt: skip


def draw_labelled(
    labels: torch.Tensor, count: int, seed: int, classes: int, names: Sequence[str] | None = None
) -> torch.Tensor:
    """The training labels a semi-supervised run sees: ``count`` images keep their label,
    class-balanced (``count // C`` a class, one more for ``count % C`` classes chosen at
    random), drawn with ``seed``; the others get ``-1``.

    :raises DataError: more labels than images, fewer than one a class, or a class with too
        few images.
    """
    check_classes(classes)
    labels = check_labels(labels, len(labels) if isinstance(labels, torch.Tensor) else 0)
    count = require_whole(count, "the number of labelled images")
    n = len(labels)
    if count > n:
        raise DataError(f"--labels {count} is more than the {n} training images")
    if count < classes:
        raise DataError(
            f"--labels {count} leaves a class without a labelled image: a class-balanced draw "
            f"needs at least one a class, {classes}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4D32]))
    per_class = np.full(classes, count // classes)
    per_class[rng.permutation(classes)[: count % classes]] += 1
    held = labels.cpu().numpy()
    chosen = []
    for c in range(classes):
        members = np.flatnonzero(held == c)
        if len(members) < per_class[c]:
            name = names[c] if names is not None and c < len(names) else str(c)
            raise DataError(
                f"class {name!r} has {len(members)} training image(s), fewer than the "
                f"{per_class[c]} labelled ones a class-balanced draw of {count} asks for"
            )
        chosen.append(rng.choice(members, size=per_class[c], replace=False))
    out = torch.full_like(labels, UNLABELLED)
    index = torch.from_numpy(np.concatenate(chosen)).to(labels.device)
    out[index] = labels[index]
    return out


def run_labels(config, images) -> tuple[torch.Tensor | None, int | None]:
    """An M2 run's training labels (:func:`draw_labelled`: a class index where observed, else
    ``-1``), or a label-conditioned CVAE's (all of them), and the number of classes, for the
    run's images (a :class:`pyro_vae.splits.RunImages`); ``(None, None)`` for the others.

    :raises DataError: data without labels, or labels the draw cannot make.
    """
    if not takes_labels(config):
        return None, None
    data, labels, model = images.data, images.train_labels, config.model
    if labels is None:
        raise DataError(
            f"model {model}{_ON_LABEL if model == 'cvae' else ''} learns from labelled images, "
            f"and {data.name} has no labels (a folder of images has them in class sub-folders)"
        )
    labels = check_labels(labels, len(images.train), f"{data.name}'s training labels")
    classes = len(data.class_names) if data.class_names else int(labels.max()) + 1
    empty = sorted(set(range(classes)) - set(labels.unique().tolist()))
    if classes < 2 or empty:
        which = f"class(es) {empty[:5]} have" if empty else "it has one class:"
        raise DataError(
            f"model {model} needs two or more classes, each with training images, and "
            f"{data.name}'s {which} none; its labels are 0..C-1"
        )
    if data.test_labels is not None:
        test = check_labels(data.test_labels, len(data.test_labels), f"{data.name}'s test labels")
        if len(test) and int(test.max()) >= classes:
            raise DataError(
                f"{data.name}'s test labels go up to {int(test.max())}, its training labels to "
                f"{classes - 1}: the model knows the training images' classes only"
            )
    if model == "cvae":  # every image's label is its condition, the test images' too
        if data.test_labels is None:
            raise DataError(f"model cvae{_ON_LABEL} scores test images given their labels, "
                            f"and {data.name}'s test images have none")  # fmt: skip
        return labels, classes
    names = data.class_names
    return draw_labelled(labels, config.labels, config.label_seed, classes, names), classes


def check_labels(labels, count: int, what: str = "labels") -> torch.Tensor:
    """``labels`` as int64 class indices, ``(count,)``, all ``>= 0``, or :class:`DataError`."""
    if not isinstance(labels, torch.Tensor):
        raise DataError(f"{what} must be a tensor of class indices, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise DataError(f"{what} must be whole class indices, got {labels.dtype}")
    if tuple(labels.shape) != (count,):
        raise DataError(f"{what} must be {count} class indices, one an image, got shape "
                        f"{tuple(labels.shape)}")  # fmt: skip
    if count and int(labels.min()) < 0:
        raise DataError(f"{what} hold {int(labels.min())}; class indices are 0 or more")
    return labels.long()


def check_batch_labels(y, count: int, classes: int, who: str, unlabelled: bool = False) -> None:
    """:class:`DataError` unless ``y`` holds ``count`` whole class indices, ``0..classes-1``
    (with ``unlabelled``, also ``-1``): the labels handed to a model and guide by ``who``."""
    allowed = f"{'-1 (unlabelled) or ' if unlabelled else ''}0..{classes - 1}"
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"{who}'s labels are whole class indices ({allowed}), got {y!r}")
    if tuple(y.shape) != (count,):
        raise DataError(f"{who} takes one label an image: {count} images, labels of shape "
                        f"{tuple(y.shape)}")  # fmt: skip
    if len(y) and (int(y.min()) < (-1 if unlabelled else 0) or int(y.max()) >= classes):
        raise DataError(f"{who}'s labels must be {allowed}, got {int(y.min())}..{int(y.max())}")


def label_fingerprint(labels: torch.Tensor) -> str:
    """A digest of an M2 run's training labels (the observed ones and where they are), which
    its checkpoint records: the same images can come with other labels."""
    return hashlib.sha256(labels.detach().cpu().long().numpy().tobytes()).hexdigest()[:16]


def check_same_labels(checkpoint: dict | None, labels: torch.Tensor | None, run_dir) -> None:
    """Refuse to resume an M2 run (from ``checkpoint``; ``None``: a new run) on labels other
    than those it was trained on."""
    recorded = None if checkpoint is None else checkpoint.get("label_fingerprint")
    if labels is not None and recorded is not None and recorded != label_fingerprint(labels):
        error = CheckpointError(
            f"the labels of these images are not those the run in {run_dir} was trained on "
            "(the same images, other labels); train a new run on these data"
        )
        error.shared = True  # every process has the same labels
        raise error


_ON_LABEL = " --condition label"


def takes_labels(config) -> bool:
    """Whether a run's model takes the images' labels: M2, and the CVAE on the label."""
    return config.model == "m2" or (config.model == "cvae" and config.condition == "label")


def score_labels(config, images) -> torch.Tensor | None:
    """The labels of an M2 run's per-epoch score images (validation, else test), for the
    classifier's accuracy, or of a label-conditioned CVAE's, its condition; ``None`` for the
    VAE or images without labels."""
    if not takes_labels(config):
        return None
    return images.valid_labels if config.valid_fraction > 0 else images.data.test_labels


@torch.no_grad()
def accuracy(vae, images: torch.Tensor, labels: torch.Tensor | None):
    """The share of ``images`` whose most probable class under ``q(y|x)`` is their label
    (``None`` without labels)."""
    if labels is None or not hasattr(vae, "classify"):  # M2's classifier; a CVAE has none
        return None
    right = sum(
        (vae.classify(x) == y.to(x.device)).sum().item()
        for x, y in zip(images.split(1000), labels.split(1000), strict=True)
    )
    return right / len(images)
