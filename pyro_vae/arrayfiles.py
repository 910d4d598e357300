"""The user's ``.npy`` and ``.npz`` arrays of images (:func:`pyro_vae.imagefiles.load_image_files`
documents the layouts): the headers are read and checked against the file's length and the memory
left before anything is allocated, and the arrays are then read with ``allow_pickle=False``."""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch

from pyro_vae.datafiles import (
    _first_line,
    _Loaded,
    _NotRegularFile,
    _open_regular,
    _os_reason,
    _Splits,
)
from pyro_vae.errors import DataError
from pyro_vae.memory import format_bytes, limit_exceeded

_NPZ_SPLITS = {"train": ("train", "test"), "x_train": ("x_train", "x_test")}
_NPZ_LABELS = ("y_train", "y_test")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with files, an empty zip
_RESIZE_CHUNK_BYTES = 2**26  # images are resized a few at a time, in float copies of this size


class _Header(NamedTuple):
    """What a .npy header declares: the array's shape and dtype, and its bytes (0 for an
    array of Python objects, which ``allow_pickle=False`` refuses before reading it)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int


def _load_arrays(path: Path, size: tuple[int, int] | None) -> _Loaded:
    try:
        file = _open_regular(path)
    except _NotRegularFile as e:
        raise DataError(f"cannot read {path}: {e}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {_os_reason(e)}") from None
    with file:
        arrays, keys = _read_arrays(path, file, size)
    splits: _Splits = {}
    for split, (image_key, label_key) in keys.items():
        images = _array_images(arrays[image_key], _where(path, image_key))
        if size is not None:
            images = _resize(images, size)
        labels = None
        if label_key is not None:
            labels = _array_labels(arrays[label_key], _where(path, label_key), images.shape[0])
        splits[split] = (images, labels)
    if "train" in splits:
        splits = _match_splits(path, keys, splits)
    described = ", ".join(key for pair in keys.values() for key in pair if key)
    return splits, None, f"{path}" + (f" ({described})" if described else "")


def _read_arrays(
    path: Path, file: BinaryIO, size: tuple[int, int] | None
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, str | None]]]:
    """The arrays of an open .npy or .npz file, and the keys of its splits
    (:func:`_choose_keys`); the headers are read and checked first, against the file's length
    and the memory left, so that nothing is allocated for an array that cannot be there."""
    try:
        magic = file.read(6)
        if not magic.startswith(_NPY_MAGIC) and not magic.startswith(_ZIP_MAGICS):
            what = "the file is empty (0 bytes)" if not magic else "not a NumPy .npy or .npz file"
            raise DataError(f"cannot read {path}: {what}")
        file.seek(0)
        if magic.startswith(_NPY_MAGIC):
            headers = {"": _npy_header(file, os.fstat(file.fileno()).st_size, str(path))}
        else:
            headers = _npz_headers(file, path)
        keys = _choose_keys(path, headers)
        _check_array_memory(path, headers, keys, size)
        file.seek(0)
        loaded = np.load(file, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"": loaded}, keys
        with loaded:
            return {key: loaded[key] for key in headers}, keys
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        reason = _os_reason(e) if isinstance(e, OSError) else _first_line(e)
        raise DataError(f"cannot read {path}: {reason}") from None


def _npy_header(stream: BinaryIO, length: int, where: str) -> _Header:
    """The header of the .npy file that starts ``stream``, checked against ``length``, the
    bytes of the file (or .npz member) that holds it.

    :raises DataError: an unreadable header, or one that declares more data than follows it.
    """
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    version = np.lib.format.read_magic(stream)
    if version not in readers:  # 3.0 is written only for structured arrays
        raise DataError(
            f"cannot read {where}: .npy format version {version[0]}.{version[1]}; expected an "
            "array of uint8 or float images (format 1.0 or 2.0)"
        )
    shape, _, dtype = readers[version](stream)
    room = length - stream.tell()
    if dtype.hasobject:
        return _Header(shape, dtype, 0)
    if any(n < 0 for n in shape):
        raise DataError(f"cannot read {where}: damaged: its header declares shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > room:
        raise DataError(
            f"cannot read {where}: damaged: its header declares a {dtype} array of shape "
            f"{shape}, {format_bytes(nbytes)}, but {format_bytes(room)} of data follow"
        )
    return _Header(shape, dtype, nbytes)


def _npz_headers(file: BinaryIO, path: Path) -> dict[str, _Header]:
    """The header of each array in a .npz file, by key (the member's name without ``.npy``),
    read without unpacking more of a member than its header."""
    headers = {}
    with zipfile.ZipFile(file) as archive:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            try:
                member = archive.open(info.filename)
            except (RuntimeError, NotImplementedError) as e:  # encrypted, an unknown method
                raise DataError(f"cannot read {path}: {_first_line(e)}") from None
            with member:
                if member.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                    raise DataError(f"cannot read {path}: {key!r} is not a NumPy array")
                member.seek(0)
                headers[key] = _npy_header(member, info.file_size, _where(path, key))
    return headers


def _check_array_memory(
    path: Path,
    headers: dict[str, _Header],
    keys: dict[str, tuple[str, str | None]],
    size: tuple[int, int] | None,
) -> None:
    """Refuse arrays, or arrays resized to ``size``, that the memory left cannot hold."""
    stored = sum(header.nbytes for header in headers.values())
    limit = limit_exceeded(stored)
    if limit is not None:
        if "" in headers:
            header = headers[""]
            what = f"its {header.dtype} array of shape {header.shape} takes"
        else:
            what = "its arrays take"
        raise DataError(
            f"cannot read {path}: {what} {format_bytes(stored)}, but {limit.describe()}; use "
            "fewer images"
        )
    if size is None:
        return
    resized = 0
    for image_key, _ in keys.values():
        header = headers[image_key]
        layout = _layout(header.shape)
        if layout is not None:  # else refused for its shape once read
            channels = 1 if layout == "NHW" else header.shape[layout.index("C")]
            item = 1 if header.dtype == np.uint8 else 4  # resized floats are float32
            resized += header.shape[0] * channels * size[0] * size[1] * item
    limit = limit_exceeded(resized)
    if limit is not None:
        raise DataError(
            f"cannot resize the images of {path} to {size[0]}x{size[1]} (image_size, "
            f"--image-size): they would take {format_bytes(resized)}, but {limit.describe()}; "
            "choose a smaller --image-size"
        )


def _where(path: Path, key: str) -> str:
    return f"{path}, array {key!r}" if key else f"{path}"


def _choose_keys(path: Path, arrays: Mapping[str, object]) -> dict[str, tuple[str, str | None]]:
    """``{split: (image key, label key or None)}`` for the arrays (or their headers) of a .npy
    or .npz file, by their keys."""
    if "" in arrays:  # a .npy file
        return {"all": ("", None)}
    keys = sorted(arrays)
    train_keys = [key for key in _NPZ_SPLITS if key in arrays]
    if len(train_keys) == 2:
        raise DataError(f"{path} holds both 'train' and 'x_train'; keep one set of keys")
    if not train_keys:
        for test_key in ("test", "x_test"):
            if test_key in arrays:
                train_key = "train" if test_key == "test" else "x_train"
                raise DataError(f"{path} holds test images {test_key!r} but no {train_key!r}")
        if len(keys) == 1 and keys[0] not in _NPZ_LABELS:
            return {"all": (keys[0], None)}
        held = f"it holds {', '.join(keys)}" if keys else "it holds no arrays"
        raise DataError(
            f"no images in {path} ({held}); expected arrays 'train' and 'test', 'x_train' and "
            "'x_test' (labels 'y_train', 'y_test'), or a single array of images"
        )
    train_key, test_key = _NPZ_SPLITS[train_keys[0]]
    has_labels = [key in arrays for key in _NPZ_LABELS]
    if test_key not in arrays:
        if has_labels[1]:
            raise DataError(f"{path} holds labels 'y_test' but no test images {test_key!r}")
        return {"all": (train_key, "y_train" if has_labels[0] else None)}
    if has_labels[0] != has_labels[1]:
        have, lack = _NPZ_LABELS if has_labels[0] else reversed(_NPZ_LABELS)
        raise DataError(f"{path} holds labels {have!r} but not {lack!r}; give both or neither")
    labels = _NPZ_LABELS if has_labels[0] else (None, None)
    return {"train": (train_key, labels[0]), "test": (test_key, labels[1])}


def _array_images(array: np.ndarray, where: str) -> torch.Tensor:
    """Checked images, ``(N, C, H, W)`` uint8 0..255 or float32 in ``[0, 1]``."""
    if array.dtype != np.uint8 and array.dtype.kind != "f":
        raise DataError(
            f"cannot use {where}: unsupported dtype {array.dtype}; expected uint8 (0..255) or "
            "a float type (0..1)"
        )
    shape = array.shape
    layout = _layout(shape)
    if layout == "NHWC":
        array = array.transpose(0, 3, 1, 2)
    elif layout == "NHW":
        array = array[:, None]
    elif layout is None:
        raise DataError(
            f"cannot use {where}: unsupported shape {shape}; expected (N, H, W), (N, H, W, C) "
            "or (N, C, H, W) with C = 1 (grey) or 3 (RGB) channels"
        )
    if 0 in array.shape:
        raise DataError(f"cannot use {where}: it holds no images (shape {shape})")
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            raise DataError(
                f"cannot use {where}: {array.size - finite.sum()} NaN or infinite values"
            )
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            hint = "; divide 0..255 grey levels by 255" if high > 1 and low >= 0 else ""
            raise DataError(
                f"cannot use {where}: values from {low:g} to {high:g}, outside [0, 1]{hint}"
            )
        array = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array))


def _layout(shape: tuple[int, ...]) -> str | None:
    """``"NHWC"``, ``"NCHW"`` or ``"NHW"``: how an array of ``shape`` holds images; ``None``
    for none of them. ``(N, H, W, C)`` wins a tie: NumPy's and Pillow's layout."""
    if len(shape) == 4 and shape[-1] in (1, 3):
        return "NHWC"
    if len(shape) == 4 and shape[1] in (1, 3):
        return "NCHW"
    return "NHW" if len(shape) == 3 else None


def _array_labels(array: np.ndarray, where: str, count: int) -> torch.Tensor:
    if array.dtype.kind not in "iu":
        raise DataError(f"cannot use {where}: labels must be integers, got dtype {array.dtype}")
    if array.ndim != 1:
        raise DataError(
            f"cannot use {where}: labels must be one-dimensional, got shape {array.shape}"
        )
    if array.shape[0] != count:
        raise DataError(f"cannot use {where}: {array.shape[0]} labels for {count} images")
    if array.min() < 0:
        raise DataError(f"cannot use {where}: negative label {array.min()}")
    return torch.from_numpy(array.astype(np.int64))


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resizing of ``(N, C, H, W)`` images, Pillow's filter
    (torchvision's ``resize``); uint8 stays uint8."""
    if tuple(images.shape[-2:]) == size:
        return images
    from torchvision.transforms.v2.functional import resize  # torchvision takes 1 s to import

    n, channels, height, width = images.shape
    out = torch.empty((n, channels, *size), dtype=images.dtype)
    # a few images at a time, so that their float copies take about _RESIZE_CHUNK_BYTES
    per_image = 4 * channels * max(height * width, size[0] * size[1])
    step = max(1, _RESIZE_CHUNK_BYTES // per_image)
    for start in range(0, n, step):
        resized = resize(images[start : start + step], list(size), antialias=True)
        out[start : start + step] = resized if images.dtype == torch.uint8 else resized.clamp(0, 1)
    return out


def _match_splits(path: Path, keys: dict[str, tuple[str, str | None]], splits: _Splits) -> _Splits:
    """Train and test images of one size, one channel count and one dtype."""
    (train, train_labels), (test, test_labels) = splits["train"], splits["test"]
    if train.shape[-2:] != test.shape[-2:]:
        (h0, w0), (h, w) = train.shape[-2:], test.shape[-2:]
        raise DataError(
            f"{path}: {keys['train'][0]!r} holds {h0}x{w0} images but {keys['test'][0]!r} holds "
            f"{h}x{w} ones (height x width); resize them with image_size (--image-size)"
        )
    if train.shape[1] != test.shape[1]:  # grey and colour: both colour, as for files
        train, test = (x.expand(-1, 3, -1, -1).contiguous() for x in (train, test))
    if train.dtype != test.dtype:  # uint8 and float: both float
        train, test = (x.float() / 255 if x.dtype == torch.uint8 else x for x in (train, test))
    return {"train": (train, train_labels), "test": (test, test_labels)}
