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

import gzip
import math
import os
import shutil
import stat
import tempfile
import urllib.request
import warnings
import zlib
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from pyro_vae.checks import is_real, is_whole, require_choice, require_whole
from pyro_vae.errors import ConfigError, DataError, DataNotFoundError
from pyro_vae.imagedata import ImageData
from pyro_vae.imagefiles import load_image_files
from pyro_vae.memory import format_bytes, limit_exceeded

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

DATA_DIR_ENV = "PYRO_VAE_DATA_DIR"
OFFLINE_ENV = "PYRO_VAE_OFFLINE"  # set to 1 to never download (tests, air-gapped machines)
DATASETS = ("mnist", "fashion-mnist", "frey-faces", "mnist-sample")
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _os_reason(error: OSError) -> str:
    """``permission denied`` rather than ``[Errno 13] Permission denied: '/the/path'``."""
    return error.strerror.lower() if error.strerror else _first_line(error)


def _not_found(name: str, where: Path, reason: str, detail: str = "") -> DataNotFoundError:
    detail = f" ({detail})" if detail else ""
    return DataNotFoundError(
        f"{name} not found under {where}{detail} and not downloaded ({reason}); point "
        f"--data-dir or ${DATA_DIR_ENV} at a folder that holds it (layout: see pyro_vae.data)"
    )


def _damaged(dataset: str, path: Path, problem: str) -> DataError:
    return DataError(f"damaged {dataset} file {path}: {problem}")


def _unreadable(dataset: str, path: Path, problem: str) -> DataError:
    return DataError(f"cannot read {dataset} file {path}: {problem}")


def _lexists(path: Path, dataset: str) -> bool:
    """Whether anything (a broken link included) is at ``path``; a folder on the way that
    cannot be searched is an error, not an absence."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise _unreadable(dataset, path, _os_reason(e)) from None
    return True


def _check_regular_file(path: Path, dataset: str) -> int:
    """The size of the regular file at ``path``, or a :class:`DataError` that says what is
    there instead (a folder, a broken link, a device, an unreadable parent)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _unreadable(dataset, path, "broken symbolic link") from None
    except OSError as e:
        raise _unreadable(dataset, path, _os_reason(e)) from None
    if stat.S_ISDIR(info.st_mode):
        raise _unreadable(dataset, path, "it is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise _unreadable(dataset, path, "not a regular file")
    return info.st_size


def _to_flat_float(images: torch.Tensor) -> torch.Tensor:
    # (N, H, W) uint8 -> (N, H * W) float32 in [0, 1]
    return images.reshape(images.shape[0], -1).to(torch.float32) / 255.0


def _to_flat(images: torch.Tensor) -> torch.Tensor:
    # (N, H, W) uint8 -> (N, H * W) uint8: a quarter of float32's memory; batches are
    # converted as they are drawn (BatchLoader)
    return images.reshape(images.shape[0], -1).contiguous()


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


# IDX, the format of LeCun's MNIST files: a big-endian magic number 0x000008NN (type 0x08 =
# unsigned byte, NN = number of dimensions), NN big-endian uint32 sizes, then the bytes.
IDX_MAGIC = {"labels": 0x00000801, "images": 0x00000803}
IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10
_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}  # torchvision's class names
CLASS_NAMES = {  # labels 0..9 of Fashion-MNIST (Xiao, Rasul & Vollgraf 2017); MNIST's are digits
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
}  # fmt: skip
_IDX_PREFIXES = {"train": "train", "test": "t10k"}
_IDX_KINDS = ("images", "labels")
_IDX_ARTICLES = {"images": "an images", "labels": "a labels"}


def _idx_file_name(split: str, kind: str) -> str:
    return f"{_IDX_PREFIXES[split]}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte"


def _idx_kind(file: str) -> str:
    return "labels" if "-labels-" in file else "images"


def _read_exactly(f, buffer: np.ndarray) -> int:
    """Fill ``buffer`` from ``f``; the number of bytes read (fewer only at the end of ``f``)."""
    view = memoryview(buffer).cast("B")
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            break
        done += got
    return done


