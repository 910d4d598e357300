"""Reading a data set's files: what a file must be before it is read, and the words of the
one-line errors for files that are missing, damaged or unreadable (:mod:`pyro_vae.data`,
:mod:`pyro_vae.idx`, and the user's own images in :mod:`pyro_vae.imagefiles` and
:mod:`pyro_vae.arrayfiles`), and opening only regular files."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

import torch

from pyro_vae.errors import DataError, DataNotFoundError

DATA_DIR_ENV = "PYRO_VAE_DATA_DIR"
OFFLINE_ENV = "PYRO_VAE_OFFLINE"  # set to 1 to never download (tests, air-gapped machines)


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


def _to_flat(images: torch.Tensor) -> torch.Tensor:
    # (N, H, W) uint8 -> (N, H * W) uint8: a quarter of float32's memory; batches are
    # converted as they are drawn (BatchLoader)
    return images.reshape(images.shape[0], -1).contiguous()


_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def _not_regular(path: Path, mode: int) -> str:
    """``a named pipe (FIFO), not a regular file``; ``a symbolic link to ...`` for a link."""
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "something")
    link = "a symbolic link to " if os.path.islink(path) else ""
    return f"{link}{kind}, not a regular file"


class _NotRegularFile(Exception):
    """What is at a path is not a regular file; the message says what it is."""


def _open_regular(path: Path) -> BinaryIO:
    """``path`` open for reading in binary, if it is a regular file or a link to one.

    Nothing else is opened: ``open`` of a named pipe waits for a writer, for ever if none
    comes, and opening a device can act on it. ``stat`` says what is there; the file is then
    opened with ``O_NONBLOCK`` (and ``O_NOCTTY``), so that one swapped in between the two calls
    is found by ``fstat`` without a wait. The flag is cleared before anything is read.

    :raises OSError: it cannot be opened.
    :raises _NotRegularFile: something else is there; the message says what.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _NotRegularFile(_not_regular(path, mode))
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    flags = os.O_RDONLY | nonblocking | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _NotRegularFile(_not_regular(path, mode))
        if nonblocking:
            os.set_blocking(fd, True)
        file = open(fd, "rb")  # noqa: SIM115 - the caller closes it
        file.raw.name = os.fspath(path)  # for messages, in place of the descriptor's number
        return file
    except BaseException:
        os.close(fd)
        raise


# A split is (images (N, C, H, W) uint8 or float32, labels (N,) int64 or None), keyed by
# "train" and "test", or by "all" when the input gives no test set.
_Splits = dict[str, tuple[torch.Tensor, torch.Tensor | None]]
# What a reader returns: the splits, the class names (or None), and where the images came from.
_Loaded = tuple[_Splits, tuple[str, ...] | None, str]
