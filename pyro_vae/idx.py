"""MNIST and Fashion-MNIST from their IDX files, in torchvision's layout
(``<root>/MNIST/raw``, ``<root>/FashionMNIST/raw``), plain or gzip-compressed.

Each file's header, length and the memory it needs are checked before a byte of its data is
read, so a damaged, truncated or misplaced file is one line that names it; missing files are
fetched from torchvision's mirrors, md5-checked (:func:`pyro_vae.data.load_dataset`).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from pyro_vae.datafiles import (
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
from pyro_vae.errors import DataError
from pyro_vae.imagedata import ImageData
from pyro_vae.memory import format_bytes, limit_exceeded

__all__ = ["CLASS_NAMES", "IDX_MAGIC", "IMAGE_SIZE", "NUM_CLASSES", "load_idx"]

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


def load_idx(name: str, root: Path, download: bool) -> ImageData:
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