def _parse_idx(f, size: int | None, path: Path, kind: str, dataset: str) -> np.ndarray:
    """The array in an open IDX file; ``size`` is the file's length, ``None`` when unknown
    (gzip). Nothing is allocated for the data before its length (for a plain file) and the
    memory left have been checked against the header."""
    dims = _idx_header(f, path, kind, dataset)
    count, expected = dims[0], math.prod(dims)
    what = f"the {count} {kind} its header declares ({expected} bytes)"
    if size is not None:  # a plain file: check its length before reading a byte of data
        available = size - 4 * (len(dims) + 1)
        if available < expected:
            raise _damaged(dataset, path, f"truncated: {available} bytes of data, not {what}")
        if available > expected:
            raise _damaged(dataset, path, f"{available - expected} bytes too many after {what}")
    # the header's count against the memory left, before anything is allocated or unpacked
    # (a gzip file's length is known only once it is unpacked: the header is all there is)
    limit = limit_exceeded(expected)
    if limit is not None:
        raise _unreadable(
            dataset,
            path,
            f"its header says it holds {count:,} {kind} ({format_bytes(expected)}), but "
            f"{limit.describe()}",
        )
    data = np.empty(expected, dtype=np.uint8)
    got = _read_exactly(f, data)
    if size is not None and got < expected:
        raise _damaged(dataset, path, "truncated while it was being read")
    if got < expected:
        raise _damaged(dataset, path, f"truncated: {got} bytes of data, not {what}")
    if size is None:
        extra = _count_rest(f)
        if extra:
            raise _damaged(dataset, path, f"{extra} bytes too many after {what}")
    return data.reshape(dims)


def _idx_header(f, path: Path, kind: str, dataset: str) -> list[int]:
    """The sizes an IDX file's header declares, checked against the file ``kind``."""
    other = "images" if kind == "labels" else "labels"
    header = f.read(4)
    if not header:
        raise _damaged(dataset, path, "the file is empty (0 bytes)")
    if len(header) < 4:
        raise _damaged(dataset, path, f"only {len(header)} bytes, too short for an IDX header")
    magic = int.from_bytes(header, "big")
    if magic == IDX_MAGIC[other]:
        raise _damaged(
            dataset,
            path,
            f"looks like {_IDX_ARTICLES[other]} file where {_IDX_ARTICLES[kind]} file belongs "
            f"(magic number 0x{magic:08x}, expected 0x{IDX_MAGIC[kind]:08x})",
        )
    if magic != IDX_MAGIC[kind]:
        raise _damaged(
            dataset,
            path,
            f"not an IDX {kind} file (magic number 0x{magic:08x}, expected "
            f"0x{IDX_MAGIC[kind]:08x})",
        )
    ndim = magic & 0xFF
    dims_bytes = f.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise _damaged(dataset, path, "truncated inside its header")
    dims = [int(d) for d in np.frombuffer(dims_bytes, dtype=">u4")]
    count = dims[0]
    if kind == "images" and tuple(dims[1:]) != IMAGE_SIZE:
        raise _damaged(dataset, path, f"the header says {dims[1]}x{dims[2]} images; expected 28x28")
    if count == 0:
        raise _damaged(dataset, path, f"the header says it holds no {kind}")
    return dims


def _count_rest(f, chunk: int = 2**20) -> int:
    """The bytes left in ``f``, read a chunk at a time (a gzip file may unpack to any size)."""
    count = 0
    while block := f.read(chunk):
        count += len(block)
    return count


def _read_idx(path: Path, kind: str, dataset: str) -> np.ndarray:
    """Read and check one IDX file of ``kind`` ``"images"`` ``(N, 28, 28)`` or ``"labels"``
    ``(N,)``, both uint8, plain or gzip-compressed; a :class:`DataError` names the file and
    what is wrong with it."""
    size = _check_regular_file(path, dataset)
    compressed = path.name.endswith(".gz")
    try:
        with open(path, "rb") as f:
            if not compressed:
                return _parse_idx(f, size, path, kind, dataset)
            if size == 0:
                raise _damaged(dataset, path, "the file is empty (0 bytes)")
            with gzip.GzipFile(fileobj=f, mode="rb") as unzipped:
                return _parse_idx(unzipped, None, path, kind, dataset)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _damaged(dataset, path, f"not a valid gzip file ({_first_line(e)})") from None
    except OSError as e:
        raise _unreadable(dataset, path, _os_reason(e)) from None


def _misplaced(root: Path, raw: Path, file: str) -> Path | None:
    """Where ``file`` (or its ``.gz``) lies in a near miss of ``raw``: in its parent, in the
    data root itself (``--data-dir`` at the raw folder), or in ``root/raw`` (``--data-dir`` at
    the data set's folder)."""
    for folder in (raw.parent, root, root / "raw"):
        for name in (file, file + ".gz"):
            if os.path.isfile(folder / name):
                return folder / name
    return None


