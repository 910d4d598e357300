"""Training with ``pyro.infer.SVI``: the config, the loop, run folders and resuming.

A run folder holds ``config.json`` (what was asked), ``checkpoint.pt`` (written atomically at
the end of every epoch) and ``metrics.jsonl`` (one line an epoch: ``epoch``, ``step``,
``train_elbo``, ``test_elbo`` in nats per image, and cumulative training ``seconds``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.infer import SVI
from tqdm.auto import tqdm

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

from pyro_vae.checkpoint import (
    atomic_write_bytes,
    get_rng_state,
    load_checkpoint,
    preserved_rng,
    save_checkpoint,
    set_rng_state,
    write_json,
)
from pyro_vae.data import (
    BINARIZATIONS,
    DATASETS,
    BatchLoader,
    ImageData,
    default_binarize,
    load_dataset,
    prepare_images,
)
from pyro_vae.errors import CheckpointError, ConfigError, OutputError, PyroVAEError
from pyro_vae.estimators import check_estimator, uses_baseline
from pyro_vae.model import VAE
from pyro_vae.networks import ACTIVATIONS, LIKELIHOODS
from pyro_vae.objectives import (
    check_objective,
    log_importance_weights,
    make_elbo,
    scratch_param_store,
)
from pyro_vae.optim import LR_SCHEDULES, JointAdam, lr_factor
from pyro_vae.runfolder import locked_folder

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "check_device",
    "check_seed",
    "elbo_per_image",
    "fit",
    "load_run",
]

CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE = "config.json", "checkpoint.pt", "metrics.jsonl"
# Settings that may change when a run is resumed; every other field must match.
RESUMABLE_FIELDS = ("epochs", "device", "data_dir", "progress")
MAX_SEED = 2**32 - 1  # NumPy's seed range, which pyro.set_rng_seed also seeds
_DEVICE = re.compile(r"^(cpu|cuda)(:[0-9]+)?$")


class TrainingDiverged(PyroVAEError):
    """The training objective became NaN or infinite."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_seed(seed: Any, what: str = "seed") -> int:
    """``seed`` as an int, if it is a whole number in NumPy's range ``0 .. 2**32 - 1``."""
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{what} must be a whole number from 0 to 2**32 - 1, got {seed!r}")
    return int(seed)


