"""Training with ``pyro.infer.SVI``: the loop.

:func:`fit` reads as the loop; what it stands on has its own module: the settings
(:mod:`pyro_vae.config`), the VAE and optimizer a config describes (:mod:`pyro_vae.build`), the
images of a run (:mod:`pyro_vae.splits`), the run folder with its files, checkpoints and
metrics (:mod:`pyro_vae.runfolder`), and several processes (:mod:`pyro_vae.distributed`).
The per-epoch score is on the validation images, held out from the training set; the test set
is scored only by :func:`pyro_vae.evaluate.evaluate` (``pyro-vae train``'s final evaluation and
``pyro-vae evaluate``). A run without a validation split (``valid_fraction=0``) scores each
epoch on the test set and says so: its rows have ``test_elbo``.

The loop's pieces have names: ``_open_run`` (a new run, or a resumed one from its
checkpoint), ``_train_epoch``, ``_checkpoint_state`` and ``_save``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.params.param_store import normalize_param_name
from tqdm.auto import tqdm

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

from pyro_vae import distributed
from pyro_vae.build import (
    build_vae,
    check_custom,
    check_step_memory,
    make_optimizer,
    parameter_count,
)
from pyro_vae.checkpoint import find_non_finite, write_json
from pyro_vae.checks import require_flag
from pyro_vae.config import TrainConfig, check_device
from pyro_vae.data import BatchLoader, ImageData, as_float, mean_image
from pyro_vae.discrete import temperature_at
from pyro_vae.distributed import World, rank_seed
from pyro_vae.errors import (
    CheckpointError,
    ConfigError,
    OutputError,
    PyroVAEError,
    raised_inside_pyro,
)
from pyro_vae.estimators import uses_baseline
from pyro_vae.evaluate import importance_sampled_log_likelihood, outputs_finite
from pyro_vae.isolation import (
    MAX_SEED,
    check_seed,
    get_rng_state,
    isolated,
    reseed,
    set_rng_state,
)
from pyro_vae.labels import accuracy, check_same_labels, label_fingerprint, run_labels, score_labels
from pyro_vae.m2 import aux_scale, label_elbo
from pyro_vae.model import VAE
from pyro_vae.objectives import kl_weight_at, make_elbo
from pyro_vae.optim import JointOptimizer, lr_factor
from pyro_vae.runfolder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    TrainResult,
    check_room,
    held_out_elbo,
    holds_no_run,
    load_model_state,
    load_run,
    locked_folder,
    put_back_on_failure,
    resume_state,
    save_files,
    write_metrics,
)
from pyro_vae.splits import RunImages, check_same_data, data_fingerprint, run_images

# the names of the loop's own (fit, TrainingDiverged), and those it re-exports from the modules
# that now own them, so that code written against pyro_vae.train keeps working
__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "MAX_SEED",
    "METRICS_FILE",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "RunImages",
    "build_vae",
    "check_device",
    "check_same_data",
    "data_fingerprint",
    "held_out_elbo",
    "check_seed",
    "fit",
    "load_run",
    "make_optimizer",
    "parameter_count",
    "run_images",
]


class TrainingDiverged(PyroVAEError):
    """The training objective became NaN or infinite."""


@dataclass
class _Run:
    """A training run between two epochs: what it trains, on what, and how far it is."""

    config: TrainConfig
    run_dir: Path | None
    data: ImageData
    train_images: torch.Tensor  # (N, ...) on the device, as stored
    score_images: torch.Tensor  # (V, ...) float, on the device: validation, else test
    test_images: torch.Tensor  # (M, ...) float, on the device
    vae: VAE
    optim: JointOptimizer
    loader: BatchLoader
    history: list[dict[str, float]]
    epochs_done: int = 0
    step: int = 0
    seconds: float = 0.0
    saved_epoch: int = 0  # the epoch of the checkpoint on disk (0: none yet)
    log: Any = None  # a TensorBoardLog, if one was asked for
    world: World = World()  # this process among those of a distributed run
    fingerprint: str = ""  # of the data set (data_fingerprint)
    score_labels: torch.Tensor | None = None  # M2's: of the score images, for the accuracy

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (rank 0 of a run that has one)."""
        return self.run_dir is not None and self.world.is_main

    def kept(self) -> str:
        """What survives a failure, for the error message."""
        if self.saved_epoch:
            return f"the checkpoint of epoch {self.saved_epoch} is kept"
        return "no checkpoint was written"


