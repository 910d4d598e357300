"""Image data sets held in memory, binarization, and minibatches.

MNIST and Fashion-MNIST come through torchvision, Frey Face from ``frey_rawface.mat`` (the
1965 faces of Kingma & Welling 2013), and ``mnist-sample`` is a small slice of MNIST shipped
with the package so that the main command runs offline. Images are flattened float tensors in
``[0, 1]``; batches are drawn from those tensors directly, with no per-image transforms.

Where data lives: the ``data_dir`` argument, else the ``PYRO_VAE_DATA_DIR`` environment
variable, else ``~/.cache/pyro_vae/data`` (``$XDG_CACHE_HOME`` is honoured). The layout is
torchvision's (``MNIST/raw/...``, ``FashionMNIST/raw/...``) plus ``FreyFace/frey_rawface.mat``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from pyro_vae.errors import DataError, DataNotFoundError

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "DATA_DIR_ENV",
    "OFFLINE_ENV",
    "BatchLoader",
    "ImageData",
    "binarize_once",
    "check_support",
    "default_binarize",
    "load_dataset",
    "load_mnist_or_sample",
    "prepare_images",
    "resolve_data_dir",
]

DATA_DIR_ENV = "PYRO_VAE_DATA_DIR"
OFFLINE_ENV = "PYRO_VAE_OFFLINE"  # set to 1 to never download (tests, air-gapped machines)
DATASETS = ("mnist", "fashion-mnist", "frey-faces", "mnist-sample")
BINARIZATIONS = ("dynamic", "static", "none")

# The test set is binarized once with this seed, whatever the training seed, so that every
# evaluation of every run scores the same binary images.
TEST_BINARIZATION_SEED = 1234
FREY_URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"
FREY_NUM_TEST = 200  # Frey Face has no official split; a fixed random 200 faces are held out.
SAMPLE_FILE = "mnist_sample.npz"


@dataclass(frozen=True)
class ImageData:
    """A data set of flattened images in ``[0, 1]``.

    ``train_images`` is ``(N, H * W)`` float32; labels are int64 class indices or ``None``
    (Frey Face has none). ``source`` says where the images were read from.
    """

    name: str
    train_images: torch.Tensor  # (N, D)
    train_labels: torch.Tensor | None  # (N,)
    test_images: torch.Tensor  # (M, D)
    test_labels: torch.Tensor | None  # (M,)
    image_shape: tuple[int, int]
    source: str

    @property
    def data_dim(self) -> int:
        return self.image_shape[0] * self.image_shape[1]


def default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "pyro_vae" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else ``$PYRO_VAE_DATA_DIR``, else the user's cache folder."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return default_data_dir()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _not_found(name: str, where: Path, reason: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"{name} not found under {where} and not downloaded ({reason}); point --data-dir "
        f"or ${DATA_DIR_ENV} at a folder that holds it (layout: see pyro_vae.data)"
    )


def _to_flat_float(images: torch.Tensor) -> torch.Tensor:
    # (N, H, W) uint8 -> (N, H * W) float32 in [0, 1]
    return images.reshape(images.shape[0], -1).to(torch.float32) / 255.0


def _load_torchvision(name: str, root: Path, download: bool) -> ImageData:
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST}
    cls = cls[name]
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as e:
        reason = f"downloading is off: ${OFFLINE_ENV}" if not download else _first_line(e)
        raise _not_found(name, root / cls.__name__ / "raw", reason) from None
    return ImageData(
        name=name,
        train_images=_to_flat_float(train.data),
        train_labels=train.targets.long(),
        test_images=_to_flat_float(test.data),
        test_labels=test.targets.long(),
        image_shape=(28, 28),
        source=str(root / cls.__name__ / "raw"),
    )


def _load_frey(root: Path, download: bool) -> ImageData:
    import scipy.io

    path = root / "FreyFace" / "frey_rawface.mat"
    if not path.exists():
        if not download:
            raise _not_found("frey-faces", path, f"downloading is off: ${OFFLINE_ENV}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
                with urllib.request.urlopen(FREY_URL, timeout=30) as response:
                    shutil.copyfileobj(response, tmp)
            os.replace(tmp.name, path)
        except OSError as e:
            raise _not_found("frey-faces", path, _first_line(e)) from None
    try:
        faces = scipy.io.loadmat(str(path))["ff"]  # (560, 1965) uint8, one face a column
    except Exception as e:  # noqa: BLE001 - scipy raises many types on a bad file
        raise DataError(f"cannot read {path}: {_first_line(e)}") from None
    faces = torch.from_numpy(np.ascontiguousarray(faces.T.reshape(-1, 28, 20)))
    order = torch.randperm(faces.shape[0], generator=torch.Generator().manual_seed(0))
    images = _to_flat_float(faces[order])
    return ImageData(
        name="frey-faces",
        train_images=images[FREY_NUM_TEST:],
        train_labels=None,
        test_images=images[:FREY_NUM_TEST],
        test_labels=None,
        image_shape=(28, 20),
        source=str(path),
    )


def _load_sample() -> ImageData:
    with resources.files("pyro_vae").joinpath("_bundled", SAMPLE_FILE).open("rb") as f:
        arrays = np.load(f)
        arrays = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
    return ImageData(
        name="mnist-sample",
        train_images=_to_flat_float(arrays["train_images"]),
        train_labels=arrays["train_labels"].long(),
        test_images=_to_flat_float(arrays["test_images"]),
        test_labels=arrays["test_labels"].long(),
        image_shape=(28, 28),
        source=f"bundled with pyro_vae ({SAMPLE_FILE})",
    )


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, download: bool | None = None
) -> ImageData:
    """Load a data set by name into memory.

    :param name: one of :data:`DATASETS`.
    :param data_dir: the data root (see the module docstring for the fallbacks).
    :param download: fetch missing files from the internet (torchvision's mirrors for MNIST and
        Fashion-MNIST, S. Roweis's page for Frey Face); by default yes, unless the environment
        variable ``PYRO_VAE_OFFLINE`` is ``1``.
    :raises DataNotFoundError: the files are missing and could not be downloaded.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "mnist-sample":
        return _load_sample()
    if download is None:
        download = os.environ.get(OFFLINE_ENV, "").lower() not in ("1", "true", "yes")
    root = resolve_data_dir(data_dir)
    if name == "frey-faces":
        return _load_frey(root, download)
    return _load_torchvision(name, root, download)


def load_mnist_or_sample(
    data_dir: str | os.PathLike | None = None,
) -> tuple[ImageData, str | None]:
    """MNIST, or the bundled ``mnist-sample`` when MNIST is missing and cannot be downloaded.

    :returns: the data and, after a fallback, a note that says what happened and how to get
        the full set (``None`` otherwise). The caller shows it loudly and records it.
    """
    try:
        return load_dataset("mnist", data_dir), None
    except DataNotFoundError as e:
        note = (
            f"MNIST was not found ({e}). Using the bundled mnist-sample (5000 training and "
            "1000 test digits) instead: its figures are NOT comparable with full-MNIST results. "
            f"For the full set, put MNIST/raw/ under {resolve_data_dir(data_dir)}, pass "
            "--data-dir or set PYRO_VAE_DATA_DIR, or run once online so torchvision downloads it."
        )
        return load_dataset("mnist-sample"), note


def default_binarize(likelihood: str) -> str:
    """Dynamic binarization for a Bernoulli likelihood (as in Burda et al. 2015), else grey."""
    return "dynamic" if likelihood == "bernoulli" else "none"


def check_support(images: torch.Tensor, likelihood: str | None, what: str = "data") -> None:
    """Raise :class:`DataError` if ``images`` hold values the likelihood cannot score."""
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).sum())
        raise DataError(f"{what} contain {bad} NaN or infinite values")
    if likelihood == "bernoulli" and not ((images == 0) | (images == 1)).all():
        raise DataError(
            f"{what} have grey levels but likelihood 'bernoulli' needs binary pixels; use "
            "--binarize dynamic or static, or likelihood 'continuous-bernoulli' or 'gaussian'"
        )
    if likelihood == "continuous-bernoulli" and not ((images >= 0) & (images <= 1)).all():
        raise DataError(f"{what} fall outside [0, 1], the support of 'continuous-bernoulli'")


