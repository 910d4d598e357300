"""Checkpoints and run files: written atomically, verified on load, never trusted when damaged.

A checkpoint is one ``torch.save`` file holding the model's ``state_dict``, the optimizer's
state, the run's config, the epoch, the metrics so far and the RNG states, plus a SHA-256
``checksum`` of all of that: every tensor's bytes, dtype and shape, and every other value.
``torch.load`` does not notice a flipped byte inside a tensor; :func:`load_checkpoint` does,
and it also refuses NaN or infinite parameters and a structure that is not a pyro_vae
checkpoint's.

Every file is written to a temporary file in the same folder, flushed to disk and renamed
over the old one, so a crash, a kill or a full disk never leaves a half-written file in place
of a good one. The file gets the mode the user's umask gives a new file (``mkstemp``'s 0600
would hide a shared run from colleagues). A kill during the write can leave the temporary
behind (``.checkpoint.pt.XXXXXXXX.tmp``); :func:`remove_stale_temporaries` clears them when a
process that holds the folder's lock opens it next.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from pyro_vae.errors import CheckpointError, OutputError

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "load_checkpoint",
    "remove_stale_temporaries",
    "save_checkpoint",
    "state_checksum",
    "write_json",
]

FORMAT = "pyro_vae.checkpoint/2"
OLD_FORMATS = ("pyro_vae.checkpoint/1",)  # no checksum: read only when asked to
REQUIRED_KEYS = ("format", "config", "epoch", "model", "optimizer", "rng", "history")
# mkstemp's names for the files pyro_vae writes: ".NAME." + 8 characters of [a-z0-9_] + ".tmp"
_TEMPORARY = re.compile(r"^\.(checkpoint\.pt|[\w-]+\.(json|jsonl|csv|png))\.[a-z0-9_]{8}\.tmp$")


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done, then deliver them.

    A KeyboardInterrupt raised inside ``torch.save``'s writer surfaces as a RuntimeError from
    its C++ code; deferring it keeps the write whole and the interruption an interruption.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    handlers = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handlers[signum] = signal.getsignal(signum)
        signal.signal(signum, lambda s, frame: caught.append(s))
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in caught[:1]:
            handler = handlers[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL and signum == signal.SIGINT:
                raise KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``.

    Readers see the old file or the new one, never half of one. A ``path`` that exists and is
    not a regular file (``/dev/stdout``, a FIFO) is written directly.

    :raises OutputError: the folder cannot be created or written, the disk is full, ...
    """
    path = Path(path)
    try:
        if path.exists() and not path.is_file() and not path.is_dir():
            with open(path, "wb") as f:  # a device or a pipe: no rename over it
                write(f)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {_reason(e)}") from None
    try:
        with signals_deferred():
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {_reason(e)}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half."""
    atomic_write(path, lambda f: f.write(data))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON, atomically. A NaN or infinite number (which JSON cannot hold,
    e.g. the R-hat of a single chain) is written as ``null``: not available."""
    text = json.dumps(_json_safe(obj), indent=2, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that killed writers left in ``folder``; returns what was removed.

    Only safe for a caller that holds the folder's lock: nobody else is writing there.
    """
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            if _TEMPORARY.match(entry.name) and entry.is_file():
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def _feed(h, obj: Any) -> None:
    # A canonical walk of the state: type tags, lengths and values, so that neither a changed
    # value nor a changed structure can give the same digest.
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for value in obj:
            _feed(h, value)
    else:
        text = repr(obj)
        h.update(f"{type(obj).__name__}{len(text)};{text}".encode())


def state_checksum(state: dict) -> str:
    """``sha256:HEX`` over everything in ``state`` but its ``checksum`` entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "checksum"})
    return f"sha256:{h.hexdigest()}"


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (see :data:`REQUIRED_KEYS`) with its checksum, atomically, to ``path``.

    :raises OutputError: the file cannot be written; the old checkpoint, if any, is kept.
    """
    state = {"format": FORMAT, **{k: v for k, v in state.items() if k != "format"}}
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    state["checksum"] = state_checksum(state)
    atomic_write(Path(path), lambda f: torch.save(state, f))


def find_non_finite(tensors: dict, what: str) -> str | None:
    """``what`` and the name of the first floating-point tensor in ``tensors`` (nested dicts
    searched too) that holds NaN or infinity, or ``None``."""
    for name, value in tensors.items():
        if isinstance(value, dict):
            found = find_non_finite(value, f"{what} {name}")
            if found:
                return found
        elif (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and not torch.isfinite(value).all()
        ):
            return f"{what} {name}"
    return None


def _rng_state_ok(rng: Any) -> bool:
    return (
        isinstance(rng, dict)
        and isinstance(rng.get("torch"), torch.Tensor)
        and rng["torch"].dtype == torch.uint8
        and isinstance(rng.get("python"), (list, tuple))
        and isinstance(rng.get("numpy"), (list, tuple))
        and len(rng["numpy"]) == 5
        and isinstance(rng["numpy"][1], torch.Tensor)
    )


def _baselines_ok(baselines: Any) -> bool:
    return isinstance(baselines, dict) and all(
        isinstance(v, torch.Tensor) for v in baselines.values()
    )


def _history_problem(history) -> str | None:
    """What is wrong with a checkpoint's metrics history, or ``None``."""
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        return "its metrics history is not a list of rows"
    for row in history:
        score = "valid_elbo" if "valid_elbo" in row else "test_elbo"  # without a validation split
        for key in ("epoch", "step", "train_elbo", score, "seconds"):
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"its metrics history has {key} = {value!r}"
    return None


