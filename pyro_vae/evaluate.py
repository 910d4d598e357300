"""Evaluation in nats per image: test ELBO, importance-sampled log-likelihood, and diagnostics.

Signs are in the names: ``test_elbo`` and ``log_likelihood`` are log densities (negative for
binary images, higher is better); ``nll``, ``kl`` and ``reconstruction_nll`` are positive costs
(lower is better).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence
from tqdm.auto import tqdm

from pyro_vae.cvae import ConditionalVAE
from pyro_vae.data import check_support
from pyro_vae.errors import ConfigError, DataError, NumericalError
from pyro_vae.isolation import check_seed, isolated
from pyro_vae.labels import accuracy, check_labels
from pyro_vae.m2 import SemiSupervisedVAE
from pyro_vae.model import VAE

__all__ = [
    "ACTIVE_UNIT_THRESHOLD",
    "Evaluation",
    "check_images",
    "evaluate",
    "importance_sampled_log_likelihood",
    "kl_per_dimension",
    "log_importance_weights",
]

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2015): unit u is active if Cov_x(E_q[z_u]) > 0.01
# Particles x images decoded at once. On the CPU, 13 MB tensors (D = 784) are reused by the
# allocator, while 200 MB ones are mapped afresh and page-faulted in on every chunk: 2**16 rows
# made the estimate 1.5 times slower and 20 times bigger in memory (benchmarks/
# log_likelihood.py). 2**11 and 2**12 rows are equally fast on 2 CPU cores, 2**10 and 2**13
# slower (benchmarks/ll_chunk_sizes.py). A GPU wants big chunks.
MAX_ROWS = {"cpu": 2**12, "cuda": 2**16}
# The guide draws the particles of this many model chunks in one pass, so the encoder runs once
# per GUIDE_CHUNKS chunks rather than once per chunk (its latents are small: Z values a row).
GUIDE_CHUNKS = 16


def _vectorized(fn, num_particles: int):
    # What Pyro's ELBOs do with vectorize_particles=True: one extra plate, left of the data plate.
    def wrapped(*args, **kwargs):
        with pyro.plate("particles", num_particles, dim=-2):
            return fn(*args, **kwargs)

    return wrapped


def _log_density(trace: poutine.Trace, shape: tuple[int, int]) -> torch.Tensor:
    """The sum of a trace's sample sites' log densities, ``shape`` ``(K, B)``."""
    trace.compute_log_prob()
    total = None
    for site in trace.nodes.values():
        if site["type"] == "sample":
            log_prob = site["log_prob"].expand(shape)
            total = log_prob if total is None else total + log_prob
    return total


def _validation(as_the_caller_has_it: bool):
    return contextlib.nullcontext() if as_the_caller_has_it else pyro.validation_enabled(False)


def _guide_trace(guide, x: torch.Tensor, num_particles: int, *c) -> poutine.Trace:
    return poutine.trace(_vectorized(guide, num_particles)).get_trace(x, *c)


def _particles(guide_trace: poutine.Trace, start: int, count: int) -> poutine.Trace:
    """The guide's latent sample sites with particles ``start:start + count`` of each value
    (the particle plate's dimension is -2 of each site's batch shape), for
    ``poutine.replay``. The plates' own subsample sites are left out: the model opens its own."""
    part = poutine.Trace()
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        value, batch_shape = site["value"], site["fn"].batch_shape
        if len(batch_shape) >= 2:  # else the same value for every particle
            value = value.narrow(value.dim() - len(site["fn"].event_shape) - 2, start, count)
        part.add_node(name, **{**site, "value": value})
    return part


def _model_log_density(model, part: poutine.Trace, x: torch.Tensor, count: int, *c) -> torch.Tensor:
    replayed = poutine.replay(_vectorized(model, count), trace=part)
    return _log_density(poutine.trace(replayed).get_trace(x, *c), (count, x.shape[0]))