def fit(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    data: ImageData | None = None,
    resume: bool = False,
    progress: bool = False,
    vae: VAE | None = None,
    tensorboard: str | os.PathLike | None = None,
) -> TrainResult:
    """Train a VAE with ``pyro.infer.SVI`` and Adam.

    The run has its own param store and RNG streams, seeded with ``config.seed``
    (:func:`pyro_vae.isolation.isolated`): the caller's global RNGs and Pyro param store are
    left as they were found.

    :param config: the run's settings; validated first.
    :param run_dir: where to write the config, checkpoints and metrics (nothing is written if
        ``None``). The folder is locked for the whole call (:mod:`pyro_vae.runfolder`); a
        folder that already holds a checkpoint is refused unless ``resume``. A new run that
        fails before its first checkpoint removes the files it wrote.
    :param data: images to use instead of loading ``config.dataset`` (e.g. synthetic data).
    :param resume: continue the run in ``run_dir`` from its checkpoint, to ``config.epochs``
        epochs in all. With the same seed on the CPU this reproduces an uninterrupted run
        exactly.
    :param progress: a line an epoch on stderr, and on a terminal a progress bar with the
        running ELBO too (into a pipe or a log file, the lines alone).
    :param vae: a VAE with hand-written networks (``VAE(image_shape=..., encoder=...,
        decoder=...)``), trained in place, for a config with ``arch="custom"``; its latent size,
        likelihood and estimator must be the config's. The run folder is the same as for the
        built-in networks; :func:`load_run` reads it back given the same, untrained, pair.
    :param tensorboard: a folder for a TensorBoard log of the run (:mod:`pyro_vae.tensorboard`):
        the training ELBO of every step, the held-out ELBO and image grids of every epoch.
    :raises ConfigError: a setting out of range, of the wrong type, or settings that clash;
        a resumed run that already has ``config.epochs`` epochs.
    :raises DataError: data the likelihood cannot score.
    :raises CheckpointError: a damaged checkpoint, or a run folder that does not match.
    :raises RunFolderBusy: another process holds ``run_dir``.
    :raises OutputError: ``run_dir`` cannot be written; the last good checkpoint is kept.
    :raises TrainingDiverged: the objective became NaN; the last good checkpoint is kept.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"fit takes a TrainConfig, got {type(config).__name__}")
    config = config.resolved()  # what the run records: the objective the estimator chose
    config.validate()
    require_flag(progress, "progress")
    if resume and run_dir is None:
        raise ConfigError("resume needs a run folder")
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise ConfigError(f"run_dir must be a path, got {run_dir!r}")
    run_dir = Path(run_dir) if run_dir is not None else None
    if data is not None and not isinstance(data, ImageData):
        raise ConfigError(
            f"data must be an ImageData (load_dataset(...), or ImageData(...) of your tensors), "
            f"got {type(data).__name__}; a data set by name goes in the config: "
            "TrainConfig(dataset=...)"
        )
    if tensorboard is not None and not isinstance(tensorboard, (str, os.PathLike)):
        raise ConfigError(f"tensorboard must be a folder's path, got {tensorboard!r}")
    world = distributed.current()
    progress = progress and world.is_main
    config = distributed.local_config(world, config)
    with distributed.partner_failures(world), contextlib.ExitStack() as stack:
        if run_dir is not None:  # rank 0 holds and writes the folder
            distributed.enter_on_main(world, stack, lambda: locked_folder(run_dir, not resume))
        store = stack.enter_context(isolated(config.seed))
        writes = run_dir is not None and world.is_main
        stack.enter_context(put_back_on_failure(run_dir if writes else None, resume))
        run = _open_run(config, run_dir, data, resume, store, vae, world)
        step = _stepper(run)
        stack.callback(step.close)
        stack.enter_context(_tensorboard_log(run, tensorboard if world.is_main else None))
        for epoch in range(run.epochs_done, config.epochs):
            train_elbo = _train_epoch(run, step, epoch, progress)
            _check_finite_state(run, epoch)
            right = accuracy(run.vae.eval(), run.score_images, run.score_labels)  # M2's
            _record(run, train_elbo, _score(run, epoch), progress, right)
            if run_dir is not None:
                _save(run, store)
    return TrainResult(run.vae.eval(), run.history, config, run.data.image_shape,
                       run.test_images, run_dir, run.data.test_labels,
                       run.data.class_names, run.fingerprint)  # fmt: skip


def _record(run: _Run, train_elbo: float, score: float, progress: bool,
            accuracy: float | None = None) -> None:  # fmt: skip
    """Add the epoch's line to the history (and show it). The held-out score is the
    validation ELBO (``valid_elbo``), or the test ELBO for a run without a validation split;
    an M2 run's classifier adds its accuracy on the same images."""
    epoch = len(run.history) + 1
    which = "valid" if run.config.valid_fraction > 0 else "test"
    run.history.append({"epoch": epoch, "step": run.step, "train_elbo": train_elbo,
                        f"{which}_elbo": score, "seconds": run.seconds})  # fmt: skip
    if accuracy is not None:
        run.history[-1][f"{which}_accuracy"] = accuracy
    if run.world.size > 1:  # batch_size is per process: the global batch is this times it
        run.history[-1]["processes"] = run.world.size
    if run.config.kl_weight != 1.0 or run.config.kl_warmup:  # train_elbo is then beta's bound
        run.history[-1]["kl_weight"] = _kl_weight(run)
    if run.log is not None:
        run.log.epoch(run.step, held_out_elbo(run.history[-1])[0], score, run.vae)
    if progress:
        label = held_out_elbo(run.history[-1])[0]
        shown = "" if accuracy is None else f"  {label} accuracy {accuracy:.4f}"
        print(
            f"epoch {epoch}/{run.config.epochs}  train ELBO {train_elbo:.2f}  "
            f"{label} ELBO {score:.2f}{shown}  ({run.seconds:.0f} s)",
            file=sys.stderr,
        )


