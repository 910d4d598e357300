"""Training in several processes: ``torchrun`` starts them, ``torch.distributed`` connects them.

``torchrun --nproc_per_node=N -m pyro_vae train ...`` starts N copies of ``pyro-vae train``
(so does ``pyro-vae train --processes N``, through :func:`start_processes`).
Each reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins one process group (:func:`process_group`): gloo on the CPU, NCCL on
GPUs, where each process takes the GPU of its ``LOCAL_RANK`` (:func:`local_device`). From
Python, :func:`pyro_vae.train.fit` trains distributed whenever the default process group is
initialized, as any PyTorch DDP script does.

What each process does, and what is shared:

- **Batches.** ``batch_size`` is per process, as in PyTorch's DDP. Every process draws the
  same epoch order and the same dynamic binarization of each *global* batch of
  ``batch_size * N`` images (the seeded stream of :class:`pyro_vae.data.BatchLoader`) and
  takes its own slice: rank ``r`` the images ``r*B .. (r+1)*B - 1``. The N processes so see
  exactly the batches of one process with batch size ``N*B``. A last, incomplete global batch
  is dropped.
- **Noise.** Rank 0 continues the run's seeded stream (a run of one process is the same run
  as one without torchrun); rank ``r > 0`` draws its ``eps`` from a stream seeded by
  ``(seed, r)`` (:func:`rank_seed`). The initial weights are drawn once, from the run's seed,
  and are the same in every process.
- **Gradients.** Each process's loss is the summed negative ELBO of its slice. The gradients
  are *summed* over the processes before Adam's step, so the step is the one a single
  process takes on the global batch (with the same noise per image). Pyro's ``Trace_ELBO`` and
  ``TraceMeanField_ELBO`` (``elbo``, ``elbo-analytic-kl``, also JIT-compiled) give a
  differentiable loss: it runs under :class:`~torch.nn.parallel.DistributedDataParallel`,
  which averages the gradients while the backward pass runs (the loss is scaled by N, so the
  average is the sum). ``TraceGraph_ELBO`` (the REINFORCE baselines) and ``RenyiELBO``
  (``iwae``) only offer ``loss_and_grads``: their gradients are summed afterwards by one
  ``all_reduce`` of a flat buffer (:func:`sum_gradients`).
- **REINFORCE baselines.** The decaying-average baseline stays per process. Pyro keeps one
  average per batch position, and rank ``r``'s positions are images ``r*B ..`` of the global
  batch, so the per-process averages are exactly the averages one process keeps for the
  global batch, cut into slices. The nn baseline's weights are trained like the networks'.
- **The objective.** Each step's loss is summed over the processes (one scalar
  ``all_reduce``): every process reports the same training ELBO, and all stop together when it
  is NaN. Each epoch's validation score is the sum of the processes' slices.
- **Files.** Only rank 0 locks and writes the run folder, prints and draws. It gathers the
  other processes' RNG states and baselines into every checkpoint.
- **Resume.** With the same number of processes, a resumed run continues bit for bit. With a
  different number, the global batch changes; rank 0 continues its stream, the other ranks
  start new ones seeded by ``(seed, rank, epoch)``: the run continues correctly, but not as
  the uninterrupted run would have.
- **Failure.** A process that raises ends with a one-line error (once, from rank 0, for an
  error all processes raise alike); ``torchrun`` then stops the others. After every epoch
  the processes compare digests of their parameters (:func:`fingerprint`), equal bit for bit
  unless something is wrong, and stop before the epoch's checkpoint if they differ. Every
  collective has a timeout (``PYRO_VAE_DIST_TIMEOUT`` seconds, default 600), so a process
  whose partner vanished does not wait forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import logging
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
import torch.distributed as dist
from pyro.infer import Trace_ELBO
from pyro.infer.util import zero_grads
from torch import nn

from pyro_vae.config import check_device
from pyro_vae.errors import ConfigError, DistributedError, PyroVAEError

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedStep",
    "World",
    "current",
    "enter_on_main",
    "fingerprint",
    "from_main",
    "gather",
    "launched",
    "local_device",
    "main_first",
    "partner_failures",
    "process_group",
    "rank_seed",
    "start_processes",
    "sum_gradients",
    "sum_over",
]

DEFAULT_TIMEOUT = 600.0  # seconds a collective waits for the other processes
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run: ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0


def current() -> World:
    """The default process group's world, or a world of one process without one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (its environment names a rank)."""
    return all(name in os.environ for name in _ENV)


