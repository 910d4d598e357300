"""Image data sets held in memory, binarization, and minibatches.

MNIST and Fashion-MNIST are read from their IDX files (torchvision only downloads them), Frey
Face from ``frey_rawface.mat`` (the 1965 faces of Kingma & Welling 2013), and ``mnist-sample``
is a small slice of MNIST shipped with the package so that the main command runs offline.
Images are flattened tensors: 8-bit data (MNIST, Fashion-MNIST, the sample, a user's PNGs)
as ``uint8`` grey levels ``0..255``, a quarter of float32's memory, other data as float32 in
``[0, 1]``. Batches are drawn from those tensors directly and converted to float32 in
``[0, 1]`` as they are drawn (:class:`BatchLoader`, :func:`as_float`), with no per-image
transforms. Code that reads ``ImageData.train_images`` as numbers divides 8-bit images by 255.

Where data lives: the ``data_dir`` argument, else the ``PYRO_VAE_DATA_DIR`` environment
variable, else ``~/.cache/pyro_vae/data`` (``$XDG_CACHE_HOME`` is honoured). The layout is
torchvision's (``MNIST/raw/...``, ``FashionMNIST/raw/...``) plus ``FreyFace/frey_rawface.mat``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from pyro_vae.checks import is_real, is_whole, require_choice, require_whole
from pyro_vae.datafiles import (
    DATA_DIR_ENV,
    OFFLINE_ENV,
    _check_regular_file,
    _damaged,
    _first_line,
    _lexists,
    _not_found,
    _os_reason,
    _to_flat,
    _unreadable,
)
from pyro_vae.errors import ConfigError, DataError, DataNotFoundError
from pyro_vae.idx import load_idx
from pyro_vae.imagedata import ImageData
from pyro_vae.imagefiles import load_image_files

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "DATA_DIR_ENV",
    "OFFLINE_ENV",
    "BatchLoader",
    "ImageData",
    "as_float",
    "is_named_dataset",
    "mean_image",
    "split_validation",
    "DataFallbackWarning",
    "binarize_once",
    "check_data_settings",
    "check_support",
    "default_binarize",
    "load_dataset",
    "load_mnist_or_sample",
    "prepare_images",
    "resolve_data_dir",
]

DATASETS = ("mnist", "fashion-mnist", "frey-faces", "mnist-sample", "binarized-mnist")
BINARIZED_FILE = Path("BinarizedMNIST") / "binarized_mnist.npz"
_BINARIZED_SPLITS = {"x_train": 50_000, "x_valid": 10_000, "x_test": 10_000}
BINARIZATIONS = ("dynamic", "static", "none")

# The test set is binarized once with this seed, whatever the training seed, so that every
# evaluation of every run scores the same binary images.
TEST_BINARIZATION_SEED = 1234
VALID_BINARIZATION_SEED = 4321  # likewise for the validation images
FREY_URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"
FREY_NUM_TEST = 200  # Frey Face has no official split; a fixed random 200 faces are held out.
SAMPLE_FILE = "mnist_sample.npz"


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


def _to_flat_float(images: torch.Tensor) -> torch.Tensor:
    # (N, H, W) uint8 -> (N, H * W) float32 in [0, 1]
    return images.reshape(images.shape[0], -1).to(torch.float32) / 255.0


def as_float(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 in ``[0, 1]``: 8-bit ones (``uint8``, 0..255) divided by 255."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


def mean_image(images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The mean image ``(D,)`` in ``[0, 1]``, in float64 chunks (no float copy of the set)."""
    total = torch.zeros(images.shape[1:], dtype=torch.float64, device=images.device)
    for part in images.split(chunk):
        total += as_float(part).sum(0, dtype=torch.float64)
    return (total / max(1, len(images))).to(torch.float32)


FREY_SHAPE = (28, 20)