@contextlib.contextmanager
def _tensorboard_log(run: _Run, folder: str | os.PathLike | None) -> Iterator[None]:
    if folder is None:
        yield
        return
    from pyro_vae.tensorboard import TensorBoardLog  # torch.utils.tensorboard loads slowly

    run.log = TensorBoardLog(folder, run.data.image_shape, run.score_images)
    try:
        yield
    finally:
        run.log.close()
        run.log = None


def _open_run(
    config: TrainConfig,
    run_dir: Path | None,
    data,
    resume: bool,
    store,
    vae: VAE | None = None,
    world: World | None = None,
) -> _Run:
    """A new run, with its files written, or the run in ``run_dir`` restored from its
    checkpoint: networks, Adam's state, the RNG streams, the baseline's running averages.
    In a distributed run, rank 0 reads the checkpoint and hands it to the others."""

    def checkpoint_or_none() -> dict | None:
        if resume:
            return resume_state(config, run_dir)
        if run_dir is not None:
            holds_no_run(run_dir)
        return None

    world = world or World()
    checkpoint = distributed.from_main(world, checkpoint_or_none)
    check_custom(config, vae)
    images = distributed.main_first(world, lambda: run_images(config, data))  # may download
    if checkpoint is not None:
        try:
            check_same_data(checkpoint.get("data_fingerprint"), images.data, run_dir)
        except CheckpointError as e:
            e.shared = True  # every process has the same images
            raise
    train, valid, test = (t.to(config.device) for t in (images.train, images.valid, images.test))
    train_labels, classes = run_labels(config, images)  # M2's; None for the VAE
    check_same_labels(checkpoint, train_labels, run_dir)  # a resumed M2 run's
    vae = _ready_vae(config, vae, images.data, train, run_dir, world, classes)
    loader = _loader(config, vae, train, world, train_labels)
    score = valid if config.valid_fraction > 0 else test
    run = _Run(config, run_dir, images.data, train, score, test, vae, make_optimizer(config),
               loader, [], world=world, fingerprint=data_fingerprint(images.data),
               score_labels=score_labels(config, images))  # fmt: skip
    if checkpoint is None:
        if run.writes:
            write_json(run_dir / CONFIG_FILE, config.to_dict())
            write_metrics(run_dir, run.history)
        if world.rank > 0:  # the initial weights were drawn; now this process's own noise
            reseed(rank_seed(config.seed, world.rank))
    else:
        _restore(run, checkpoint, store)
    return run