LAUNCHER = "PYRO_VAE_LAUNCHER"  # the pid of a start_processes launcher, for its processes


def reports_to_launcher() -> bool:
    """Whether this process's launcher is :func:`start_processes`, alive: it prints the run's
    one line from its processes' reports, and they print none of their own. (A launcher
    killed outright leaves its processes to say it: their parent is then another.)"""
    return launched() and os.environ.get(LAUNCHER) == str(os.getppid())


def several() -> bool:
    """Whether this process is one of several of a ``torchrun`` launch."""
    return launched() and int(os.environ.get("WORLD_SIZE", 1)) > 1


def rank_seed(seed: int, rank: int, epoch: int | None = None) -> int:
    """The seed of rank ``rank``'s noise stream: ``seed`` itself for rank 0, else a seed
    derived from ``(seed, rank)`` (and ``epoch``, for streams begun on a resume)."""
    if rank == 0 and epoch is None:
        return seed
    entropy = [seed, rank] if epoch is None else [seed, rank, epoch]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _timeout() -> timedelta:
    text = os.environ.get("PYRO_VAE_DIST_TIMEOUT", str(DEFAULT_TIMEOUT))
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    # under a second, the processes cannot even connect (c10d counts whole milliseconds: 1e-6
    # is 0 ms), and each says so in a screen of C++ frames
    if not math.isfinite(seconds) or seconds < 1:
        raise ConfigError(
            f"PYRO_VAE_DIST_TIMEOUT must be a number of seconds, at least 1, got {text!r}"
        )
    return timedelta(seconds=seconds)


def local_device(device: str) -> str:
    """The device of this process: under ``torchrun``, every process of a run on GPUs
    (``cuda`` or ``cuda:N``) takes the GPU of its ``LOCAL_RANK``; otherwise ``device``."""
    if device.startswith("cuda") and launched() and int(os.environ["WORLD_SIZE"]) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return device


