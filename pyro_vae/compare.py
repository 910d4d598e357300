"""The estimator study: gradient variance at fixed parameters, and training under each estimator.

:func:`compare_estimators` does, for one config:

1. Gradients. On one fixed minibatch (the first ``batch_size`` training images, binarized
   once) it draws ``num_samples`` gradient estimates per estimator at the same parameters,
   at initialization and after chosen epochs of a ``reparam`` training run, and reports for
   the encoder and the decoder separately the total variance, its ratio to ``reparam``, the
   signal-to-noise ratio, the agreement of the mean with a ``reparam`` reference of
   ``reference_samples`` estimates, and the time per estimate.
2. Training. It trains one model per estimator with the same seed and budget and records the
   test ELBO against steps and against seconds.

Everything is written to ``out_dir``: ``gradients.csv``/``.json``, ``training.csv``,
``variance.png``, ``training_curves.png``, and one run folder per estimator under ``runs/``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.build import build_vae
from pyro_vae.checkpoint import atomic_write, atomic_write_bytes, write_json
from pyro_vae.config import TrainConfig
from pyro_vae.data import ImageData, as_float, binarize_once, mean_image
from pyro_vae.errors import ConfigError, OutputError
from pyro_vae.estimators import CONTINUOUS_ESTIMATORS as ESTIMATORS
from pyro_vae.estimators import check_estimator
from pyro_vae.gradients import gradient_samples, gradient_statistics
from pyro_vae.isolation import isolated
from pyro_vae.model import VAE
from pyro_vae.plots import gradient_variance_figure, training_curves_figure
from pyro_vae.runfolder import LOCK_FILE
from pyro_vae.splits import run_images
from pyro_vae.train import fit

__all__ = ["EstimatorComparison", "compare_estimators", "compare_gradients"]


@dataclass
class EstimatorComparison:
    """One row per (stage, estimator, network) for gradients; one history per estimator."""

    gradients: list[dict]
    training: dict[str, list[dict]]


def compare_gradients(
    vae: VAE,
    x: torch.Tensor,
    estimators: Sequence[str] = ESTIMATORS,
    num_samples: int = 200,
    reference_samples: int = 1000,
    baseline_learning_rate: float = 1e-2,
    baseline_warmup: int = 200,
) -> list[dict]:
    """Gradient statistics of each estimator at ``vae``'s parameters on the batch ``x``; a
    baseline first learns for ``baseline_warmup`` steps (:func:`gradient_samples`)."""
    reference = gradient_samples(vae, x, "reparam", reference_samples)
    samples = {
        e: gradient_samples(vae, x, e, num_samples, baseline_warmup, baseline_learning_rate)
        for e in dict.fromkeys(["reparam", *estimators])
    }
    rows = []
    for part in ("encoder", "decoder"):
        reparam_variance = gradient_statistics(getattr(samples["reparam"], part))["total_variance"]
        for estimator in estimators:
            stats = gradient_statistics(
                getattr(samples[estimator], part), getattr(reference, part).mean(0)
            )
            rows.append(
                {
                    "estimator": estimator,
                    "network": part,
                    **stats,
                    "variance_ratio_to_reparam": stats["total_variance"] / reparam_variance,
                    "seconds_per_estimate": samples[estimator].seconds_per_estimate,
                }
            )
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def compare_estimators(
    config: TrainConfig,
    out_dir: str | Path,
    estimators: Sequence[str] = ESTIMATORS,
    gradient_epochs: Sequence[int] = (0,),
    num_samples: int = 200,
    reference_samples: int = 1000,
    data: ImageData | None = None,
    progress: bool = False,
    baseline_warmup: int = 200,
) -> EstimatorComparison:
    """Run the whole study (see the module docstring) and write its tables and figures.

    :param config: the settings every estimator trains with: objective ``elbo`` with one
        particle, the only objective all estimators support (``config.estimator`` is ignored).
    :param gradient_epochs: measure gradients after these epochs of the reparam run, each
        from 0 (at initialization) to ``config.epochs``.
    :param progress: a line on stderr as each stage starts (the gradients of a stage, an
        estimator's training) and the training runs' lines an epoch (and bars, on a terminal).
    :param baseline_warmup: steps in which a baseline learns at the measured parameters
        before its estimates are drawn (:func:`pyro_vae.gradients.gradient_samples`).
    :raises ConfigError: another objective or ``K``, no estimator, an unknown one, gradient
        epochs out of range, fewer than two estimates.
    :raises OutputError: ``out_dir`` is a file, or a folder that already holds files (another
        study's or a run's, which the study's tables and figures would replace).
    """
    if not estimators:
        raise ConfigError("no estimators to compare")
    for estimator in estimators:
        check_estimator(estimator)
    if config.objective not in (None, "elbo") or config.num_particles != 1:
        raise ConfigError(
            "the estimator study trains every estimator with objective 'elbo' and K = 1 (the "
            f"score-function estimators need it), got {config.objective!r} with K = "
            f"{config.num_particles}"
        )
    config = dataclasses.replace(config, objective="elbo", estimator="reparam")
    config.validate()
    bad = [e for e in gradient_epochs if not 0 <= e <= config.epochs]
    if not gradient_epochs or bad:
        raise ConfigError(
            f"gradient epochs {list(gradient_epochs)} must be given, each from 0 to "
            f"{config.epochs} (the epochs of the run)"
        )
    counts = (num_samples, reference_samples, baseline_warmup, *gradient_epochs)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
        raise ConfigError(f"numbers of estimates and gradient epochs must be whole, got {counts}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise OutputError(f"cannot use {out_dir} as a folder: a file of that name exists")
    if Path(out_dir).is_dir() and any(p.name != LOCK_FILE for p in Path(out_dir).iterdir()):
        raise OutputError(f"{out_dir} already holds files; the study writes a new folder")
    if min(num_samples, reference_samples) < 2:
        raise ConfigError("the numbers of gradient estimates must be at least 2")
    if baseline_warmup < 0:
        raise ConfigError(f"the baseline warm-up cannot be negative, got {baseline_warmup}")
    with isolated(config.seed):
        return _study(
            config, Path(out_dir), estimators, gradient_epochs, num_samples, reference_samples,
            data, progress, baseline_warmup,
        )  # fmt: skip


def _study(
    config, out_dir, estimators, gradient_epochs, num_samples, reference_samples, data, progress,
    baseline_warmup,
):  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    images = run_images(dataclasses.replace(config, train_size=None), data)
    data, train = images.data, images.train
    batch = as_float(train[: config.batch_size])
    if config.binarize == "dynamic":
        batch = binarize_once(batch, config.seed)
    batch = batch.to(config.device)

    def say(what: str) -> None:
        if progress:
            print(f"compare-estimators: {what}", file=sys.stderr, flush=True)

    def study(stage: str, vae: VAE) -> list[dict]:
        say(f"gradients at {stage}: {num_samples} estimates of each of {len(estimators)} "
            f"estimators, {reference_samples} of the reference")  # fmt: skip
        rows = compare_gradients(vae, batch, estimators, num_samples, reference_samples,
                                 config.baseline_learning_rate, baseline_warmup)  # fmt: skip
        return [{"stage": stage, **row} for row in rows]

    initial = build_vae(config, data.image_shape).to(config.device)
    initial.init_output_bias(mean_image(train).to(config.device))
    gradients = study("init", initial) if 0 in gradient_epochs else []

    # the reparam run, stopped at each gradient epoch to measure, then resumed
    training: dict[str, list[dict]] = {}
    runs = out_dir / "runs"
    reparam_config = dataclasses.replace(config, estimator="reparam")
    done = 0
    for epoch in sorted(e for e in set(gradient_epochs) if 0 < e < config.epochs):
        say(f"training reparam to epoch {epoch}")
        staged = dataclasses.replace(reparam_config, epochs=epoch)
        result = fit(staged, runs / "reparam", data, resume=done > 0, progress=progress)
        gradients += study(f"epoch {epoch}", result.vae)
        done = epoch
    say(f"training reparam to epoch {config.epochs}")
    result = fit(reparam_config, runs / "reparam", data, done > 0, progress)
    if config.epochs in gradient_epochs:
        gradients += study(f"epoch {config.epochs}", result.vae)
    training["reparam"] = result.history
    for estimator in estimators:
        if estimator != "reparam":
            say(f"training {estimator}, {config.epochs} epochs")
            estimator_config = dataclasses.replace(config, estimator=estimator)
            training[estimator] = fit(
                estimator_config, runs / estimator, data, progress=progress
            ).history

    _write_study(out_dir, config, gradients, training)
    return EstimatorComparison(gradients, training)


def _write_study(out_dir: Path, config, gradients: list[dict], training: dict) -> None:
    """The study's tables (CSV and JSON), its config and its two figures."""
    _write_csv(out_dir / "gradients.csv", gradients)
    training_rows = [{"estimator": e, **row} for e, rows in training.items() for row in rows]
    _write_csv(out_dir / "training.csv", training_rows)
    write_json(out_dir / "gradients.json", gradients)
    write_json(out_dir / "config.json", config.to_dict())
    for name, fig in (
        ("variance.png", gradient_variance_figure(gradients)),
        ("training_curves.png", training_curves_figure(training)),
    ):
        atomic_write(out_dir / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100))