def _download_idx(name: str, raw: Path, missing: list[str]) -> None:
    """Fetch the missing files from torchvision's mirrors (md5-checked, then un-gzipped)."""
    import torchvision
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(torchvision.datasets, _IDX_FOLDERS[name])
    md5s = dict(cls.resources)
    for file in missing:
        archive = file + ".gz"
        error: Exception | None = None
        for mirror in cls.mirrors:
            try:
                download_and_extract_archive(
                    mirror + archive, download_root=str(raw), filename=archive, md5=md5s[archive]
                )
                break
            except (RuntimeError, OSError, EOFError, zlib.error) as e:  # URLError is an OSError
                error = e
        else:
            detail = f"could not download {archive}: {_first_line(error)}"
            raise _not_found(name, raw, detail) from None


def _idx_split(name: str, split: str, arrays: dict, paths: dict) -> tuple[torch.Tensor, ...]:
    """A split's images ``(N, 784)`` and labels ``(N,)``, checked against each other."""
    image_file, label_file = (_idx_file_name(split, kind) for kind in _IDX_KINDS)
    images, labels = arrays[image_file], arrays[label_file]
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"damaged {name} {split} set: {paths[image_file]} holds {images.shape[0]} "
            f"images but {paths[label_file]} holds {labels.shape[0]} labels"
        )
    if labels.max() >= NUM_CLASSES:
        position = int(np.argmax(labels >= NUM_CLASSES))
        raise _damaged(
            name,
            paths[label_file],
            f"label {labels[position]} at position {position} is outside 0..9",
        )
    return _to_flat(torch.from_numpy(images)), torch.from_numpy(labels).long()


def _load_idx(name: str, root: Path, download: bool) -> ImageData:
    """MNIST or Fashion-MNIST from the four IDX files in ``root/<MNIST|FashionMNIST>/raw``,
    torchvision's layout."""
    raw = root / _IDX_FOLDERS[name] / "raw"
    if _lexists(raw, name) and not os.path.isdir(raw):
        raise _unreadable(name, raw, "expected a folder holding the IDX files, found a file")
    files = [_idx_file_name(split, kind) for split in _IDX_PREFIXES for kind in _IDX_KINDS]

    def locate(file: str) -> Path | None:
        for candidate in (raw / file, raw / (file + ".gz")):
            if _lexists(candidate, name):
                return candidate
        return None

    paths = {file: locate(file) for file in files}
    # Files that are there are checked first: damage is an error even when other files are
    # missing, so that a damaged MNIST never passes for an absent one.
    arrays = {
        file: _read_idx(path, _idx_kind(file), name)
        for file, path in paths.items()
        if path is not None
    }
    missing = [file for file in files if paths[file] is None]
    if missing and download:
        _download_idx(name, raw, missing)
        for file in missing:
            paths[file] = locate(file)
            if paths[file] is None:
                raise _not_found(name, raw, f"the download did not produce {file}")
            arrays[file] = _read_idx(paths[file], _idx_kind(file), name)
    elif missing:
        detail = f"missing {', '.join(missing)}, plain or .gz"
        found = [path for path in (_misplaced(root, raw, file) for file in missing) if path]
        if found:
            detail += f"; found {found[0].name} at {found[0]}; expected at {raw / found[0].name}"
            if len(found) > 1:
                detail += f" (and {len(found) - 1} more of the missing files beside it)"
        raise _not_found(name, raw, f"downloading is off: ${OFFLINE_ENV}", detail)

    splits = {split: _idx_split(name, split, arrays, paths) for split in _IDX_PREFIXES}
    return ImageData(
        name=name,
        train_images=splits["train"][0],
        train_labels=splits["train"][1],
        test_images=splits["test"][0],
        test_labels=splits["test"][1],
        image_shape=IMAGE_SIZE,
        source=str(raw),
        class_names=CLASS_NAMES.get(name),
    )


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
    return _load_idx(name, root, download)


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
    """Minibatches from an in-memory tensor of images, as float32 in ``[0, 1]``.

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
            batch = as_float(self.images[order[start : start + self.batch_size]])
            if self.dynamic:
                batch = torch.bernoulli(batch, generator=generator)
            yield batch