def _end_with_launcher() -> None:
    """Have Linux send this process SIGTERM when its parent, torchrun's launcher, dies (killed
    with SIGKILL, say): torchrun leaves its processes running then, holding the run folder."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    launcher = os.getppid()  # (which may be 1: torchrun as a container's first process)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != launcher:  # the launcher died before this process could ask
        raise DistributedError("the launcher of this process (torchrun) is gone")


@contextlib.contextmanager
def process_group() -> Iterator[World]:
    """Join the process group of a ``torchrun`` launch of more than one process for the
    body, and yield this process's :class:`World`.

    The group has gloo for CPU tensors and, where CUDA is, NCCL for GPU tensors. Without
    torchrun, with one process, or inside a group the caller made, it joins nothing.

    :raises ConfigError: a bad ``PYRO_VAE_DIST_TIMEOUT``.
    :raises DistributedError: the processes cannot connect.
    """
    joined = dist.is_available() and dist.is_initialized()
    if launched() and not joined:
        _end_with_launcher()
    if not launched() or int(os.environ["WORLD_SIZE"]) <= 1 or joined:
        yield current()
        return
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed")
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local < torch.cuda.device_count():
            torch.cuda.set_device(local)
    timeout = _timeout()
    try:
        dist.init_process_group(backend, timeout=timeout)
    except (RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistributedError(
            f"cannot join the process group of {os.environ['WORLD_SIZE']} processes ({first})"
        ) from None
    try:
        yield current()
        # Leave together: no process tears down its side of the group while another still
        # uses it (a gloo process that did so was seen to abort at exit, now and then).
        with contextlib.suppress(Exception):
            dist.barrier()
    finally:
        gc.collect()  # DDP's reducer and its pending work, freed while the group is alive
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


@contextlib.contextmanager
def partner_failures(world: World) -> Iterator[None]:
    """In a run of several processes, turn the failure of a collective (a partner process
    died, or did not answer within the timeout) into one :class:`DistributedError`."""
    try:
        yield
    except RuntimeError as e:
        if world.size == 1:
            raise
        # gloo and NCCL report a lost partner as a DistError, or, inside DDP's backward
        # hooks, as a bare RuntimeError that names the backend
        words = ("gloo", "nccl", "connection closed by peer", "timed out")
        if not isinstance(e, dist.DistError) and not any(w in str(e).lower() for w in words):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = re.sub(r"^\[[^\]]*\]\s*", "", first)[:160]  # gloo's "[path/pair.cc:545] "
        error = DistributedError(
            f"another process of the run failed or did not answer ({first}); the run folder "
            "keeps its last checkpoint"
        )
        error.elsewhere = True
        raise error from None


def start_processes(count: int, argv: Sequence[str]) -> int:
    """Run ``pyro-vae ARGV`` in ``count`` processes on this machine, as ``torchrun --standalone
    --nproc-per-node=COUNT -m pyro_vae ARGV`` would (the same launcher, called from here), and
    return the exit status: 0 when every process succeeded.

    A failed run ends in one line on stderr, whatever the timing: the processes do not print
    theirs but report them (each its own, in the file torchrun reads, see ``pyro_vae.cli``),
    and the launcher prints the first cause among them (by rank), or, where none said one,
    that a signal ended a process (the kernel's out-of-memory killer, say), or the first
    consequence (a lost partner, the launcher's SIGTERM). A signal to the launcher itself
    (Ctrl-C, SIGTERM) stops the processes and prints ``interrupted`` or ``terminated``.
    torchrun's log and its traceback of the failed processes are not shown.
    Each process gets ``OMP_NUM_THREADS`` of this machine's cores divided by ``count``,
    unless the variable is set. The caller's environment, logging and signal handlers are
    left as they were.

    :raises ConfigError: a bad ``PYRO_VAE_DIST_TIMEOUT``.
    :raises DistributedError: no ``torch.distributed`` in this PyTorch build, or the launcher
        itself failed (its first line).
    """
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed")
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    _timeout()  # checked here, once, rather than by every process
    launch = torchrun.parse_args(
        ["--standalone", f"--nproc-per-node={count}", "--module", "pyro_vae", *argv]
    )
    environ = dict(os.environ)  # the launcher adds to it, for its processes
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // count)))
    # PyTorch's C++ log repeats, with its stack frames, a failure the process reports in its
    # own line (a partner that cannot be reached); TORCH_CPP_LOG_LEVEL=INFO shows it again
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    os.environ[LAUNCHER] = str(os.getpid())
    quiet = logging.root.manager.disable
    handlers = {}  # the launcher installs its own, and leaves them
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"):  # not all on every system
            sig = getattr(signal, name, None)
            if sig is not None and signal.getsignal(sig) is not None:
                handlers[sig] = signal.getsignal(sig)
    logging.disable(logging.CRITICAL)  # torchrun logs to stderr, in its own format
    try:
        torchrun.run(launch)
    except ChildFailedError as e:
        _, first = e.get_first_failure()
        line = _the_line(e.failures, count, argv[0])
        if line is not None:
            print(line, file=sys.stderr)
        return first.exitcode if first.exitcode > 0 else 128 - first.exitcode
    except SignalException as e:  # the launcher's own signal: it has stopped the processes
        what = "interrupted" if e.sigval == signal.SIGINT else "terminated"
        print(f"pyro-vae {argv[0]}: {what}", file=sys.stderr)
        return 128 + int(e.sigval)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistributedError(f"cannot start {count} processes ({first})") from None
    finally:
        logging.disable(quiet)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for name in set(os.environ) - set(environ):
            del os.environ[name]
        os.environ.update(environ)
    return 0


def _the_line(failures: Mapping[int, Any], count: int, command: str) -> str | None:
    """The one line of a failed run, from torchrun's record of its failed processes: the first
    cause a process reported; none where a process said why in a traceback of its own (a
    bug); else, for a process a signal ended without a word (it could not say why itself),
    that signal; else the first consequence reported (a lost partner, a SIGTERM)."""
    reports = [(rank, f, f.message) for rank, f in sorted(failures.items())]
    ours = [(rank, m) for rank, _, m in reports if isinstance(m, dict) and _line(m)]
    for _, message in ours:
        if _cause(message):
            return _line(message)
    if any(f.exitcode > 0 and _cause(m) for _, f, m in reports):
        return None
    for rank, failure, message in reports:
        if failure.exitcode < 0 and not (isinstance(message, dict) and _line(message)):
            return (
                f"pyro-vae {command}: error: process {rank} of {count} was ended by "
                f"{failure.signal_name()}; the run folder keeps its last checkpoint"
            )
    return _line(ours[0][1]) if ours else None


def _line(message: dict) -> str:
    """The line a process of ours reported (see ``pyro_vae.cli``), or ``""``."""
    line = message.get("extraInfo", {}).get("line", "")
    return line if isinstance(line, str) else ""


def _cause(message: Any) -> bool:
    """Whether a failed process's report to torchrun (its error file, see ``pyro_vae.cli``)
    names a cause, not a consequence; one without a report of ours (a traceback) is a cause."""
    if not isinstance(message, dict):
        return True
    return bool(message.get("extraInfo", {}).get("cause", True))


def from_main(world: World, make: Callable[[], T]) -> T:
    """``make()`` run by rank 0 only, its value (or its :class:`PyroVAEError`) handed to every
    process: one reads a file, all of them raise the same error if it is bad."""
    if world.size == 1:
        return make()
    payload: list[Any] = [None]
    if world.is_main:
        try:
            payload = [(True, make())]
        except PyroVAEError as e:
            payload = [(False, e)]
    dist.broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if not ok:
        value.shared = True
        raise value
    return value


def main_first(world: World, make: Callable[[], T]) -> T:
    """``make()`` in rank 0 first (it may download or unpack files), then in the others; if
    rank 0's raises a :class:`PyroVAEError`, every process raises it."""
    if world.size == 1:
        return make()
    value: list[Any] = []
    from_main(world, lambda: value.append(make()))
    return value[0] if world.is_main else make()


def enter_on_main(
    world: World,
    stack: contextlib.ExitStack,
    make: Callable[[], contextlib.AbstractContextManager],
) -> None:
    """Rank 0 enters the context ``make()`` on ``stack`` (it locks the run folder, say); if
    that raises a :class:`PyroVAEError`, every process raises it."""
    from_main(world, lambda: stack.enter_context(make()) and None)


def gather(world: World, value: T) -> list[T]:
    """Every process's ``value``, in rank order (to every process)."""
    if world.size == 1:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """A digest of named tensors' names, shapes, dtypes and exact values: two processes whose
    parameters should be equal compare digests instead of the tensors."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name} {tuple(value.shape)} {value.dtype};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sum_over(world: World, value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the processes (a copy; float64 for scalars)."""
    total = value.detach().clone()
    if world.size > 1:
        dist.all_reduce(total)
    return total


def sum_gradients(params: Sequence[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its sum over the processes: one ``all_reduce``
    of one flat buffer. Every process must pass the same parameters in the same order."""
    grads = [p.grad for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    start = 0
    for g in grads:
        g.copy_(flat[start : start + g.numel()].view_as(g))
        start += g.numel()


class _Loss(nn.Module):
    """The differentiable loss of a VAE as a module, for DDP to wrap."""

    def __init__(self, vae: nn.Module, elbo: Trace_ELBO) -> None:
        super().__init__()
        self.vae = vae
        self.elbo = elbo

    def forward(self, x: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        return self.elbo.differentiable_loss(self.vae.model, self.vae.guide, x, *labels)


class DistributedStep:
    """``SVI.step`` of one process of a distributed run: the loss of this process's slice,
    gradients summed over all processes, then the optimizer's step.

    Returns the loss summed over the processes (the same number in each).
    """

    def __init__(self, vae: nn.Module, elbo, optim, world: World, device: str) -> None:
        self.vae, self.elbo, self.optim, self.world = vae, elbo, optim, world
        self.ddp = None
        if isinstance(elbo, Trace_ELBO):  # TraceMeanField_ELBO and the JIT ones too
            ids = [torch.device(device).index] if device.startswith("cuda") else None
            self.ddp = nn.parallel.DistributedDataParallel(_Loss(vae, elbo), device_ids=ids)
        else:  # DDP broadcasts rank 0's weights when it wraps them; so do we
            for tensor in [*vae.parameters(), *vae.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def close(self) -> None:
        """Free DDP and its reducer now, while the process group is alive: freed later (by the
        interpreter's teardown, after the group's), their gloo threads abort the process."""
        self.ddp = None
        gc.collect()  # DDP's reference cycles

    def __call__(self, x: torch.Tensor, *labels: torch.Tensor) -> float:
        """One step on this process's images ``x`` (and an M2 model's ``labels``)."""
        with poutine.trace(param_only=True) as capture:
            if self.ddp is not None:
                loss = self.ddp(x, *labels)
                (loss * self.world.size).backward()  # DDP averages; the sum is wanted
                loss = loss.detach()
            else:
                vae = self.vae
                loss = self.elbo.loss_and_grads(vae.model, vae.guide, x, *labels)
                loss = torch.tensor(float(loss))
        named = sorted(capture.trace.nodes.items(), key=lambda item: item[0])
        params = [site["value"].unconstrained() for _, site in named]
        if self.ddp is None:
            sum_gradients([p for p in params if p.grad is not None])
        total = sum_over(self.world, loss.to(torch.float64).to(x.device)).item()
        self.optim(set(params))
        zero_grads(set(params))
        return total


# -- the layer fit calls: each is what a single process does when the world is one ----------


def local_config(world: World, config):
    """The config as this process runs it: under torchrun each process of a run on GPUs has
    the GPU of its ``LOCAL_RANK`` (:func:`local_device`); alone, the config as it is."""
    if world.size == 1:
        return config
    config = dataclasses.replace(config, device=local_device(config.device))
    check_device(config.device)
    return config


def training_step(world: World, vae: nn.Module, elbo, optim, device: str) -> Callable:
    """One optimization step on a batch, returning its summed loss: ``pyro.infer.SVI``'s step
    alone, else :class:`DistributedStep` (its loss summed over the processes). The step has a
    ``close`` to call while the process group is alive."""
    if world.size == 1:
        step = pyro.infer.SVI(vae.model, vae.guide, optim, elbo).step
        return _Closable(step)
    return DistributedStep(vae, elbo, optim, world, device)


class _Closable:
    """A step with nothing to free."""

    def __init__(self, step: Callable) -> None:
        self.step = step

    def __call__(self, *args, **kwargs):
        return self.step(*args, **kwargs)

    def close(self) -> None:
        pass


def check_same_parameters(world: World, store, epoch: int, kept: str) -> None:
    """Every process's trained parameters (the networks', an nn baseline's) are equal, bit for
    bit, after every epoch: their gradients were summed alike. A process whose parameters
    drifted (a parameter that no step sums, a bug) stops the run before its checkpoint; alone,
    there is nothing to compare."""
    if world.size == 1:
        return
    trained = {k: v for k, v in store.items() if not k.startswith("__")}
    digests = gather(world, fingerprint(trained))
    differ = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
    if differ:
        error = DistributedError(
            f"after epoch {epoch}, the parameters of process {differ[0]} differ from "
            f"those of process 0, which the summed gradients should prevent; training stopped, "
            f"{kept}"
        )
        error.shared = True  # every process found it
        raise error


def every_process(world: World, own: dict) -> list[dict] | None:
    """Every process's ``own`` state (its RNG streams and baselines), for a checkpoint; alone,
    ``None``: the checkpoint holds this process's own."""
    states = gather(world, own)
    return states if world.size > 1 else None