def _ready_vae(config, vae: VAE | None, data, train, run_dir, world: World,
               classes: int | None = None) -> VAE:  # fmt: skip
    """The run's VAE (built from the config, or the user's, checked against the images) on
    its device, its output bias at the data's mean, and room on disk for its checkpoints."""
    if vae is None:
        vae = build_vae(config, data.image_shape, classes)  # checks the parameters' size
        if config.model == "m2":
            vae.aux_scale = aux_scale(config.aux_loss, len(train), config.labels)
        check_step_memory(config, data.image_shape)
    elif vae.event_shape != tuple(train.shape[1:]):
        raise ConfigError(
            f"the VAE models images of shape {vae.event_shape}, the data are "
            f"{tuple(train.shape[1:])}"
        )
    vae = vae.to(config.device)
    vae.init_output_bias(mean_image(train))
    if run_dir is not None:
        distributed.from_main(world, lambda: check_room(run_dir, vae))
    return vae


def _loader(config: TrainConfig, vae: VAE, train: torch.Tensor, world: World,
            labels: torch.Tensor | None = None) -> BatchLoader:  # fmt: skip
    """The training batches (every process's slices of each global batch), with M2's
    ``labels``; a hand-written VAE is run on them first, as training will run it: real
    batches, the last one too."""
    # Pyro's decaying-average baseline keeps one average per batch position: equal batches
    # only; a distributed run's processes take equal slices of every global batch
    drop_last = uses_baseline(config.estimator) or world.size > 1
    global_batch = config.batch_size * world.size
    loader = BatchLoader(train, global_batch, config.binarize, config.seed, True, drop_last,
                         labels)  # fmt: skip

    def enough_images() -> None:  # every process has the same images: rank 0 says so once
        if len(loader) == 0:
            each = f" ({world.size} processes of {config.batch_size})" if world.size > 1 else ""
            raise ConfigError(f"fewer training images than one batch of {global_batch}{each}")

    distributed.from_main(world, enough_images)
    if vae.arch == "custom":
        batches = [as_float(train[: config.batch_size])]
        last = len(train) % global_batch
        if not drop_last and last and world.size == 1 and len(train) > global_batch:
            batches.append(as_float(train[len(train) - last :]))
        vae.check_on_batches(batches)
    return loader