def check_device(device: Any) -> None:
    """Raise :class:`ConfigError` unless ``device`` is ``cpu``, ``cuda`` or ``cuda:N`` here."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but CUDA is not available here")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} asked for, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )


@dataclass
class TrainConfig:
    """Everything a run needs, saved with it. Defaults: the 784-400-20 MNIST VAE."""

    dataset: str = "mnist"  # mnist, fashion-mnist, frey-faces or mnist-sample (bundled)
    data_dir: str | None = None  # else $PYRO_VAE_DATA_DIR, else ~/.cache/pyro_vae/data
    binarize: str | None = None  # None: dynamic for bernoulli (Burda et al. 2015), else none
    train_size: int | None = None  # use only the first N training images (quick runs, tests)
    latent_dim: int = 20
    hidden_sizes: tuple[int, ...] = (400,)
    activation: str = "relu"
    likelihood: str = "bernoulli"
    objective: str = "elbo-analytic-kl"  # same bound as "elbo", closed-form KL: less variance
    estimator: str = "reparam"  # reparam, reinforce, reinforce-baseline, ...-nn-baseline, stl
    baseline_beta: float = 0.9  # decay of the reinforce-baseline running average
    baseline_learning_rate: float = 1e-2  # Adam learning rate of the nn baseline
    num_particles: int = 1  # K: samples per image for the training objective
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # or "iwae": Burda et al.'s 3^i epochs at 10^(-i/7) times it
    adam_eps: float = 1e-8  # Adam's epsilon; Burda et al. (2015) use 1e-4
    clip_norm: float | None = None  # clip each parameter's gradient norm (Pyro's clip_args)
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    jit: bool = False  # Pyro's JIT-compiled ELBOs
    progress: bool = field(default=False, compare=False)  # a tqdm bar with the running ELBO
    data_fallback: str | None = None  # set when MNIST was missing and mnist-sample was used

    def __post_init__(self) -> None:
        # Conversions that lose nothing; anything else is left for validate() to name.
        if isinstance(self.hidden_sizes, (list, tuple)):
            self.hidden_sizes = tuple(int(h) if _is_int(h) else h for h in self.hidden_sizes)
        if isinstance(self.data_dir, os.PathLike):
            self.data_dir = os.fspath(self.data_dir)
        if self.binarize is None and isinstance(self.likelihood, str):
            self.binarize = default_binarize(self.likelihood)

    def _check_types(self) -> None:
        def wrong(name: str, kind: str) -> ConfigError:
            value = getattr(self, name)
            return ConfigError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")

        for name in ("latent_dim", "epochs", "batch_size", "num_particles"):
            if not _is_int(getattr(self, name)):
                raise wrong(name, "a whole number")
        if self.train_size is not None and not _is_int(self.train_size):
            raise wrong("train_size", "a whole number or None")
        for name in ("baseline_beta", "baseline_learning_rate", "learning_rate", "adam_eps"):
            if not _is_real(getattr(self, name)):
                raise wrong(name, "a number")
        if self.clip_norm is not None and not _is_real(self.clip_norm):
            raise wrong("clip_norm", "a number or None")
        for name in ("jit", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise wrong(name, "True or False")
        for name in ("data_dir", "data_fallback"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise wrong(name, "a string or None")
        if not isinstance(self.hidden_sizes, tuple) or not all(
            _is_int(h) for h in self.hidden_sizes
        ):
            raise wrong("hidden_sizes", "a list of whole numbers")

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values of the wrong type, out of range, or settings
        that clash."""
        self._check_types()
        choices = {
            "dataset": DATASETS,
            "binarize": BINARIZATIONS,
            "activation": tuple(ACTIVATIONS),
            "likelihood": LIKELIHOODS,
            "lr_schedule": LR_SCHEDULES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}"
                )
        if not isinstance(self.estimator, str) or not isinstance(self.objective, str):
            raise ConfigError("estimator and objective must be names (strings)")
        check_estimator(self.estimator)
        check_objective(self.objective, self.estimator, self.num_particles, self.jit)
        positive = ("latent_dim", "epochs", "batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if any(h < 1 for h in self.hidden_sizes):
            raise ConfigError(f"hidden sizes must be positive, got {list(self.hidden_sizes)}")
        if self.train_size is not None and self.train_size < 1:
            raise ConfigError(f"train_size must be positive, got {self.train_size}")
        for name in ("learning_rate", "baseline_learning_rate", "adam_eps"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name.replace('_', ' ')} must be positive, got {value}")
        if not 0 <= self.baseline_beta < 1:
            raise ConfigError(f"baseline beta must be in [0, 1), got {self.baseline_beta}")
        clip = self.clip_norm
        if clip is not None and not (clip > 0 and math.isfinite(clip)):
            raise ConfigError(
                f"clip norm must be a positive finite number (or none), got {self.clip_norm}"
            )
        check_seed(self.seed)
        check_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config stored in a run (``config.json`` or a checkpoint), checked.

        :raises CheckpointError: unknown fields, values of the wrong type or out of range.
        """
        if not isinstance(d, dict):
            raise CheckpointError(f"a stored config must be a table of settings, got {d!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, d)) - known)
        if unknown:
            raise CheckpointError(f"config has unknown fields {unknown}")
        try:
            config = cls(**d)
            # where the run was trained may not be here: check the device's name only
            if not isinstance(config.device, str) or not _DEVICE.match(config.device):
                raise ConfigError(f"unknown device {config.device!r}")
            dataclasses.replace(config, device="cpu").validate()
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"the stored config is invalid: {e}") from None
        return config

    def differences(self, other: TrainConfig) -> list[str]:
        """``"name: mine != other's"`` for each field that must match on resume."""
        a, b = self.to_dict(), other.to_dict()
        return [
            f"{k}: {a[k]!r} != {b[k]!r}" for k in a if k not in RESUMABLE_FIELDS and a[k] != b[k]
        ]


@dataclass
class TrainResult:
    """A trained VAE with its config and metrics (one dict an epoch)."""

    vae: VAE
    history: list[dict[str, float]]
    config: TrainConfig
    image_shape: tuple[int, int]
    test_images: torch.Tensor | None = None  # as evaluated (binarized once); None from load_run
    run_dir: Path | None = None
    test_labels: torch.Tensor | None = None


def parameter_count(config: TrainConfig, data_dim: int) -> int:
    """Weights and biases of the encoder and decoder (the nn baseline not included)."""
    hidden, z = list(config.hidden_sizes), config.latent_dim
    outputs = data_dim * (2 if config.likelihood == "gaussian" else 1)

    def dense(sizes: list[int]) -> int:
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))

    width = hidden[-1] if hidden else data_dim
    encoder = dense([data_dim, *hidden]) + 2 * (width * z + z)
    decoder = dense([z, *reversed(hidden)]) + (hidden[0] if hidden else z) * outputs + outputs
    return encoder + decoder


def _device_memory(device: str) -> int | None:
    try:
        if device.startswith("cuda"):
            return torch.cuda.get_device_properties(int(device.partition(":")[2] or 0)).total_memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None


def build_vae(config: TrainConfig, data_dim: int) -> VAE:
    """The VAE a config describes, for images of ``data_dim`` pixels, on the CPU.

    :raises ConfigError: the networks would not fit in the memory of ``config.device``.
    """
    count = parameter_count(config, data_dim)
    needed = 4 * 4 * count  # float32 parameters, their gradients and Adam's two moments
    memory = _device_memory(config.device)
    too_big = ConfigError(
        f"the networks would have {count:,} parameters, about {needed / 2**30:,.1f} GiB to "
        f"train, more than {config.device} has"
        + (f" ({memory / 2**30:,.1f} GiB)" if memory else "")
        + "; choose smaller --hidden-sizes or --latent-dim"
    )
    if memory is not None and needed > memory:
        raise too_big
    try:
        return VAE(
            data_dim,
            latent_dim=config.latent_dim,
            hidden_sizes=config.hidden_sizes,
            activation=config.activation,
            likelihood=config.likelihood,
            estimator=config.estimator,
            baseline_beta=config.baseline_beta,
        )
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, MemoryError) or "alloc" in str(e).lower():
            raise too_big from None
        raise


@torch.no_grad()
def elbo_per_image(vae: VAE, images: torch.Tensor, num_particles: int = 1, batch_size: int = 1000):
    """The ELBO of each image in nats, ``(N,)``, averaged over ``num_particles`` samples."""
    with scratch_param_store():
        chunks = [
            log_importance_weights(vae.model, vae.guide, x, num_particles).mean(0)
            for x in images.split(batch_size)
        ]
    return torch.cat(chunks)


def make_optimizer(config: TrainConfig) -> JointAdam:
    """Adam over all parameters, the nn baseline's at their own learning rate."""

    def learning_rate(name: str) -> float:
        baseline = name.startswith("baseline.")
        return config.baseline_learning_rate if baseline else config.learning_rate

    return JointAdam(learning_rate, config.clip_norm, eps=config.adam_eps)


def _load_images(config: TrainConfig, data: ImageData | None):
    if data is None:
        data = load_dataset(config.dataset, config.data_dir)
    train, test = prepare_images(data, config.binarize, config.likelihood, config.seed)
    if config.train_size is not None:
        train = train[: config.train_size]
    # images of another float type (float64 arrays, say) meet float32 networks
    return data, train.to(config.device, torch.float32), test.to(config.device, torch.float32)


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write_bytes(run_dir / METRICS_FILE, text.encode())


@torch.no_grad()
def _finite(vae: VAE, x: torch.Tensor) -> bool:
    """Whether the parameters, and the networks' outputs on ``x``, are all finite numbers."""
    if not all(torch.isfinite(p).all() for p in vae.parameters()):
        return False
    loc, scale = vae.encoder(x)
    outputs = (loc, scale, *vae.decoder(loc))
    return all(torch.isfinite(t).all() for t in outputs)


def _check_step_memory(config: TrainConfig, data_dim: int) -> None:
    """Refuse a batch of particles whose activations could not fit in the device's memory."""
    widths = data_dim * 3 + 2 * sum(config.hidden_sizes) + 4 * config.latent_dim
    rows = config.num_particles * config.batch_size
    needed = 4 * 3 * rows * widths  # float32, forward values and their gradients, roughly
    memory = _device_memory(config.device)
    if memory is not None and needed > memory:
        raise ConfigError(
            f"K = {config.num_particles} particles for each of {config.batch_size} images need "
            f"about {needed / 2**30:,.1f} GiB a step, more than {config.device} has "
            f"({memory / 2**30:,.1f} GiB); lower -K or --batch-size"
        )


def _check_room(run_dir: Path, vae: VAE) -> None:
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


def _load_model_state(vae: VAE, state: dict, where: Path | str) -> None:
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


def _resume_state(config: TrainConfig, run_dir: Path) -> dict:
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


def fit(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    data: ImageData | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train a VAE with ``pyro.infer.SVI`` and Adam.

    The caller's global RNGs and Pyro param store are left as they were found.

    :param config: the run's settings; validated first.
    :param run_dir: where to write the config, checkpoints and metrics (nothing is written if
        ``None``). The folder is locked for the whole call (:mod:`pyro_vae.runfolder`); a
        folder that already holds a checkpoint is refused unless ``resume``. A new run that
        fails before its first checkpoint removes the files it wrote.
    :param data: images to use instead of loading ``config.dataset`` (e.g. synthetic data).
    :param resume: continue the run in ``run_dir`` from its checkpoint, to ``config.epochs``
        epochs in all. With the same seed on the CPU this reproduces an uninterrupted run
        exactly.
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
    config.validate()
    if resume and run_dir is None:
        raise ConfigError("resume needs a run folder")
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise ConfigError(f"run_dir must be a path, got {run_dir!r}")
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is None:
        lock = contextlib.nullcontext()
    else:
        lock = locked_folder(run_dir, create=not resume)
    with lock, preserved_rng():
        return _fit(config, run_dir, data, resume)


def _checkpoint_state(config, epoch, vae, optim, history, data, store) -> dict:
    return {
        "config": config.to_dict(),
        "epoch": epoch,
        "model": vae.state_dict(),
        "optimizer": optim.get_state(),
        "rng": get_rng_state(),
        "history": history,
        "image_shape": list(data.image_shape),
        "baseline_state": {k: v.detach() for k, v in store.items() if k.startswith("__baseline")},
    }


def _fit(config: TrainConfig, run_dir: Path | None, data, resume: bool) -> TrainResult:
    checkpoint = _resume_state(config, run_dir) if resume else None
    if not resume and run_dir is not None and (run_dir / CHECKPOINT_FILE).exists():
        raise CheckpointError(
            f"{run_dir} already holds a run; resume it or choose another run folder"
        )

    pyro.set_rng_seed(config.seed)
    data, train_images, test_images = _load_images(config, data)
    vae = build_vae(config, data.data_dim).to(config.device)  # checks the parameters' size
    _check_step_memory(config, data.data_dim)
    vae.init_output_bias(train_images.mean(0))
    if run_dir is not None:
        _check_room(run_dir, vae)
    optim = make_optimizer(config)
    history: list[dict[str, float]] = []
    baseline_state: dict[str, torch.Tensor] = {}
    start_epoch, step, seconds = 0, 0, 0.0
    if checkpoint is not None:
        _load_model_state(vae, checkpoint["model"], run_dir / CHECKPOINT_FILE)
        optim.set_state(checkpoint["optimizer"])
        baseline_state = checkpoint.get("baseline_state", {})
        try:
            set_rng_state(checkpoint["rng"])
        except (TypeError, ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(
                f"checkpoint {run_dir / CHECKPOINT_FILE} is damaged: its RNG state cannot be "
                f"restored ({str(e).strip().splitlines()[0]})"
            ) from None
        history = list(checkpoint["history"])
        start_epoch = int(checkpoint["epoch"])
        if history:
            step, seconds = int(history[-1]["step"]), float(history[-1]["seconds"])

    # Pyro's decaying-average baseline keeps one average per batch position: equal batches only
    drop_last = uses_baseline(config.estimator)
    loader = BatchLoader(
        train_images, config.batch_size, config.binarize, config.seed, drop_last=drop_last
    )
    if len(loader) == 0:
        raise ConfigError(f"fewer training images than one batch of {config.batch_size}")
    elbo = make_elbo(config.objective, config.estimator, config.num_particles, config.jit)
    saved_epoch = start_epoch  # the epoch of the checkpoint on disk (0: none yet)
    # What a new run finds in its folder (a killed run's config, a file of the user's) is put
    # back if it fails before its first checkpoint; a resumed run rewrites config.json and
    # metrics.jsonl only beside a new checkpoint, so they never disagree with it.
    found = {}
    if run_dir is not None and not resume:
        for name in (CONFIG_FILE, METRICS_FILE):
            with contextlib.suppress(OSError):
                found[name] = (run_dir / name).read_bytes()
    try:
        if run_dir is not None and not resume:
            write_json(run_dir / CONFIG_FILE, config.to_dict())
            _write_metrics(run_dir, history)
        with pyro.get_param_store().scope(), warnings.catch_warnings():
            # Pyro warns "Encountered NaN: loss" before the step returns it; the divergence
            # is reported below in one line of our own
            warnings.filterwarnings("ignore", message="Encountered (NaN|[+-]inf)")
            store = pyro.get_param_store()
            for name, value in baseline_state.items():  # a resumed run's running averages
                store[name] = value.to(config.device)
            svi = SVI(vae.model, vae.guide, optim, elbo)
            for epoch in range(start_epoch, config.epochs):
                vae.train()
                if config.lr_schedule != "constant":
                    optim.set_lr_factor(lr_factor(config.lr_schedule, epoch))
                started, total, count = time.perf_counter(), 0.0, 0
                bar = tqdm(
                    loader.epoch(epoch),
                    total=len(loader),
                    desc=f"epoch {epoch + 1}/{config.epochs}",
                    disable=not config.progress,
                    file=sys.stderr,
                    leave=False,
                )
                for x in bar:
                    step += 1
                    try:
                        # the data were checked against the likelihood's support up front,
                        # so Pyro's per-step validation only costs time (benchmarks/speed.py)
                        with pyro.validation_enabled(False):
                            loss = svi.step(x)
                    except (ValueError, RuntimeError) as e:
                        # NaN parameters fail inside Pyro or torch (a NaN scale cannot be
                        # sampled) before the loss can say so
                        if isinstance(e, RuntimeError) and _finite(vae, x):
                            raise
                        loss, cause = math.nan, f" ({str(e).strip().splitlines()[0]})"
                    else:
                        cause = ""
                    if not math.isfinite(loss):
                        kept = (
                            f"; the checkpoint of epoch {saved_epoch} is kept"
                            if saved_epoch
                            else ""
                        )
                        raise TrainingDiverged(
                            f"training diverged at epoch {epoch + 1}, step {step}: the "
                            f"objective became {loss}{cause}{kept}; try a lower learning rate "
                            "or a clip norm"
                        )
                    total, count = total - loss, count + x.shape[0]
                    bar.set_postfix(elbo=f"{total / count:.2f}", refresh=False)
                seconds += time.perf_counter() - started
                vae.eval()
                row = {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_elbo": total / count,
                    "test_elbo": elbo_per_image(vae, test_images).mean().item(),
                    "seconds": seconds,
                }
                if not math.isfinite(row["test_elbo"]):
                    kept = f"; the checkpoint of epoch {saved_epoch} is kept" if saved_epoch else ""
                    raise TrainingDiverged(
                        f"training diverged in epoch {epoch + 1}: the test ELBO became "
                        f"{row['test_elbo']}{kept}; try a lower learning rate or a clip norm"
                    )
                history.append(row)
                if config.progress:
                    print(
                        f"epoch {epoch + 1}/{config.epochs}  train ELBO {row['train_elbo']:.2f}  "
                        f"test ELBO {row['test_elbo']:.2f}  ({seconds:.0f} s)",
                        file=sys.stderr,
                    )
                if run_dir is not None:
                    state = _checkpoint_state(config, epoch + 1, vae, optim, history, data, store)
                    try:
                        save_checkpoint(run_dir / CHECKPOINT_FILE, state)
                        write_json(run_dir / CONFIG_FILE, config.to_dict())
                        _write_metrics(run_dir, history)
                    except OutputError as e:
                        kept = (
                            f"the checkpoint of epoch {saved_epoch} is kept"
                            if saved_epoch
                            else "no checkpoint was written"
                        )
                        raise OutputError(f"{e}; training stopped after epoch {epoch + 1}, "
                                          f"{kept}") from None  # fmt: skip
                    saved_epoch = epoch + 1
    except BaseException:
        # a new run that never saved a checkpoint leaves the folder as it found it
        if run_dir is not None and not resume and not (run_dir / CHECKPOINT_FILE).exists():
            for name in (CONFIG_FILE, METRICS_FILE):
                with contextlib.suppress(OSError, PyroVAEError):
                    if name in found:
                        atomic_write_bytes(run_dir / name, found[name])
                    else:
                        (run_dir / name).unlink()
        raise
    return TrainResult(
        vae.eval(), history, config, data.image_shape, test_images, run_dir, data.test_labels
    )


def load_run(run_dir: str | Path, device: str = "cpu") -> TrainResult:
    """The trained VAE, config and metrics history stored in a run folder.

    :raises CheckpointError: no run folder, or a checkpoint that is damaged or does not fit.
    :raises ConfigError: an unknown or unavailable ``device``.
    """
    check_device(device)
    if not isinstance(run_dir, (str, os.PathLike)):
        raise CheckpointError(f"a run folder is a path, got {run_dir!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no run folder at {run_dir}")
    with preserved_rng():  # building the networks draws their initial weights
        return _load_run(run_dir, device)


def _load_run(run_dir: Path, device: str) -> TrainResult:
    path = run_dir / CHECKPOINT_FILE
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    out = state["model"].get("decoder.out.weight")
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise CheckpointError(f"the model in {path} has no decoder output layer")
    data_dim = out.shape[0] // (2 if config.likelihood == "gaussian" else 1)
    vae = build_vae(dataclasses.replace(config, device="cpu"), data_dim)
    _load_model_state(vae, state["model"], path)
    image_shape = tuple(state.get("image_shape", (28, 28)))
    if image_shape[0] * image_shape[1] != data_dim:
        raise CheckpointError(
            f"the model in {path} has {data_dim} pixels per image, its image shape "
            f"{image_shape} has {image_shape[0] * image_shape[1]}"
        )
    history = list(state["history"])
    return TrainResult(vae.to(device).eval(), history, config, image_shape, run_dir=run_dir)