def _check_structure(path: Path, state: dict) -> None:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is damaged: {what}")

    if not isinstance(state["config"], dict):
        raise bad(f"its config is {type(state['config']).__name__}, not a table of settings")
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise bad(f"its epoch is {epoch!r}")
    model = state["model"]
    if not isinstance(model, dict) or not model:
        raise bad("it holds no model parameters")
    if not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise bad("its model state holds something other than tensors")
    if not isinstance(state["optimizer"], dict):
        raise bad("its optimizer state is not a table")
    history = state["history"]
    problem = _history_problem(history)
    if problem:
        raise bad(problem)
    if len(history) != epoch:
        raise bad(f"it says epoch {epoch} but its metrics history has {len(history)} rows")
    if not _rng_state_ok(state["rng"]):
        raise bad("its RNG state is not one pyro_vae wrote")
    if not _baselines_ok(state.get("baseline_state", {})):
        raise bad("its baseline state is not a table of tensors")
    ranks = state.get("ranks", [])  # a distributed run's: every process's streams and baselines
    if not isinstance(ranks, list) or not all(
        isinstance(r, dict) and _rng_state_ok(r.get("rng"))
        and _baselines_ok(r.get("baseline_state", {})) for r in ranks
    ):  # fmt: skip
        raise bad("its processes' RNG states and baselines are not ones pyro_vae wrote")
    shape = state.get("image_shape", [28, 28])
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) not in (2, 3)
        or not all(isinstance(s, int) and s > 0 for s in shape)
    ):
        raise bad(f"its image shape is {shape!r}")
    where = find_non_finite(model, "model parameter") or find_non_finite(
        state["optimizer"], "optimizer state of"
    )
    if where:
        raise CheckpointError(f"checkpoint {path} holds NaN or infinite values in {where}")
    elbos = [v for row in history for k, v in row.items() if k.endswith("_elbo")]
    if any(not math.isfinite(v) for v in elbos):
        raise CheckpointError(f"checkpoint {path} holds NaN or infinite ELBOs in its history")


def load_checkpoint(path: str | os.PathLike, allow_unverified: bool = False) -> dict:
    """Read a checkpoint onto the CPU, verified.

    :param allow_unverified: also read checkpoints of the first format, which carry no
        checksum (their structure and values are still checked, their bytes cannot be).
    :raises CheckpointError: the file is missing, unreadable, truncated, fails its checksum,
        holds NaN or infinite parameters, is of the first format (unless allowed), or is not a
        pyro_vae checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (PermissionError, IsADirectoryError, FileNotFoundError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(e)}") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types on a damaged file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({reason})") from None
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, *OLD_FORMATS):
        raise CheckpointError(f"{path} is not a pyro_vae checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: it lacks {', '.join(missing)}")
    if state["format"] != FORMAT and not allow_unverified:
        raise CheckpointError(
            f"checkpoint {path} has no checksum (an earlier pyro_vae wrote it), so damage to it "
            "cannot be detected; retrain, or read it anyway with pyro_vae.checkpoint."
            "load_checkpoint(path, allow_unverified=True)"
        )
    if state["format"] == FORMAT:
        try:
            checksum = state_checksum(state)
        except Exception as e:  # noqa: BLE001 - values of unexpected types
            raise CheckpointError(f"checkpoint {path} is damaged ({e})") from None
        if state.get("checksum") != checksum:
            raise CheckpointError(
                f"checkpoint {path} is damaged: its contents do not match their checksum"
            )
    _check_structure(path, state)
    return state