def log_importance_weights(
    model, guide, x: torch.Tensor, num_particles: int = 1, conditions: torch.Tensor | None = None
) -> torch.Tensor:
    """``log w_k = log p(x, z_k) - log q(z_k|x)`` with ``z_k ~ q(z|x)``, shape ``(K, B)``.

    Computed from Pyro traces of the given ``model`` and ``guide`` (each taking the batch ``x``
    and holding one ``pyro.plate`` over it), so it works for any such pair. Their mean over ``k``
    estimates the ELBO; ``logsumexp_k - log K`` is the IWAE bound (Burda et al. 2015). Draws
    from the current RNG streams and registers the networks in the current param store: wrap
    it in :func:`pyro_vae.isolation.isolated` to keep the caller's. ``conditions``: a second
    argument of the model and guide (a label-conditioned CVAE's labels).
    """
    if int(num_particles) < 1:
        raise ConfigError(f"the number of particles K must be at least 1, got {num_particles}")
    c = () if conditions is None else (conditions,)  # a second argument of model and guide
    guide_trace = _guide_trace(guide, x, num_particles, *c)
    part = _particles(guide_trace, 0, num_particles)
    log_q = _log_density(guide_trace, (num_particles, x.shape[0]))
    return _model_log_density(model, part, x, num_particles, *c) - log_q