def _restore(run: _Run, checkpoint: dict, store) -> None:
    """Bring a new run to its checkpoint: the networks, Adam's state, this process's RNG
    streams and baselines' running averages, the history."""
    config, world = run.config, run.world
    where = run.run_dir / CHECKPOINT_FILE
    load_model_state(run.vae, checkpoint["model"], where)
    run.optim.set_state(checkpoint["optimizer"])
    # each process's streams and baselines: rank 0's are "rng" and "baseline_state"; a
    # distributed run's checkpoint also holds every rank's under "ranks"
    ranks = checkpoint.get("ranks") or [
        {"rng": checkpoint["rng"], "baseline_state": checkpoint.get("baseline_state", {})}
    ]
    mine = ranks[world.rank] if world.rank < len(ranks) else {}
    for name, value in mine.get("baseline_state", {}).items():  # running averages
        store[name] = value.to(config.device)
    if len(ranks) != world.size and world.rank > 0:  # resumed on another number of processes
        reseed(rank_seed(config.seed, world.rank, int(checkpoint["epoch"])))
    else:
        try:
            set_rng_state(mine["rng"])
        except (TypeError, ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(
                f"checkpoint {where} is damaged: its RNG state cannot be restored "
                f"({str(e).strip().splitlines()[0]})"
            ) from None
    run.history = list(checkpoint["history"])
    run.epochs_done = run.saved_epoch = int(checkpoint["epoch"])
    if run.history:
        run.step, run.seconds = int(run.history[-1]["step"]), float(run.history[-1]["seconds"])


def _stepper(run: _Run) -> Callable[[torch.Tensor], float]:
    """One optimization step on a batch, returning its summed loss
    (:func:`pyro_vae.distributed.training_step`)."""
    config = run.config
    t = config.temperature
    elbo = (label_elbo(config.estimator, t) if config.model == "m2" else
            make_elbo(config.objective, config.estimator, config.num_particles, config.jit,
                      config.mcem_transitions, checked=True, temperature=t))  # fmt: skip
    step = distributed.training_step(run.world, run.vae, elbo, run.optim, config.device)
    if not config.temperature_anneal:
        return step

    def annealed(x: torch.Tensor, *labels: torch.Tensor) -> float:  # the temperature at run.step
        elbo.temperature = temperature_at(config.temperature, config.temperature_anneal,
                                          config.temperature_min, run.step)  # fmt: skip
        return step(x, *labels)

    annealed.close = step.close  # the step's resources (a distributed run's) go with it
    return annealed


def _train_epoch(run: _Run, step: Callable, epoch: int, progress: bool) -> float:
    """One pass over the training images; the mean training ELBO in nats per image (of all
    processes' images, in a distributed run)."""
    config = run.config
    run.vae.train()
    if config.lr_schedule != "constant":
        run.optim.set_lr_factor(lr_factor(config.lr_schedule, epoch))
    started, total, count = time.perf_counter(), 0.0, 0
    bar = tqdm(run.loader.epoch(epoch), total=len(run.loader), desc=f"epoch {epoch + 1}/"
               f"{config.epochs}", disable=not (progress and sys.stderr.isatty()), file=sys.stderr,
               leave=False)  # fmt: skip
    with warnings.catch_warnings():
        # Pyro warns "Encountered NaN: loss" before the step returns it; the divergence is
        # reported in one line of our own
        warnings.filterwarnings("ignore", message="Encountered (NaN|[+-]inf)")
        for batch in bar:
            run.step += 1
            x, *labels = batch if isinstance(batch, tuple) else (batch,)  # M2's labels
            images = x.shape[0]  # the global batch; this process's slice of it:
            mine = slice(
                run.world.rank * config.batch_size, (run.world.rank + 1) * config.batch_size
            )
            x, labels = x[mine], [y[mine] for y in labels]
            elbo = _step(run, step, x, epoch, *labels)
            total, count = total + elbo, count + images
            if run.log is not None:
                weighted = run.config.kl_weight != 1.0 or run.config.kl_warmup
                run.log.step(run.step, elbo / x.shape[0], _kl_weight(run) if weighted else None)
            bar.set_postfix(elbo=f"{total / count:.2f}", refresh=False)
    run.seconds += time.perf_counter() - started
    return total / count


def _step(run: _Run, step: Callable, x: torch.Tensor, epoch: int, *labels) -> float:
    """One SVI step on batch ``x`` (and M2's ``labels``): the batch's summed ELBO (summed over
    the processes of a distributed run), or :class:`TrainingDiverged`."""
    cause = ""
    try:
        # the data were checked against the likelihood's support up front, so Pyro's
        # per-step validation only costs time (benchmarks/speed.py)
        with pyro.validation_enabled(False), run.vae.weighting_kl(_kl_weight(run)):
            loss = step(x, *labels)
    except PyroVAEError as e:
        # one of ours from inside the model or guide (a hand-written network that failed):
        # Pyro's trace re-raised it as a copy with its table of shapes appended; the original
        original = raised_inside_pyro(e)
        raise original from original.__cause__
    except (ValueError, RuntimeError) as e:
        # NaN parameters can fail inside Pyro or torch (a NaN scale cannot be sampled) before
        # the loss can say so. Any other error (a shape bug in a network) is not divergence.
        if outputs_finite(run.vae, x):
            raise
        loss, cause = math.nan, f" ({str(e).strip().splitlines()[0]})"
    if not math.isfinite(loss):
        error = TrainingDiverged(
            f"training diverged at epoch {epoch + 1}, step {run.step}: the objective became "
            f"{loss}{cause}; {run.kept()}; try a lower learning rate or a clip norm"
        )
        error.shared = not cause  # the loss was summed over the processes: all see it
        raise error
    return -loss


def _kl_weight(run: _Run) -> float:
    """Beta for step ``run.step``, on its warm-up ramp (which counts global batches)."""
    config = run.config
    return kl_weight_at(config.kl_weight, config.kl_warmup * len(run.loader), run.step)


def _check_finite_state(run: _Run, epoch: int) -> None:
    """Divergence that the objective did not show: parameters, or the optimizer's moments,
    that became infinite or NaN (gradients beyond float32's range square to infinity in Adam's
    second moment, whose step is then zero; a weight decay of 1e30 overflows the weights).
    Such a state cannot be trained on nor loaded: it is not checkpointed."""
    optimizer = {normalize_param_name(k) if isinstance(k, str) else str(k): v
                 for k, v in run.optim.get_state().items()}  # fmt: skip
    where = find_non_finite(run.vae.state_dict(), "the parameter") or find_non_finite(
        optimizer, "the optimizer's state of"
    )
    if where:
        error = TrainingDiverged(
            f"training diverged in epoch {epoch + 1}: {where} became NaN or infinite; "
            f"{run.kept()}; try a lower learning rate, weight decay, or a clip norm"
        )
        error.shared = True  # every process has the same parameters and state
        raise error


def _score(run: _Run, epoch: int) -> float:
    """The mean ELBO of the validation images (of the test images, without a validation
    split), one sample each, in eval mode."""
    run.vae.eval()
    world = run.world  # each process scores its slice of the images
    images = run.score_images[world.rank :: world.size]
    labels = run.score_labels[world.rank :: world.size] if run.vae.needs_labels else None
    try:
        _, elbo = importance_sampled_log_likelihood(
            run.vae.model,
            run.vae.guide,
            images,
            num_particles=1,
            batch_size=1000,
            conditions=labels,
        )
    except (ValueError, RuntimeError):
        # networks whose outputs overflowed on these images (finite weights of 1e30) fail in
        # the distributions' checks: the score is NaN, as a divergence; other errors are bugs
        if outputs_finite(run.vae, images):
            raise
        elbo = torch.full((len(images),), math.nan, device=images.device)
    total = distributed.sum_over(world, elbo.to(torch.float64).sum())
    score = total.item() / run.score_images.shape[0]
    if not math.isfinite(score):
        which = "validation" if run.config.valid_fraction > 0 else "test"
        error = TrainingDiverged(
            f"training diverged in epoch {epoch + 1}: the {which} ELBO became {score}; "
            f"{run.kept()}; try a lower learning rate or a clip norm"
        )
        error.shared = True  # summed over the processes
        raise error
    return score


def _checkpoint_state(run: _Run, store) -> dict:
    """Everything a resume needs to continue bit for bit (see :mod:`pyro_vae.checkpoint`).
    Called by every process of a distributed run: it gathers their streams and baselines."""
    # the objectives' running state in the param store: the baselines' decaying averages,
    # Monte Carlo EM's step size (parameters without gradients, names beginning "__")
    baseline = {k: v.detach().cpu() for k, v in store.items() if k.startswith("__")}
    ranks = distributed.every_process(run.world, {"rng": get_rng_state(),
                                                  "baseline_state": baseline})  # fmt: skip
    distributed.check_same_parameters(run.world, store, len(run.history), run.kept())
    state = {
        "config": run.config.to_dict(),
        "epoch": len(run.history),
        "model": run.vae.state_dict(),
        "optimizer": run.optim.get_state(),
        "rng": get_rng_state(),
        "history": run.history,
        "image_shape": list(run.data.image_shape),
        "data_fingerprint": run.fingerprint,
        "baseline_state": baseline,
        "networks": {name: f"{type(net).__module__}.{type(net).__qualname__}"
                     for name, net in (("encoder", run.vae.encoder), ("decoder", run.vae.decoder))},
    }  # fmt: skip
    if ranks is not None:
        state["ranks"] = ranks
    if run.loader.labels is not None:  # M2's, or a CVAE's on the label
        state["classes"] = run.vae.classes
        state["label_fingerprint"] = label_fingerprint(run.loader.labels)
    return state


def _save(run: _Run, store) -> None:
    """The checkpoint of the epoch just trained, then the config and metrics beside it."""
    epoch = len(run.history)
    state = _checkpoint_state(run, store)  # in every process: it gathers theirs
    if not run.writes:
        run.saved_epoch = epoch
        return
    try:
        save_files(run.run_dir, state)
    except OutputError as e:
        raise OutputError(f"{e}; training stopped after epoch {epoch}, {run.kept()}") from None
    run.saved_epoch = epoch
