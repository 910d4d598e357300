"""Training with ``pyro.infer.SVI``: the config, the loop, run folders and resuming.

A run folder holds ``config.json`` (what was asked), ``checkpoint.pt`` (written atomically at
the end of every epoch) and ``metrics.jsonl`` (one line an epoch: ``epoch``, ``step``,
``train_elbo``, ``test_elbo`` in nats per image, and cumulative training ``seconds``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.infer import SVI
from tqdm.auto import tqdm

from pyro_vae.checkpoint import (
    atomic_write_bytes,
    get_rng_state,
    load_checkpoint,
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
from pyro_vae.errors import CheckpointError, ConfigError, PyroVAEError
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

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "elbo_per_image", "fit", "load_run"]

CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE = "config.json", "checkpoint.pt", "metrics.jsonl"
# Settings that may change when a run is resumed; every other field must match.
RESUMABLE_FIELDS = ("epochs", "device", "data_dir", "progress")


class TrainingDiverged(PyroVAEError):
    """The training objective became NaN or infinite."""


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
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        if self.binarize is None:
            self.binarize = default_binarize(self.likelihood)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values out of range or settings that clash."""
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
        check_estimator(self.estimator)
        check_objective(self.objective, self.estimator, self.num_particles, self.jit)
        positive = ("latent_dim", "epochs", "batch_size")
        for name in positive:
            if int(getattr(self, name)) < 1:
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
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"clip norm must be positive, got {self.clip_norm}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} asked for, but CUDA is not available here")
        if not self.device.startswith(("cpu", "cuda")):
            raise ConfigError(f"unknown device {self.device!r}; use cpu or cuda")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"config has unknown fields {unknown}")
        return cls(**d)

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


def build_vae(config: TrainConfig, data_dim: int) -> VAE:
    return VAE(
        data_dim,
        latent_dim=config.latent_dim,
        hidden_sizes=config.hidden_sizes,
        activation=config.activation,
        likelihood=config.likelihood,
        estimator=config.estimator,
        baseline_beta=config.baseline_beta,
    )


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
    return data, train.to(config.device), test.to(config.device)


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write_bytes(run_dir / METRICS_FILE, text.encode())


def fit(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    data: ImageData | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train a VAE with ``pyro.infer.SVI`` and Adam.

    :param config: the run's settings; validated first.
    :param run_dir: where to write the config, checkpoints and metrics (nothing is written if
        ``None``). A folder that already holds a checkpoint is refused unless ``resume``.
    :param data: images to use instead of loading ``config.dataset`` (e.g. synthetic data).
    :param resume: continue the run in ``run_dir`` from its checkpoint. With the same seed on
        the CPU this reproduces an uninterrupted run exactly.
    :raises ConfigError: a setting out of range, or settings that clash.
    :raises DataError: data the likelihood cannot score.
    :raises CheckpointError: a damaged checkpoint, or a run folder that does not match.
    :raises TrainingDiverged: the objective became NaN; the last good checkpoint is kept.
    """
    config.validate()
    run_dir = Path(run_dir) if run_dir is not None else None
    checkpoint = None
    if resume:
        if run_dir is None:
            raise ConfigError("resume needs a run folder")
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
        saved = TrainConfig.from_dict(checkpoint["config"])
        diffs = saved.differences(config)
        if diffs:
            raise CheckpointError(
                f"{run_dir} was trained with a different config ({'; '.join(diffs)}); "
                "resume with the same settings or start a new run folder"
            )
    elif run_dir is not None and (run_dir / CHECKPOINT_FILE).exists():
        raise CheckpointError(
            f"{run_dir} already holds a run; resume it or choose another run folder"
        )

    pyro.set_rng_seed(config.seed)
    data, train_images, test_images = _load_images(config, data)
    vae = build_vae(config, data.data_dim).to(config.device)
    vae.init_output_bias(train_images.mean(0))
    optim = make_optimizer(config)
    history: list[dict[str, float]] = []
    baseline_state: dict[str, torch.Tensor] = {}
    start_epoch, step, seconds = 0, 0, 0.0
    if checkpoint is not None:
        vae.load_state_dict(checkpoint["model"])
        optim.set_state(checkpoint["optimizer"])
        baseline_state = checkpoint.get("baseline_state", {})
        set_rng_state(checkpoint["rng"])
        history = list(checkpoint["history"])
        start_epoch = int(checkpoint["epoch"])
        if history:
            step, seconds = int(history[-1]["step"]), float(history[-1]["seconds"])
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / CONFIG_FILE, config.to_dict())
        _write_metrics(run_dir, history)

    # Pyro's decaying-average baseline keeps one average per batch position: equal batches only
    drop_last = uses_baseline(config.estimator)
    loader = BatchLoader(
        train_images, config.batch_size, config.binarize, config.seed, drop_last=drop_last
    )
    if len(loader) == 0:
        raise ConfigError(f"fewer training images than one batch of {config.batch_size}")
    elbo = make_elbo(config.objective, config.estimator, config.num_particles, config.jit)
    with pyro.get_param_store().scope():
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
                    # the data were checked against the likelihood's support up front, so
                    # Pyro's per-step validation only costs time (benchmarks/speed.py)
                    with pyro.validation_enabled(False):
                        loss = svi.step(x)
                except ValueError as e:  # Pyro's validation of NaN distribution parameters
                    loss, cause = math.nan, f" ({str(e).splitlines()[0]})"
                else:
                    cause = ""
                if not math.isfinite(loss):
                    kept = f"; the checkpoint of epoch {start_epoch} is kept" if checkpoint else ""
                    raise TrainingDiverged(
                        f"training diverged at epoch {epoch + 1}, step {step}: the objective "
                        f"became {loss}{cause}{kept}; try a lower learning rate or a clip norm"
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
            history.append(row)
            if config.progress:
                print(
                    f"epoch {epoch + 1}/{config.epochs}  train ELBO {row['train_elbo']:.2f}  "
                    f"test ELBO {row['test_elbo']:.2f}  ({seconds:.0f} s)",
                    file=sys.stderr,
                )
            if run_dir is not None:
                save_checkpoint(
                    run_dir / CHECKPOINT_FILE,
                    {
                        "config": config.to_dict(),
                        "epoch": epoch + 1,
                        "model": vae.state_dict(),
                        "optimizer": optim.get_state(),
                        "rng": get_rng_state(),
                        "history": history,
                        "image_shape": list(data.image_shape),
                        "baseline_state": {
                            k: v.detach() for k, v in store.items() if k.startswith("__baseline")
                        },
                    },
                )
                _write_metrics(run_dir, history)
                checkpoint = True
                start_epoch = epoch + 1
    return TrainResult(
        vae.eval(), history, config, data.image_shape, test_images, run_dir, data.test_labels
    )


def load_run(run_dir: str | Path, device: str = "cpu") -> TrainResult:
    """The trained VAE, config and metrics history stored in a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no run folder at {run_dir}")
    state = load_checkpoint(run_dir / CHECKPOINT_FILE)
    config = TrainConfig.from_dict(state["config"])
    data_dim = state["model"]["decoder.out.weight"].shape[0]
    if config.likelihood == "gaussian":
        data_dim //= 2
    vae = build_vae(config, data_dim)
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint in {run_dir} does not fit its config: {e}") from None
    image_shape = tuple(state.get("image_shape", (28, 28)))
    history = list(state["history"])
    return TrainResult(vae.to(device).eval(), history, config, image_shape, run_dir=run_dir)
