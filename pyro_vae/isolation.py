"""Pyro's global state, owned in one place: a run's own param store and seeded RNGs.

Pyro keeps two things per process: the param store that ``pyro.module`` and ``pyro.param``
register into, and the global RNGs (torch's, CUDA's, NumPy's and Python's) that every
``pyro.sample`` draws from. A library call that trained or scored a model in them would leave
its parameters in the caller's store (where a later ``SVI`` would optimize stale tensors of
the same name) and move the caller's random streams. :func:`isolated` gives a call its own
of both and hands the caller's back on exit, whatever happens inside::

    with isolated(seed=0):          # an empty param store, RNGs seeded with 0
        ...train...
    with isolated(seed=0, params="inherit"):   # sees the caller's params, keeps none of its own
        ...score a model whose guide has pyro.param values...

The store and the RNGs are the process's, and so is Pyro's stack of effect handlers: two
threads inside :func:`isolated` at once would train and draw in each other's state (one run's
weights changed, the other stopped by a handler it did not push). One thread at a time holds
it, then: a second thread is refused at once with :class:`~pyro_vae.errors.ConcurrentUseError`
(``fit``, ``evaluate`` and every other pyro_vae call that trains or scores a model); a thread
may nest calls. Separate processes, not threads, run pyro_vae in parallel.

This is the only module of pyro_vae that seeds, saves or restores the global RNGs or swaps
the param store (``benchmarks/code_shape.py`` counts). Batches and binarization draw from
explicit ``torch.Generator`` streams instead (:class:`pyro_vae.data.BatchLoader`).
"""

from __future__ import annotations

import contextlib
import numbers
import random
import threading
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyro
import torch

from pyro_vae.errors import ConcurrentUseError, ConfigError

__all__ = [
    "MAX_SEED",
    "check_seed",
    "get_rng_state",
    "isolated",
    "reseed",
    "set_rng_state",
]

MAX_SEED = 2**32 - 1  # NumPy's seed range, which pyro.set_rng_seed also seeds

_holder = threading.RLock()  # the thread inside isolated(): re-entrant, so calls may nest


def check_seed(seed: Any, what: str = "seed") -> int:
    """``seed`` as an int, if it is a whole number in NumPy's range ``0 .. 2**32 - 1``."""
    whole = isinstance(seed, numbers.Integral) and not isinstance(seed, bool)
    if not whole or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{what} must be a whole number from 0 to 2**32 - 1, got {seed!r}")
    return int(seed)


def get_rng_state() -> dict:
    """Torch (CPU and CUDA), Python and NumPy RNG states, in a form ``torch.load`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`get_rng_state`'s output (as saved in a checkpoint)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def reseed(seed: int) -> None:
    """Seed the global streams again inside an :func:`isolated` body (a training process of
    rank ``r > 0`` moves to its own stream once the shared initial weights are drawn)."""
    pyro.set_rng_seed(check_seed(seed))


@contextlib.contextmanager
def isolated(
    seed: int | None = None,
    params: Literal["fresh", "inherit"] = "fresh",
    rng: Literal["restore", "continue"] = "restore",
) -> Iterator[pyro.params.param_store.ParamStoreDict]:
    """Run the body with a param store and global RNG streams of its own.

    :param seed: seed torch (and CUDA), NumPy and Python's ``random`` with it, as
        ``pyro.set_rng_seed`` does; ``None`` continues from the caller's streams (which are
        still put back on exit).
    :param params: ``"fresh"``: start from an empty param store (training: ``SVI`` optimizes
        what the store returns, so a stale parameter of the same name must not be there);
        ``"inherit"``: start from a copy of the caller's (scoring a guide whose ``pyro.param``
        values were trained beforehand). Either way, whatever the body registers is dropped.
    :param rng: ``"restore"``: put the caller's RNG states back on exit; ``"continue"``: leave
        them where the body's draws took them, as a bare ``pyro.sample`` would (for low-level
        samplers such as :func:`pyro_vae.evaluate.importance_sampled_log_likelihood`; no
        ``seed`` then).
    :yields: the param store the body sees.
    """
    if params not in ("fresh", "inherit"):
        raise ValueError(f"params must be 'fresh' or 'inherit', got {params!r}")
    if rng not in ("restore", "continue"):
        raise ValueError(f"rng must be 'restore' or 'continue', got {rng!r}")
    if seed is not None:
        if rng == "continue":
            raise ValueError("a seeded body restores the caller's RNGs: use rng='restore'")
        seed = check_seed(seed)
    if not _holder.acquire(blocking=False):
        raise ConcurrentUseError(
            "another thread of this process is running pyro_vae (a fit, an evaluation): "
            "Pyro's param store and effect handlers are one per process; run the calls one "
            "after another, or in separate processes"
        )
    try:
        callers_rng = get_rng_state() if rng == "restore" else None
        store = pyro.get_param_store()
        callers = store.get_state()
    except BaseException:
        _holder.release()
        raise
    try:
        store.clear()
        if params == "inherit":
            store.set_state({k: dict(v) for k, v in callers.items()})
        if seed is not None:
            pyro.set_rng_seed(seed)
        yield store
    finally:
        try:
            store.clear()
            store.set_state(callers)
            if callers_rng is not None:
                set_rng_state(callers_rng)
        finally:
            _holder.release()