def _read_frey(path: Path) -> np.ndarray:
    """The ``ff`` matrix of ``frey_rawface.mat``, ``(560, N)`` uint8 with one face a column,
    checked; a :class:`DataError` names the file and what is wrong with it."""
    import scipy.io

    dataset = "frey-faces"
    size = _check_regular_file(path, dataset)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise _unreadable(dataset, path, _os_reason(e)) from None
    with f:
        if size == 0:
            raise _damaged(dataset, path, "the file is empty (0 bytes)")
        try:
            contents = scipy.io.loadmat(f)
        except Exception as e:  # noqa: BLE001 - scipy raises many types on a bad file
            raise _damaged(dataset, path, f"not a readable .mat file ({_first_line(e)})") from None
    if "ff" not in contents:
        names = [key for key in contents if not key.startswith("__")]
        held = f"it holds {', '.join(names)}" if names else "it holds no variables"
        raise _damaged(dataset, path, f"no variable 'ff' ({held})")
    faces = contents["ff"]
    rows = FREY_SHAPE[0] * FREY_SHAPE[1]
    if faces.dtype.kind not in "uif":
        raise _damaged(dataset, path, f"'ff' is not a numeric matrix (dtype {faces.dtype})")
    if faces.ndim != 2 or faces.shape[0] != rows or faces.shape[1] == 0:
        raise _damaged(
            dataset,
            path,
            f"'ff' has shape {faces.shape}; expected ({rows}, N), one 28x20 face a column",
        )
    if faces.dtype != np.uint8:
        if not np.isfinite(faces).all() or faces.min() < 0 or faces.max() > 255:
            raise _damaged(dataset, path, "'ff' holds values outside the grey levels 0..255")
        if (faces != np.round(faces)).any():
            raise _damaged(dataset, path, "'ff' holds fractions; expected grey levels 0..255")
        faces = faces.astype(np.uint8)
    return faces


def _load_frey(root: Path, download: bool) -> ImageData:
    path = root / "FreyFace" / "frey_rawface.mat"
    if not _lexists(path, "frey-faces"):
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
    faces = _read_frey(path)  # (560, 1965) uint8, one face a column
    if faces.shape[1] <= FREY_NUM_TEST:
        problem = (
            f"'ff' holds {faces.shape[1]} faces; {FREY_NUM_TEST} are held out for testing, so "
            f"it needs more than {FREY_NUM_TEST} (the file has 1965)"
        )
        raise _damaged("frey-faces", path, problem)
    faces = torch.from_numpy(np.ascontiguousarray(faces.T.reshape(-1, *FREY_SHAPE)))
    order = torch.randperm(faces.shape[0], generator=torch.Generator().manual_seed(0))
    images = _to_flat_float(faces[order])
    return ImageData(
        name="frey-faces",
        train_images=images[FREY_NUM_TEST:],
        train_labels=None,
        test_images=images[:FREY_NUM_TEST],
        test_labels=None,
        image_shape=FREY_SHAPE,
        source=str(path),
    )


