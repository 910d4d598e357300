"""The estimator study: gradient variance at fixed parameters, and training under each estimator.

:func:`compare_estimators` does, for one config:

1. Gradients. On one fixed minibatch (the first ``batch_size`` training images, binarized
   once) it draws ``num_samples`` gradient estimates per estimator at the same parameters,
   at initialization and after chosen epochs of a training run with the latent's own
   estimator (``reparam``; ``disarm`` for a Bernoulli latent, ``gumbel`` for a categorical
   one), and reports for the encoder and the decoder separately the total variance, its
   ratio to that estimator's, the signal-to-noise ratio, the agreement of the mean with a
   reference, and the time per estimate.
2. Training. It trains one model per estimator with the same seed and budget and records the
   held-out ELBO against steps and against seconds.

The reference is the mean of ``reference_samples`` estimates of an unbiased estimator:
``reparam``'s for a continuous latent; for a discrete one the exact gradient, summed over
every code (``enumerate``), where the code has at most
:data:`pyro_vae.discrete.MAX_ENUMERATED` values, else ``disarm``'s (Bernoulli) or
``reinforce-loo``'s with two draws (categorical). The relaxations' distance from it is their
bias. The estimators that need several draws an image (``reinforce-loo``, ``vimco``) take two,
as many decoder passes as DisARM's pair; VIMCO's estimates are of its two-sample bound.

Everything is written to ``out_dir``: ``gradients.csv``/``.json``, ``training.csv``,
``variance.png``, ``training_curves.png``, and one run folder per estimator under ``runs/``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.build import build_vae
from pyro_vae.checkpoint import atomic_write, atomic_write_bytes, write_json
from pyro_vae.config import TrainConfig
from pyro_vae.data import ImageData, as_float, binarize_once, mean_image
from pyro_vae.discrete import MAX_ENUMERATED
from pyro_vae.errors import ConfigError, OutputError
from pyro_vae.estimators import CONTINUOUS_ESTIMATORS as ESTIMATORS
from pyro_vae.estimators import RELAXED, check_estimator, uses_baseline
from pyro_vae.gradients import gradient_samples, gradient_statistics
from pyro_vae.isolation import isolated
from pyro_vae.latents import LatentSpace
from pyro_vae.model import VAE
from pyro_vae.plots import gradient_variance_figure, training_curves_figure
from pyro_vae.priors import resolve_latent
from pyro_vae.runfolder import LOCK_FILE
from pyro_vae.splits import run_images
from pyro_vae.train import fit

__all__ = [
    "EstimatorComparison",
    "check_study",
    "compare_estimators",
    "compare_gradients",
    "study_estimators",
]

#: draws an image of the estimators that need several: the fewest, as many decoder passes as
#: DisARM's antithetic pair
DRAWS = {"reinforce-loo": 2, "vimco": 2}


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
    temperature: float = 1.0,
) -> list[dict]:
    """Gradient statistics of each estimator at ``vae``'s parameters on the batch ``x``; a
    baseline first learns for ``baseline_warmup`` steps (:func:`gradient_samples`). The
    variance ratio is to the latent's own estimator's (``variance_ratio_to_reparam`` for a
    continuous latent, ``variance_ratio_to_disarm`` or ``_to_gumbel`` for a discrete one);
    the relaxations draw at ``temperature``."""
    space = vae.latent
    own = space.default_estimator
    reference_estimator = _reference(space, vae.latent_dim)
    draws = reference_samples if reference_estimator != "enumerate" else 2  # exact: no noise

    def draw(estimator: str, n: int, warmup: int = 0) -> object:
        k = DRAWS.get(estimator, 1)
        return gradient_samples(vae, x, estimator, n, warmup, baseline_learning_rate, k,
                                temperature)  # fmt: skip

    reference = draw(reference_estimator, draws)
    samples = {e: draw(e, num_samples, baseline_warmup) for e in dict.fromkeys([own, *estimators])}
    rows = []
    for part in ("encoder", "decoder"):
        own_variance = gradient_statistics(getattr(samples[own], part))["total_variance"]
        for estimator in estimators:
            stats = gradient_statistics(
                getattr(samples[estimator], part), getattr(reference, part).mean(0)
            )
            rows.append(
                {
                    "estimator": estimator,
                    "network": part,
                    **stats,
                    f"variance_ratio_to_{own}": stats["total_variance"] / own_variance,
                    "seconds_per_estimate": samples[estimator].seconds_per_estimate,
                    "reference": reference_estimator,
                    "temperature": temperature if estimator in RELAXED else None,
                }
            )
    return rows


def _reference(space: LatentSpace, latent_dim: int) -> str:
    """The estimator whose mean is the study's reference gradient (see the module's text)."""
    if not space.discrete:
        return "reparam"
    if latent_dim * math.log2(space.categories or 2) <= math.log2(MAX_ENUMERATED):
        return "enumerate"
    return "disarm" if "disarm" in space.estimators else "reinforce-loo"


def study_estimators(space: LatentSpace, latent_dim: int) -> tuple[str, ...]:
    """The estimators the study compares by default: all of the latent's that sample
    (``enumerate``, where the code is small enough, is the reference, not a row)."""
    return tuple(e for e in space.estimators if e != "enumerate")


def _estimator_config(config: TrainConfig, estimator: str) -> TrainConfig:
    """The study's config for one estimator: its objective and draws, and the temperature
    only where it relaxes."""
    relaxed = estimator in RELAXED
    return dataclasses.replace(
        config, estimator=estimator, objective="iwae" if estimator == "vimco" else "elbo",
        num_particles=DRAWS.get(estimator, 1),
        temperature=config.temperature if relaxed else None,
        temperature_anneal=config.temperature_anneal if relaxed else None,
    )  # fmt: skip


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
    estimators: Sequence[str] | None = None,
    gradient_epochs: Sequence[int] = (0,),
    num_samples: int = 200,
    reference_samples: int = 1000,
    data: ImageData | None = None,
    progress: bool = False,
    baseline_warmup: int = 200,
) -> EstimatorComparison:
    """Run the whole study (see the module docstring) and write its tables and figures.

    :param config: the settings every estimator trains with: objective ``elbo`` with one
        particle, the only objective all estimators support (``config.estimator`` is ignored;
        ``reinforce-loo`` and ``vimco`` take two draws, and VIMCO its bound). A temperature
        goes to the relaxations alone.
    :param estimators: those to compare; by default all of the latent space's that sample
        (:func:`study_estimators`).
    :param gradient_epochs: measure gradients after these epochs of the run with the latent's
        own estimator (``reparam``, ``disarm``, ``gumbel``), each from 0 (at initialization)
        to ``config.epochs``.
    :param progress: a line on stderr as each stage starts (the gradients of a stage, an
        estimator's training) and the training runs' lines an epoch (and bars, on a terminal).
    :param baseline_warmup: steps in which a baseline learns at the measured parameters
        before its estimates are drawn (:func:`pyro_vae.gradients.gradient_samples`).
    :raises ConfigError: another objective or ``K``, no estimator, an unknown one or one the
        latent space refuses, gradient epochs out of range, fewer than two estimates.
    :raises OutputError: ``out_dir`` is a file, or a folder that already holds files (another
        study's or a run's, which the study's tables and figures would replace).
    """
    own, estimators, temperature = check_study(config, estimators)
    if not isinstance(gradient_epochs, (list, tuple, range)):
        raise ConfigError(f"gradient epochs must be a list of epochs, got {gradient_epochs!r}")
    counts = (num_samples, reference_samples, baseline_warmup, *gradient_epochs)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
        raise ConfigError(f"numbers of estimates and gradient epochs must be whole, got {counts}")
    bad = [e for e in gradient_epochs if not 0 <= e <= own.epochs]
    if not gradient_epochs or bad:
        raise ConfigError(
            f"gradient epochs {list(gradient_epochs)} must be given, each from 0 to "
            f"{own.epochs} (the epochs of the run)"
        )
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise OutputError(f"cannot use {out_dir} as a folder: a file of that name exists")
    if Path(out_dir).is_dir() and any(p.name != LOCK_FILE for p in Path(out_dir).iterdir()):
        raise OutputError(f"{out_dir} already holds files; the study writes a new folder")
    if min(num_samples, reference_samples) < 2:
        raise ConfigError("the numbers of gradient estimates must be at least 2")
    if baseline_warmup < 0:
        raise ConfigError(f"the baseline warm-up cannot be negative, got {baseline_warmup}")
    settings = {
        e: _estimator_config(config, e) for e in dict.fromkeys([own.estimator, *estimators])
    }
    with isolated(config.seed):
        return _study(
            settings, Path(out_dir), estimators, gradient_epochs, num_samples,
            reference_samples, data, progress, baseline_warmup, temperature,
        )  # fmt: skip


def check_study(
    config: TrainConfig, estimators: Sequence[str] | None = None
) -> tuple[TrainConfig, list[str], float]:
    """Check the study's settings: its config (that of the latent's own estimator's run), its
    estimators (by default :func:`study_estimators`) and the relaxations' temperature.

    :raises ConfigError: another objective or ``K``, no estimator, an unknown one or one the
        latent space refuses, a temperature and no relaxed estimator.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"compare_estimators takes a TrainConfig, got {type(config).__name__}")
    if config.objective not in (None, "elbo") or config.num_particles != 1:
        raise ConfigError(
            "the estimator study trains every estimator with objective 'elbo' and K = 1 (the "
            f"score-function estimators need it), got {config.objective!r} with K = "
            f"{config.num_particles}"
        )
    full = dataclasses.replace(config, estimator=None, objective=None).resolved()
    space = resolve_latent(full.latent, full.prior, full.categories)
    if estimators is None:
        estimators = study_estimators(space, config.latent_dim)
    if isinstance(estimators, (str, bytes)) or not hasattr(estimators, "__iter__"):
        raise ConfigError(f"estimators must be a list of estimators' names, got {estimators!r}")
    estimators = list(dict.fromkeys(estimators))  # an iterator read once; each name once
    if not estimators:
        raise ConfigError("estimators must be a list of estimators' names, got none")
    for estimator in estimators:
        check_estimator(estimator)
        _estimator_config(config, estimator).validate()  # refused by this latent, say
    own = space.default_estimator  # trained and measured too: the variances' yardstick
    relaxed = [e for e in (own, *estimators) if e in RELAXED]
    if (config.temperature is not None or config.temperature_anneal) and not relaxed:
        raise ConfigError(f"a temperature is for the relaxed estimators ({' and '.join(RELAXED)}),"
                          f" and the study compares neither")  # fmt: skip
    temperature = 1.0 if config.temperature is None else config.temperature  # the gradients'
    own_config = _estimator_config(config, own)
    own_config.validate()
    return own_config, estimators, temperature


def _study(
    settings, out_dir, estimators, gradient_epochs, num_samples, reference_samples, data,
    progress, baseline_warmup, temperature,
):  # fmt: skip
    own = next(iter(settings))  # the latent's own estimator: its run is staged
    config = settings[own]
    images = run_images(dataclasses.replace(config, train_size=None), data)
    data, train = images.data, images.train
    _check_batches(settings, len(run_images(config, data).train))
    out_dir.mkdir(parents=True, exist_ok=True)
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
                                 config.baseline_learning_rate, baseline_warmup,
                                 temperature)  # fmt: skip
        return [{"stage": stage, **row} for row in rows]

    initial = build_vae(config, data.image_shape).to(config.device)
    initial.init_output_bias(mean_image(train).to(config.device))
    gradients = study("init", initial) if 0 in gradient_epochs else []

    # the run of the latent's own estimator (config's), stopped at each gradient epoch to
    # measure, then resumed
    training: dict[str, list[dict]] = {}
    runs = out_dir / "runs"
    done = 0
    for epoch in sorted(e for e in set(gradient_epochs) if 0 < e < config.epochs):
        say(f"training {own} to epoch {epoch}")
        staged = dataclasses.replace(config, epochs=epoch)
        result = fit(staged, runs / own, data, resume=done > 0, progress=progress)
        gradients += study(f"epoch {epoch}", result.vae)
        done = epoch
    say(f"training {own} to epoch {config.epochs}")
    result = fit(config, runs / own, data, done > 0, progress)
    if config.epochs in gradient_epochs:
        gradients += study(f"epoch {config.epochs}", result.vae)
    training[own] = result.history
    for estimator in estimators:
        if estimator != own:
            say(f"training {estimator}, {config.epochs} epochs")
            its = settings[estimator]
            training[estimator] = fit(its, runs / estimator, data, progress=progress).history

    _write_study(out_dir, config, gradients, training)
    return EstimatorComparison(gradients, training)


def _check_batches(settings: dict[str, TrainConfig], images: int) -> None:
    """Refuse, before anything is written, a study one of whose runs would have no batch."""
    for estimator, config in settings.items():
        whole = uses_baseline(estimator)  # a baseline's batches are all full: the last is dropped
        if images < config.batch_size and (whole or images == 0):
            raise ConfigError(f"estimator {estimator!r} trains on full batches only, and there "
                              f"are fewer training images ({images}) than one batch of "
                              f"{config.batch_size}")  # fmt: skip


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
