"""Reading a data set's files: what a file must be before it is read, and the words of the
one-line errors for files that are missing, damaged or unreadable (:mod:`pyro_vae.data`,
:mod:`pyro_vae.idx`)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

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