def _load_binarized(root: Path) -> ImageData:
    """Binarized MNIST, the fixed binarization of Salakhutdinov & Murray (2008) with its split
    of 50,000 / 10,000 / 10,000 images ("static MNIST" of the NVIL, VIMCO, Concrete, REBAR and
    ARM papers), from ``BinarizedMNIST/binarized_mnist.npz`` under the data root: ``x_train``,
    ``x_valid``, ``x_test`` ``(N, 784)`` in ``{0, 1}``. Not downloaded: put the file there.

    The test images are shuffled with a fixed seed: the file holds them sorted by digit. The
    file's ``y_train``/``y_test`` are not read: they are not the digits of its images (every
    "class" has the data's mean grey level, 0.13, where MNIST's ones have 0.08), so the set has
    no labels here."""
    name, path = "binarized-mnist", root / BINARIZED_FILE
    if not _lexists(path, name):
        why = "pyro_vae has no source to fetch it from; docs/discrete.md says where it comes from"
        raise _not_found(name, path, why)
    _check_regular_file(path, name)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in _BINARIZED_SPLITS if key not in arrays.files]
            if missing:
                raise _damaged(name, path, f"it has no {', '.join(missing)}")
            splits = {key: arrays[key] for key in _BINARIZED_SPLITS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise _damaged(name, path, f"not a readable .npz file ({_first_line(e)})") from None
    for key, count in _BINARIZED_SPLITS.items():
        images = splits[key]
        if images.ndim != 2 or images.shape[1] != 784 or len(images) != count:
            raise _damaged(name, path, f"{key} has shape {images.shape}; expected ({count}, 784)")
        if not np.isin(images, (0, 1)).all():
            raise _damaged(name, path, f"{key} holds values other than 0 and 1")
    as_tensor = {key: torch.from_numpy(images.astype(np.float32)) for key, images in splits.items()}
    # The test images come sorted by digit (the first thousand are zeros): a fixed shuffle, so
    # that the first N of them (--eval-images N, the pictures) are a fair sample of all ten
    order = torch.randperm(len(as_tensor["x_test"]), generator=torch.Generator().manual_seed(0))
    as_tensor["x_test"] = as_tensor["x_test"][order]
    return ImageData(
        name=name,
        train_images=as_tensor["x_train"],
        train_labels=None,  # the file's y_* arrays are not these images' digits (see above)
        test_images=as_tensor["x_test"],
        test_labels=None,
        image_shape=(28, 28),
        source=f"{path} (Salakhutdinov & Murray's fixed binarization)",
        valid_images=as_tensor["x_valid"],
    )


def _load_sample() -> ImageData:
    with resources.files("pyro_vae").joinpath("_bundled", SAMPLE_FILE).open("rb") as f:
        arrays = np.load(f)
        arrays = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
    return ImageData(
        name="mnist-sample",
        train_images=_to_flat(arrays["train_images"]),
        train_labels=arrays["train_labels"].long(),
        test_images=_to_flat(arrays["test_images"]),
        test_labels=arrays["test_labels"].long(),
        image_shape=(28, 28),
        source=f"bundled with pyro_vae ({SAMPLE_FILE})",
    )


class DataFallbackWarning(UserWarning):
    """MNIST was missing, and the bundled ``mnist-sample`` is used instead."""


def is_named_dataset(dataset: str) -> bool:
    """Whether ``dataset`` names a built-in data set (else it is a path to the user's files)."""
    return dataset in DATASETS


def check_data_settings(
    dataset: str,
    binarize: str,
    train_size: int | None,
    batch_size: int,
    valid_fraction: float = 0.0,
    image_size: int | Sequence[int] | None = None,
    here: bool = True,
) -> None:
    """Raise :class:`pyro_vae.ConfigError` for data settings out of range: an unknown data set
    that is not a folder or ``.npy``/``.npz`` file either (looked for on this machine only if
    ``here``), ``image_size`` for a built-in set, a validation fraction outside ``[0, 1)``."""
    if not isinstance(dataset, str) or not (
        is_named_dataset(dataset)
        or (not here and os.path.isabs(dataset))
        or os.path.isdir(dataset)
        or (dataset.lower().endswith((".npy", ".npz")) and os.path.isfile(dataset))
    ):
        raise ConfigError(
            f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}, or give a "
            "folder of PNG/JPEG images or a .npy/.npz file"
        )
    require_choice(binarize, "binarize", BINARIZATIONS)
    if train_size is not None:
        require_whole(train_size, "train_size")
    require_whole(batch_size, "batch_size")
    if not is_real(valid_fraction) or not 0 <= valid_fraction < 1:
        raise ConfigError(f"valid_fraction must be from 0 up to (not including) 1, got "
                          f"{valid_fraction!r}")  # fmt: skip
    if image_size is not None:
        sizes = (image_size,) if is_whole(image_size) else image_size
        if (
            not isinstance(sizes, Sequence)
            or len(sizes) not in (1, 2)
            or not all(is_whole(n) and n >= 1 for n in sizes)
        ):
            raise ConfigError(f"image_size must be N or (H, W), positive, got {image_size!r}")
        if is_named_dataset(dataset):
            raise ConfigError(
                f"image_size resizes a folder or array of your own images; {dataset} comes in "
                "its own size"
            )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool | None = None,
    fallback: bool = False,
    image_size: int | Sequence[int] | None = None,
) -> ImageData:
    """Load a data set by name, or a folder or array of images by path, into memory.

    :param name: one of :data:`DATASETS`, or the path of a folder of PNG/JPEG images or of a
        ``.npy``/``.npz`` array (:func:`pyro_vae.imagefiles.load_image_files`).
    :param data_dir: the data root (see the module docstring for the fallbacks).
    :param download: fetch missing files from the internet (torchvision's mirrors for MNIST and
        Fashion-MNIST, S. Roweis's page for Frey Face); by default yes, unless the environment
        variable ``PYRO_VAE_OFFLINE`` is ``1``.
    :param fallback: for ``mnist`` only: when MNIST is missing and cannot be downloaded, load
        the bundled ``mnist-sample`` instead (its ``name`` says so) and warn with a
        :class:`DataFallbackWarning` that says what happened and how to get the full set.
        The examples and ``pyro-vae train`` use this, so that they run offline.
    :param image_size: for a folder or array: resize every image to ``(H, W)`` (or ``N x N``).
    :raises DataNotFoundError: the files are missing and could not be downloaded; the message
        lists them, and says where a misplaced one was found.
    :raises DataError: a file is there but unreadable or damaged (empty, truncated, the wrong
        kind, labels outside 0..9, ...), or declares more images than the memory this process
        has left (:mod:`pyro_vae.memory`); the message names the file and the problem.
    """
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise DataError(f"data_dir must be a path, got {data_dir!r}")
    if isinstance(name, (str, os.PathLike)) and not is_named_dataset(os.fspath(name)):
        path = os.fspath(name)
        if os.path.isdir(path) or path.lower().endswith((".npy", ".npz")):
            return load_image_files(path, image_size)
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or give a folder "
            "of PNG/JPEG images or a .npy/.npz file"
        )
    if name == "mnist-sample":
        return _load_sample()
    if fallback and name == "mnist":
        data, note = load_mnist_or_sample(data_dir, download)
        if note:
            warnings.warn(note, DataFallbackWarning, stacklevel=2)
        return data
    if download is None:
        download = os.environ.get(OFFLINE_ENV, "").lower() not in ("1", "true", "yes")
    root = resolve_data_dir(data_dir)
    if name == "frey-faces":
        return _load_frey(root, download)
    if name == "binarized-mnist":
        return _load_binarized(root)
    return load_idx(name, root, download)