def binarize_once(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli sample of the grey levels, reproducible from ``seed``."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    return torch.bernoulli(images, generator=generator)


def prepare_images(
    data: ImageData, binarize: str, likelihood: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The train and test tensors a run uses, checked against the likelihood's support.

    ``dynamic``: the train images stay grey and each batch is sampled afresh by
    :class:`BatchLoader`; ``static``: the train images are binarized once from ``seed``;
    ``none``: grey levels as they are. The test images are binarized once with a fixed seed
    for both ``dynamic`` and ``static``, so evaluations of different runs are comparable.
    """
    if binarize not in BINARIZATIONS:
        raise DataError(f"unknown binarization {binarize!r}; choose one of {BINARIZATIONS}")
    train, test = data.train_images, data.test_images
    check_support(train, None, f"{data.name} train images")
    check_support(test, None, f"{data.name} test images")
    if binarize != "none":
        for images, split in ((train, "train"), (test, "test")):
            if images.min() < 0 or images.max() > 1:
                raise DataError(f"{data.name} {split} images fall outside [0, 1]; cannot binarize")
        test = binarize_once(test, TEST_BINARIZATION_SEED)
        if binarize == "static":
            train = binarize_once(train, seed)
    if binarize != "dynamic":
        check_support(train, likelihood, f"{data.name} train images")
    check_support(test, likelihood, f"{data.name} test images")
    return train, test


class BatchLoader:
    """Minibatches from an in-memory tensor of images.

    Each epoch has its own random stream, derived from ``(seed, epoch)``: the order, and with
    ``binarize="dynamic"`` the fresh Bernoulli sample of every batch, do not depend on the
    global RNG, so a resumed run draws the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        binarize: str = "none",
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if binarize not in BINARIZATIONS:
            raise DataError(f"unknown binarization {binarize!r}; choose one of {BINARIZATIONS}")
        self.images = images
        self.batch_size = batch_size
        self.dynamic = binarize == "dynamic"
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        """The batches of one epoch, each ``(batch_size, D)`` (the last may be smaller, unless
        ``drop_last``)."""
        device = self.images.device
        stream_seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        generator = torch.Generator(device=device).manual_seed(stream_seed)
        n = self.images.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=generator, device=device)
        else:
            order = torch.arange(n, device=device)
        stop = len(self) * self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            batch = self.images[order[start : start + self.batch_size]]
            if self.dynamic:
                batch = torch.bernoulli(batch, generator=generator)
            yield batch
