"""Run folders are owned by one process at a time.

A process that writes into a run folder (training, evaluating, plotting, the posterior check,
an estimator study) first takes an exclusive ``fcntl.flock`` on the folder's lock file,
``.pyro_vae.lock``, and holds it until it is done (then removes the file); a second process
is refused at once with :class:`~pyro_vae.errors.RunFolderBusy` rather than waiting or
interleaving its files with the first one's. The operating system drops the lock when the
holder exits, however it exits (``kill -9`` included), so a crashed run never leaves its
folder locked; the file it leaves behind is taken over by the next holder.

Holding the lock, the process also removes the temporaries that killed writers left behind
(see :func:`pyro_vae.checkpoint.remove_stale_temporaries`). Locks are re-entrant within one
process: :func:`pyro_vae.fit` inside a CLI command that already holds the folder just counts.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from pyro_vae.checkpoint import remove_stale_temporaries
from pyro_vae.errors import CheckpointError, OutputError, RunFolderBusy

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, and no locking
    fcntl = None

__all__ = ["LOCK_FILE", "holds", "locked_folder"]

LOCK_FILE = ".pyro_vae.lock"

_held: dict[Path, list] = {}  # resolved folder -> [fd, depth]


def _holder(lock_path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(lock_path.read_text().split()[0])
        return f" (pid {pid})"
    return ""


def _acquire(folder: Path) -> int:
    lock_path = folder / LOCK_FILE
    while True:
        try:
            # O_NOFOLLOW: a symbolic link planted as the lock file would have us write our
            # pid into whatever it points at
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OutputError(f"{lock_path} is a symbolic link; remove it") from None
            raise OutputError(f"cannot write into {folder}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"cannot lock {folder}: {e.strerror or e}") from None
            raise RunFolderBusy(
                f"{folder} is in use by another pyro-vae process{_holder(lock_path)}; "
                "wait for it to finish or choose another folder"
            ) from None
        # The previous holder may have removed the lock file between our open and our lock:
        # then we hold a lock on a file nobody else can see, and must try again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def holds(folder: str | os.PathLike) -> bool:
    """Whether this process holds ``folder`` (inside :func:`locked_folder`)."""
    return fcntl is not None and Path(folder).resolve() in _held


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike, create: bool = False) -> Iterator[Path]:
    """Hold ``folder`` for this process while the block runs.

    :param create: make the folder (and its parents) if it does not exist. A folder made here
        that is empty when the block ends (a run that failed before writing anything) is
        removed again, so a failure leaves no debris.
    :raises RunFolderBusy: another process holds the folder.
    :raises OutputError: the folder cannot be created or written.
    :raises CheckpointError: the folder does not exist and ``create`` is false.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise OutputError(f"a folder must be a path, got {folder!r}")
    folder = Path(folder)
    created: list[Path] = []  # the folders made here, deepest first
    if not folder.is_dir():
        if not create:
            raise CheckpointError(f"no run folder at {folder}")
        if folder.exists():
            raise OutputError(f"cannot use {folder} as a folder: a file of that name exists")
        missing = [folder, *(p for p in folder.parents if not p.exists())]
        try:
            folder.mkdir(parents=True)
            created = [p for p in missing if p == folder or p in folder.parents]
        except FileExistsError:  # another process made it meanwhile: share it, not own it
            pass
        except OSError as e:
            raise OutputError(f"cannot create {folder}: {e.strerror or e}") from None
    key = folder.resolve()
    if fcntl is None:
        yield folder
        return
    if key in _held:
        _held[key][1] += 1
        try:
            yield folder
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(folder)
    _held[key] = [fd, 1]
    try:
        remove_stale_temporaries(folder)
        yield folder
    finally:
        del _held[key]
        # The lock file goes with the lock: no debris in an output folder. A process that
        # opened it just before is sent round again by _acquire's check.
        with contextlib.suppress(OSError):
            (folder / LOCK_FILE).unlink()
        # folders made here and left empty (a run that failed) go too, down to what was there
        for made in created:
            if made.is_dir() and not any(made.iterdir()):
                with contextlib.suppress(OSError):
                    made.rmdir()
        os.close(fd)  # releases the lock