def load_mnist_or_sample(
    data_dir: str | os.PathLike | None = None, download: bool | None = None
) -> tuple[ImageData, str | None]:
    """MNIST, or the bundled ``mnist-sample`` when MNIST is missing and cannot be downloaded.

    :returns: the data and, after a fallback, a note that says what happened and how to get
        the full set (``None`` otherwise). The caller shows it loudly and records it.
    """
    try:
        return load_dataset("mnist", data_dir, download), None
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
    """Raise :class:`DataError` if ``images`` hold values the likelihood cannot score.

    8-bit images (``uint8``) are read as grey levels ``0..255 / 255``.
    """
    if images.dtype == torch.uint8:
        if likelihood == "bernoulli" and not ((images == 0) | (images == 255)).all():
            raise DataError(
                f"{what} have grey levels but likelihood 'bernoulli' needs binary pixels; use "
                "--binarize dynamic or static, or likelihood 'continuous-bernoulli' or 'gaussian'"
            )
        return
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

    ``dynamic``: the train images stay as stored (grey, ``uint8`` for 8-bit data) and each
    batch is sampled afresh by :class:`BatchLoader`; ``static``: the train images are
    binarized once from ``seed``; ``none``: grey levels as they are. The test images come back
    as float32, binarized once with a fixed seed for both ``dynamic`` and ``static``, so
    evaluations of different runs are comparable.
    """
    if binarize not in BINARIZATIONS:
        raise DataError(f"unknown binarization {binarize!r}; choose one of {BINARIZATIONS}")
    train, test = data.train_images, data.test_images
    for images, split in ((train, "train"), (test, "test")):
        if images.dim() != 2 or images.shape[0] == 0 or images.shape[1] != data.data_dim:
            raise DataError(
                f"{data.name} {split} images must be (N, {data.data_dim}) with N > 0, got "
                f"{tuple(images.shape)}"
            )
    check_support(train, None, f"{data.name} train images")
    check_support(test, None, f"{data.name} test images")
    test = as_float(test)
    if binarize != "none":
        for images, split in ((train, "train"), (test, "test")):
            if images.is_floating_point() and (images.min() < 0 or images.max() > 1):
                raise DataError(f"{data.name} {split} images fall outside [0, 1]; cannot binarize")
        test = binarize_once(test, TEST_BINARIZATION_SEED)
        if binarize == "static":
            train = binarize_once(as_float(train), seed)
    if binarize != "dynamic":
        check_support(train, likelihood, f"{data.name} train images")
    check_support(test, likelihood, f"{data.name} test images")
    return train, test


def split_validation(
    images: torch.Tensor, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, valid)``: a random ``fraction`` of the training images held out for validation.

    The split depends only on ``seed`` and the number of images, not on the training seed, so
    runs that differ in their seed are chosen between on the same validation images. At least
    one image goes each way (for ``fraction > 0``); the rest keep their order.
    """
    n = len(images)
    if fraction == 0:
        return images, images[:0]
    count = min(n - 1, max(1, round(fraction * n)))
    if count < 1:
        raise DataError(f"{n} training image(s) are too few to hold out a validation split")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[torch.randperm(n, generator=generator)[:count]] = True
    return images[~chosen.to(images.device)], images[chosen.to(images.device)]


class BatchLoader:
    """Minibatches from an in-memory tensor of images, as float32 in ``[0, 1]``, with their
    ``labels`` where a semi-supervised model takes them.

    8-bit images (``uint8``) are converted batch by batch, so the set stays in memory at a
    quarter of float32's size.

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
        labels: torch.Tensor | None = None,
    ) -> None:
        if binarize not in BINARIZATIONS:
            raise DataError(f"unknown binarization {binarize!r}; choose one of {BINARIZATIONS}")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.dynamic = binarize == "dynamic"
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch, each ``(batch_size, D)`` (the last may be smaller, unless
        ``drop_last``); with ``labels``, ``(images, labels)`` pairs, the same images."""
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
            index = order[start : start + self.batch_size]
            batch = as_float(self.images[index])
            if self.dynamic:
                batch = torch.bernoulli(batch, generator=generator)
            yield batch if self.labels is None else (batch, self.labels[index])
