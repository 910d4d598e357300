"""A run folder and everything in it, owned here: the lock, its files, what a failed run puts
back, the checkpoint's save and load, the metrics.

A run folder holds ``config.json`` (what was asked), ``checkpoint.pt`` (written atomically at
the end of every epoch, with the whole history) and ``metrics.jsonl`` (one line an epoch:
``epoch``, ``step``, ``train_elbo``, ``valid_elbo`` in nats per image, and cumulative training
``seconds``), written in that order under one deferral of Ctrl-C and SIGTERM
(:func:`save_files`); :func:`load_run` reads a run back.

Run folders are owned by one process at a time.

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
import dataclasses
import errno
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.build import build_vae, check_custom
from pyro_vae.checkpoint import (
    atomic_write_bytes,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    signals_deferred,
    write_json,
)
from pyro_vae.config import TrainConfig, check_device
from pyro_vae.errors import (
    CheckpointError,
    ConfigError,
    OutputError,
    PyroVAEError,
    RunFolderBusy,
)
from pyro_vae.isolation import isolated
from pyro_vae.model import VAE

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, and no locking
    fcntl = None
try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "TrainResult",
    "check_room",
    "held_out_elbo",
    "holds",
    "holds_no_run",
    "load_model_state",
    "load_run",
    "locked_folder",
    "put_back_on_failure",
    "resume_state",
    "save_files",
    "write_metrics",
]

LOCK_FILE = ".pyro_vae.lock"
CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE = "config.json", "checkpoint.pt", "metrics.jsonl"

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


@dataclass
class TrainResult:
    """A trained VAE with its config and metrics (one dict an epoch)."""

    vae: VAE
    history: list[dict[str, float]]
    config: TrainConfig
    image_shape: tuple[int, ...]  # (H, W) grey or (C, H, W)
    test_images: torch.Tensor | None = (
        None  # (N, *vae.event_shape) as evaluated; None from load_run
    )
    run_dir: Path | None = None
    test_labels: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None  # label i is class_names[i]
    data_fingerprint: str | None = None  # of the images it was trained on (data_fingerprint)


def _metrics_text(history: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in history)


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    atomic_write_bytes(run_dir / METRICS_FILE, _metrics_text(history).encode())


def _catch_up_records(run_dir: Path, state: dict) -> None:
    """Bring ``metrics.jsonl`` and ``config.json`` up to the checkpoint they belong beside.

    The three are written in that order under one deferral of Ctrl-C and SIGTERM; only a
    ``kill -9`` (or a power cut) between them leaves the checkpoint of epoch n beside the
    metrics of epoch n - 1. The checkpoint holds the whole history, so a process holding the
    folder (no run is writing it) rewrites the two from it. Metrics that are not a beginning of
    the checkpoint's history are someone else's file and stay as they are: nothing is lost.
    """
    expected = _metrics_text(state["history"])
    try:
        found = (run_dir / METRICS_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        found = None
    if found == expected or not expected.startswith(found or ""):
        return
    with contextlib.suppress(OutputError), signals_deferred():
        write_json(run_dir / CONFIG_FILE, state["config"])
        write_metrics(run_dir, state["history"])


def check_room(run_dir: Path, vae: VAE) -> None:
    """Refuse to start a run whose checkpoint could not be written: the disk's free space and
    the process's file-size limit (``ulimit -f``) against the checkpoint's size."""
    tensors = sum(p.numel() * p.element_size() for p in vae.parameters())
    needed = 3 * tensors + 2**20  # parameters and Adam's two moments, plus the rest
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        free = None
    if free is not None and free < 2 * needed:  # the old checkpoint stays until the rename
        raise OutputError(
            f"{run_dir} has {free / 2**20:.1f} MiB free; a checkpoint of this model needs "
            f"about {needed / 2**20:.1f} MiB (and the same again while it is replaced)"
        )
    if resource is not None:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and limit < needed:
            raise OutputError(
                f"the file-size limit (ulimit -f) is {limit / 2**20:.2f} MiB; a checkpoint of "
                f"this model needs about {needed / 2**20:.1f} MiB"
            )


def load_model_state(vae: VAE, state: dict, where: Path | str) -> None:
    """``vae.load_state_dict(state)``, with a one-line :class:`CheckpointError` on mismatch."""
    expected = vae.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            problems.append(f"{label}: {', '.join(names[:3])}{more}")
    if problems:
        raise CheckpointError(
            f"the model in {where} does not fit its config ({'; '.join(problems)})"
        )
    vae.load_state_dict(state)


def resume_state(config: TrainConfig, run_dir: Path) -> dict:
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    saved = TrainConfig.from_dict(checkpoint["config"])
    diffs = saved.differences(config)
    if diffs:
        raise CheckpointError(
            f"{run_dir} was trained with a different config ({'; '.join(diffs)}); "
            "resume with the same settings or start a new run folder"
        )
    done = int(checkpoint["epoch"])
    if config.epochs <= done:
        raise ConfigError(
            f"the run in {run_dir} has trained {done} epochs already, so epochs = "
            f"{config.epochs} leaves nothing to train; ask for more than {done} to continue "
            "(evaluate, plot and sample work on the run as it is)"
        )
    return checkpoint


def held_out_elbo(row: dict) -> tuple[str, float]:
    """``("validation", valid_elbo)`` of a metrics row, or ``("test", test_elbo)`` for a run
    without a validation split (``valid_fraction = 0``, and runs of earlier versions)."""
    if "valid_elbo" in row:
        return "validation", row["valid_elbo"]
    return "test", row["test_elbo"]


@contextlib.contextmanager
def put_back_on_failure(run_dir: Path | None, resume: bool) -> Iterator[None]:
    """A new run that fails before its first checkpoint leaves the folder as it found it.

    What it finds there (a killed run's ``config.json``, a file of the user's) is put back;
    what it wrote is removed. A resumed run needs nothing of the kind: it rewrites
    ``config.json`` and ``metrics.jsonl`` only beside a new checkpoint.
    """
    if run_dir is None or resume:
        yield
        return
    found = {}
    for name in (CONFIG_FILE, METRICS_FILE):
        with contextlib.suppress(OSError):
            found[name] = (run_dir / name).read_bytes()
    try:
        yield
    except BaseException:
        if not (run_dir / CHECKPOINT_FILE).exists():
            for name in (CONFIG_FILE, METRICS_FILE):
                with contextlib.suppress(OSError, PyroVAEError):
                    if name in found:
                        atomic_write_bytes(run_dir / name, found[name])
                    else:
                        (run_dir / name).unlink()
        raise


def load_run(run_dir: str | Path, device: str = "cpu", vae: VAE | None = None) -> TrainResult:
    """The trained VAE, config and metrics history stored in a run folder.

    :param vae: for a run of hand-written networks (``arch="custom"``): a VAE built as for
        training; the stored parameters are loaded into it.
    :raises CheckpointError: no run folder, a checkpoint that is damaged or does not fit, or
        a run of hand-written networks without ``vae``.
    :raises ConfigError: an unknown or unavailable ``device``.
    """
    check_device(device)
    if not isinstance(run_dir, (str, os.PathLike)):
        raise CheckpointError(f"a run folder is a path, got {run_dir!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no run folder at {run_dir}")
    with isolated():  # building the networks draws their initial weights
        return _load_run(run_dir, device, vae)


def _load_run(run_dir: Path, device: str, vae: VAE | None) -> TrainResult:
    path = run_dir / CHECKPOINT_FILE
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    if holds(run_dir):  # no run is writing it: the records can catch up with the checkpoint
        _catch_up_records(run_dir, state)
    image_shape = tuple(state.get("image_shape", (28, 28)))
    if config.arch == "custom":
        if vae is None:
            networks = state.get("networks", {})
            names = " and ".join(networks.values()) or "unknown classes"
            raise CheckpointError(
                f"the run in {run_dir} has hand-written networks ({names}); load it from Python "
                "with load_run(RUN, vae=VAE(image_shape=..., encoder=..., decoder=...))"
            )
        try:
            check_custom(config, vae)
        except ConfigError as e:
            raise CheckpointError(f"{e} (the run in {run_dir})") from None
    elif vae is not None:
        raise ConfigError(f"the run in {run_dir} has built-in networks; load it without vae")
    else:
        classes = state.get("classes")  # an M2 model's
        vae = build_vae(dataclasses.replace(config, device="cpu"), image_shape,
                        classes if isinstance(classes, int) else None)  # fmt: skip
    load_model_state(vae, state["model"], path)
    if math.prod(vae.event_shape) != math.prod(image_shape):
        raise CheckpointError(
            f"the model in {path} has {math.prod(vae.event_shape)} pixels per image, its image "
            f"shape {image_shape} has {math.prod(image_shape)}"
        )
    history = list(state["history"])
    fingerprint = state.get("data_fingerprint")
    fingerprint = fingerprint if isinstance(fingerprint, str) else None
    return TrainResult(vae.to(device).eval(), history, config, image_shape, run_dir=run_dir,
                       data_fingerprint=fingerprint)  # fmt: skip


def holds_no_run(run_dir: Path) -> None:
    """Refuse a folder that already holds a run's checkpoint (a new run would replace it)."""
    if (run_dir / CHECKPOINT_FILE).exists():
        raise CheckpointError(
            f"{run_dir} already holds a run; resume it or choose another run folder"
        )


def save_files(run_dir: Path, state: dict) -> None:
    """The checkpoint ``state``, then the config and metrics beside it, as one state: Ctrl-C
    or SIGTERM waits for all three files (the checkpoint of epoch 2 beside the metrics of
    epoch 1 was a folder that evaluate and plot misread)."""
    with signals_deferred():
        save_checkpoint(run_dir / CHECKPOINT_FILE, state)
        write_json(run_dir / CONFIG_FILE, state["config"])
        write_metrics(run_dir, state["history"])