@torch.no_grad()
def importance_sampled_log_likelihood(
    model,
    guide,
    images: torch.Tensor,
    num_particles: int = 1000,
    batch_size: int = 100,
    max_rows: int | None = None,
    progress: bool = False,
    conditions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``log p(x)`` estimates by importance sampling from the guide, and ELBOs.

    .. math::

        \\log p(x) \\approx \\log \\frac{1}{K} \\sum_{k=1}^K \\frac{p(x, z_k)}{q(z_k|x)},
        \\qquad z_k \\sim q(z|x)

    a stochastic lower bound that tightens as ``K`` grows (Burda et al. 2015, the IWAE bound).
    Particles are drawn in vectorized chunks of at most ``max_rows`` (particles x images;
    default :data:`MAX_ROWS` for the images' device) and combined with a ``logsumexp``, so
    ``K = 5000`` needs no more memory than ``K = 50``. The 10,000 MNIST test images at
    ``K = 5000`` take four to eight minutes on two CPU cores for the default 784-400-20 VAE
    (1.06 times a plain PyTorch loop on 2000 images; ``benchmarks/log_likelihood.py``).

    The particles are drawn from the caller's RNG streams (as ``pyro.sample`` draws); the
    caller's param store is seen but not added to. :func:`evaluate` seeds and restores the RNGs.

    :param progress: show a progress bar on stderr.
    :param conditions: a second argument of the model and guide, one an image (a
        label-conditioned CVAE's labels: the estimate is then of ``log p(x|c)``).
    :returns: ``(log_likelihood, elbo)``, each ``(N,)`` float64 nats; ``elbo`` is the mean of the
        same ``K`` log weights, the Monte Carlo ELBO.
    """
    _check_count(num_particles, "the number of particles K")
    _check_count(batch_size, "the batch size")
    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"images must be a torch.Tensor of shape (N, ...), got {shape}")
    if not images.is_floating_point():
        raise DataError(f"images must be floating point in [0, 1], got {images.dtype}")
    if len(images) == 0:
        raise DataError("no images to evaluate")
    if max_rows is None:
        max_rows = MAX_ROWS["cuda" if images.is_cuda else "cpu"]
    rows = max(1, min(batch_size, len(images)))
    chunk = max(1, min(num_particles, max_rows // rows))  # particles decoded at once
    # particles drawn from the guide at once: the encoder runs once for GUIDE_CHUNKS chunks
    guide_chunk = min(num_particles, chunk * GUIDE_CHUNKS)
    log_likelihoods, elbos = [], []
    bar = tqdm(
        total=len(images),
        desc=f"log p(x), K = {num_particles}",
        unit="image",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )
    with isolated(params="inherit", rng="continue"), bar:
        split = [] if conditions is None else [conditions.split(batch_size)]
        for x, *c in zip(images.split(batch_size), *split, strict=True):
            # a running logsumexp: memory does not grow with K (a list of the chunks' did, by
            # K / chunk tensors: gigabytes at K = 10^8)
            lse = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
            total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            for first in range(0, num_particles, guide_chunk):
                drawn = min(guide_chunk, num_particles - first)
                # Pyro's validation as the caller has it for the first model chunk of a batch:
                # it checks the images against the likelihood's support. The other chunks score
                # the same images with new draws: checking them again is one more pass.
                with _validation(first == 0):
                    guide_trace = _guide_trace(guide, x, drawn, *c)
                    log_q = _log_density(guide_trace, (drawn, x.shape[0]))  # (drawn, B)
                for start in range(0, drawn, chunk):
                    k = min(chunk, drawn - start)
                    part = _particles(guide_trace, start, k)
                    with _validation(first == 0 and start == 0):
                        log_p = _model_log_density(model, part, x, k, *c)  # (k, B)
                    log_w = (log_p - log_q[start : start + k]).double()
                    lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=0))
                    total += log_w.sum(0)
            log_likelihoods.append(lse - math.log(num_particles))
            elbos.append(total / num_particles)
            bar.update(x.shape[0])
    return torch.cat(log_likelihoods).cpu(), torch.cat(elbos).cpu()


def kl_per_dimension(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``KL(N(loc, scale^2) || N(0, 1))`` for each coordinate, ``(..., Z)``.

    The closed form of Kingma & Welling (2013), Appendix B:
    ``-1/2 (1 + log sigma^2 - mu^2 - sigma^2)``.
    """
    return -0.5 * (1 + 2 * scale.log() - loc.pow(2) - scale.pow(2))


def _kl(vae: VAE, x, z, loc, scale) -> torch.Tensor:
    """``KL(q(z|x) || p(z))`` for each image: the closed form where torch has one (the
    hyperspherical prior), else the one-sample estimate ``log q(z|x) - log p(z)`` at ``z``."""
    q = vae.latent.guide(loc, scale, "reparam")
    p = vae.prior_distribution()
    try:
        return kl_divergence(q, p.expand(q.batch_shape))
    except NotImplementedError:
        return q.log_prob(z) - p.log_prob(z)


def _stderr(values: torch.Tensor) -> float | None:
    return (values.std() / math.sqrt(len(values))).item() if len(values) > 1 else None


def _check_count(value, what: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{what} must be a whole number of at least 1, got {value!r}")


def check_images(vae: VAE, images, what: str = "the images") -> torch.Tensor:
    """``images`` as a float tensor ``(N, *vae.event_shape)`` on the VAE's device, or a
    :class:`DataError` that says what is wrong: not a tensor, the wrong shape or dtype, none at
    all, values the likelihood cannot score."""
    if not isinstance(images, torch.Tensor):
        raise DataError(f"{what} must be a torch.Tensor, got {type(images).__name__}")
    event = tuple(vae.event_shape)
    if images.dim() < 1 or tuple(images.shape[1:]) != event:
        fits = images.dim() > 1 and math.prod(images.shape[1:]) == math.prod(event)
        if fits and len(event) == 1:
            hint = "; flatten them with images.reshape(len(images), -1)"
        elif fits:
            hint = f"; reshape them with images.reshape(len(images), {', '.join(map(str, event))})"
        else:
            hint = ""
        shape = ", ".join(map(str, ("N", *event)))
        raise DataError(f"{what} must have shape ({shape}), got {tuple(images.shape)}{hint}")
    if not images.is_floating_point():
        raise DataError(
            f"{what} must be floating point in [0, 1], got {images.dtype} (divide 8-bit pixels "
            "by 255)"
        )
    if len(images) == 0:
        raise DataError(f"{what}: none to evaluate")
    check_support(images, vae.likelihood, what)
    parameter = next(vae.parameters())
    return images.to(device=parameter.device, dtype=parameter.dtype)


@dataclass
class Evaluation:
    """Test-set figures in nats per image (see the module docstring for the signs)."""

    num_images: int
    num_particles: int
    test_elbo: float  # E_q[log p(x,z) - log q(z|x)], from the same K samples
    test_elbo_stderr: float | None  # standard error of test_elbo over images (None for one)
    log_likelihood: float  # importance-sampled log p(x) with K samples
    log_likelihood_stderr: float | None
    nll: float  # -log_likelihood
    reconstruction_nll: float  # -E_q[log p(x|z)], one sample per image
    kl: float  # KL(q(z|x) || p(z)): closed form, or one sample where none exists
    kl_per_dim: list[float]  # for the normal prior (empty for the others)
    active_units: int  # Burda et al. (2015): Cov_x(E_q[z_u]) > 0.01
    # M2's: its classifier's accuracy on labelled images, and the label's KL(q(y|x) || p(y))
    accuracy: float | None = None
    label_kl: float | None = None
    # a quadrant-completion CVAE's baseline network: its cross-entropy of the hidden pixels
    # (for a CVAE, log_likelihood is log p(x|c): of the hidden pixels given the visible ones)
    baseline_nll: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
@torch.no_grad()
def outputs_finite(vae: VAE, x: torch.Tensor) -> bool:
    """Whether the parameters, and the networks' outputs on ``x``, are all finite numbers
    (networks that fail on ``x`` count as finite: their error is not an overflow)."""
    if not all(torch.isfinite(p).all() for p in vae.parameters()):
        return False
    try:
        for part in x.split(1000):
            outputs = vae.network_outputs(part)
            if not all(torch.isfinite(t).all() for t in outputs):
                return False
    except Exception:
        return True
    return True


@contextlib.contextmanager
def _overflow_is_numerical(vae: VAE, images: torch.Tensor) -> Iterator[None]:
    """Networks whose outputs overflow on the images (finite weights too large) fail inside a
    distribution's argument check: that is :class:`NumericalError`, not a bug."""
    try:
        yield
    except (ValueError, RuntimeError):
        if outputs_finite(vae, images):
            raise
        raise NumericalError(
            "the model's networks give NaN or infinite outputs on these images (its weights "
            "are finite but too large); nothing to evaluate"
        ) from None


def _split_terms(vae: VAE, images: torch.Tensor, conditions=None) -> tuple[torch.Tensor, ...]:
    """For each image, from one draw of the guide: ``E_q[z]`` (whose spread over the images
    counts the active units), ``log p(x|z)`` and the KL (per dimension for the normal prior,
    whole otherwise), in float64."""
    locs, recon, kls = [], [], []
    parts = images.split(1000)
    split = [None] * len(parts) if conditions is None else conditions.split(1000)
    for x, c in zip(parts, split, strict=True):
        if isinstance(vae, ConditionalVAE):  # the KL from p(z|c), a network's
            loc, log_lik, kl = vae.evaluation_terms(x, c)
            locs.append(loc), recon.append(log_lik), kls.append(kl)
            continue
        if isinstance(vae, SemiSupervisedVAE):  # the label's KL after the style's
            loc, log_lik, kl_z, kl_y = vae.evaluation_terms(x)
            locs.append(loc), recon.append(log_lik), kls.append(torch.cat([kl_z, kl_y[:, None]], 1))
            continue
        loc, scale = vae.encode(x)
        z, mean = vae.latent.draw_and_mean(loc, scale)
        recon.append(vae.likelihood_distribution(z).log_prob(x))
        if vae.prior.kl_by_dimension:
            kls.append(kl_per_dimension(loc, scale))
        else:
            kls.append(_kl(vae, x, z, loc, scale)[:, None])
        locs.append(mean)
    return torch.cat(locs).double(), torch.cat(recon), torch.cat(kls).double()


def _checked_labels(vae: VAE, images: torch.Tensor, labels) -> torch.Tensor | None:
    """The labels an M2 model's accuracy is of, or a label-conditioned CVAE's conditions."""
    cvae = isinstance(vae, ConditionalVAE) and vae.labelled
    if labels is None:
        if cvae:
            raise ConfigError("a label-conditioned CVAE scores images given their labels: "
                              "give labels")  # fmt: skip
        return None
    if not (cvae or isinstance(vae, SemiSupervisedVAE)):
        raise ConfigError("labels are for an M2 model's accuracy or a label-conditioned CVAE; "
                          "this VAE takes none")  # fmt: skip
    labels = check_labels(labels, len(images), "the labels")
    if len(labels) and int(labels.max()) >= vae.classes:
        raise DataError(f"the labels go up to {int(labels.max())}; the model has "
                        f"{vae.classes} classes")  # fmt: skip
    return labels.to(images.device)


def _baseline_nll(vae: VAE, images: torch.Tensor) -> float | None:
    if not isinstance(vae, ConditionalVAE) or vae.labelled:
        return None
    return torch.cat([vae.baseline_nll(x) for x in images.split(1000)]).double().mean().item()


def evaluate(
    vae: VAE,
    images: torch.Tensor,
    num_particles: int = 1000,
    batch_size: int = 100,
    seed: int = 0,
    progress: bool = False,
    labels: torch.Tensor | None = None,
) -> Evaluation:
    """Evaluate a VAE on test images ``(N, D)`` already binarized as in training.

    The same ``seed`` gives the same figures; the caller's global RNGs are left as they were.

    :param num_particles: ``K``, importance samples per image for ``log p(x)`` and the ELBO.
    :param progress: show a progress bar on stderr.
    :param labels: the images' class indices, for an M2 model's accuracy; a label-conditioned
        CVAE's conditions (which it needs).
    :raises DataError: images of the wrong type, shape or dtype, none, or outside the
        likelihood's support.
    :raises ConfigError: ``num_particles``, ``batch_size`` or ``seed`` out of range.
    :raises NumericalError: a figure came out NaN or infinite (the model's parameters hold
        NaN, or the likelihood overflowed).
    """
    if not isinstance(vae, VAE):
        raise ConfigError(f"evaluate takes a pyro_vae.VAE, got {type(vae).__name__}")
    images = check_images(vae, images)
    if not all(torch.isfinite(p).all() for p in vae.parameters()):
        raise NumericalError("the model's parameters hold NaN or infinity; nothing to evaluate")
    _check_count(num_particles, "the number of particles K")
    _check_count(batch_size, "the batch size")
    seed = check_seed(seed)
    labels = _checked_labels(vae, images, labels)
    conditions = labels if isinstance(vae, ConditionalVAE) else None
    training = vae.training
    vae.eval()  # batch statistics and dropout off: each image is scored on its own
    try:
        with isolated(seed, params="inherit"), _overflow_is_numerical(vae, images):
            log_px, elbo = importance_sampled_log_likelihood(
                vae.model,
                vae.guide,
                images,
                num_particles,
                batch_size,
                progress=progress,
                conditions=conditions,
            )
            locs, recon, kls = _split_terms(vae, images, conditions)
            baseline_nll = _baseline_nll(vae, images)
    finally:
        vae.train(training)
    kl_dims = kls.mean(0)
    m2 = isinstance(vae, SemiSupervisedVAE)
    label_kl, kl_dims = (kl_dims[-1].item(), kl_dims[:-1]) if m2 else (None, kl_dims)
    n = len(images)
    result = Evaluation(
        num_images=n,
        num_particles=int(num_particles),
        test_elbo=elbo.mean().item(),
        test_elbo_stderr=_stderr(elbo),
        log_likelihood=log_px.mean().item(),
        log_likelihood_stderr=_stderr(log_px),
        nll=-log_px.mean().item(),
        reconstruction_nll=-recon.double().mean().item(),
        kl=kl_dims.sum().item() + (label_kl or 0.0),
        kl_per_dim=kl_dims.tolist() if vae.prior.kl_by_dimension else [],
        active_units=int((vae.latent.units(locs.var(0)) > ACTIVE_UNIT_THRESHOLD).sum())
        if n > 1
        else 0,
        accuracy=accuracy(vae, images, labels),  # M2's classifier; None for the others
        label_kl=label_kl,
        baseline_nll=baseline_nll,
    )
    figures = ("test_elbo", "log_likelihood", "reconstruction_nll", "kl")
    bad = [name for name in figures if not math.isfinite(getattr(result, name))]
    if bad:
        raise NumericalError(
            f"the evaluation gave non-finite {', '.join(bad)}: the model's parameters hold NaN "
            "or infinity, or its likelihood overflows on these images"
        )
    return result
