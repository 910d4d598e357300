"""Gradient estimates of the ELBO, drawn many times at fixed parameters, and their statistics.

For one VAE, one minibatch and one estimator, :func:`gradient_samples` draws ``N`` independent
single-sample estimates of ``grad_phi ELBO`` (encoder) and ``grad_theta ELBO`` (decoder), each
the gradient of the batch-mean ELBO in nats per image. :func:`gradient_statistics` turns them
into the figures the estimator study reports: total variance, signal-to-noise ratio, and
agreement with a reference mean.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch

from pyro_vae.estimators import check_estimator, uses_baseline
from pyro_vae.isolation import isolated
from pyro_vae.model import VAE
from pyro_vae.networks import Baseline
from pyro_vae.objectives import make_elbo

__all__ = ["GradientSamples", "gradient_samples", "gradient_statistics"]


@dataclass
class GradientSamples:
    """``N`` gradient estimates, flattened per network: ``(N, P_encoder)``, ``(N, P_decoder)``."""

    estimator: str
    encoder: torch.Tensor
    decoder: torch.Tensor
    seconds_per_estimate: float


def _flat_grad(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


def gradient_samples(
    vae: VAE,
    x: torch.Tensor,
    estimator: str,
    num_samples: int = 500,
    warmup: int = 200,
    baseline_learning_rate: float = 1e-2,
    num_particles: int = 1,
    temperature: float = 1.0,
) -> GradientSamples:
    """Draw ``num_samples`` single-sample ELBO gradients for ``x`` at ``vae``'s parameters.

    The VAE is copied and switched to ``estimator``; its encoder and decoder are never
    updated. Every draw sees the batch's images in a fresh order, as training does: Pyro's
    decaying-average baseline keeps one average per batch position, and on a batch in fixed
    order it would become a per-image baseline that training never has. A baseline estimator
    first runs ``warmup`` steps in which only its baseline
    learns (the decaying average, or the baseline network with Adam at
    ``baseline_learning_rate``), so that it is measured with a baseline fitted to these
    parameters rather than an untrained one.

    For a discrete latent, the estimators of :mod:`pyro_vae.discrete` take ``num_particles``
    draws (``K`` of ``reinforce-loo`` and ``vimco``; VIMCO's estimates are of the
    ``K``-sample bound's gradient) and the relaxations' ``temperature``.
    """
    check_estimator(estimator)
    vae = copy.deepcopy(vae)
    vae.estimator = estimator
    if estimator == "reinforce-nn-baseline" and vae.baseline is None:
        vae.baseline = Baseline(vae.data_dim, event_dims=len(vae.event_shape)).to(x.device)
    objective = "iwae" if estimator == "vimco" else "elbo"
    elbo = make_elbo(objective, estimator, num_particles, temperature=temperature)
    networks = [vae.encoder, vae.decoder]
    with isolated(params="fresh", rng="continue"):
        if uses_baseline(estimator):
            params = list(vae.baseline.parameters()) if vae.baseline is not None else []
            optim = torch.optim.Adam(params, lr=baseline_learning_rate) if params else None
            for _ in range(warmup):
                vae.zero_grad(set_to_none=True)
                elbo.loss_and_grads(vae.model, vae.guide, x[torch.randperm(len(x))])
                if optim is not None:
                    optim.step()
        encoder, decoder = [], []
        started = time.perf_counter()
        for _ in range(num_samples):
            vae.zero_grad(set_to_none=True)
            elbo.loss_and_grads(vae.model, vae.guide, x[torch.randperm(len(x))])  # d(-sum ELBO)
            encoder.append(-_flat_grad(networks[0]) / x.shape[0])
            decoder.append(-_flat_grad(networks[1]) / x.shape[0])
        seconds = (time.perf_counter() - started) / num_samples
    return GradientSamples(estimator, torch.stack(encoder), torch.stack(decoder), seconds)


def gradient_statistics(samples: torch.Tensor, reference: torch.Tensor | None = None) -> dict:
    """Figures for ``N`` gradient estimates ``(N, P)``.

    - ``total_variance``: ``sum_i Var[g_i]``, the trace of the estimator's covariance;
    - ``snr``: ``||E g|| / sqrt(total_variance)``, the signal-to-noise ratio of the whole
      gradient vector, and ``snr_median``: the median over parameters of ``|E g_i| / sd g_i``
      (Rainforth et al. 2018);
    - ``cosine`` and ``relative_error`` of the mean against ``reference`` (a mean from many
      more samples), when given.
    """
    samples = samples.double()
    mean, var = samples.mean(0), samples.var(0)
    total_variance = var.sum().item()
    nonzero = var > 0
    stats = {
        "num_samples": samples.shape[0],
        "num_parameters": samples.shape[1],
        "mean_norm": mean.norm().item(),
        "total_variance": total_variance,
        "snr": mean.norm().item() / math.sqrt(total_variance) if total_variance > 0 else math.inf,
        "snr_median": (mean.abs()[nonzero] / var[nonzero].sqrt()).median().item()
        if nonzero.any()
        else math.inf,
    }
    if reference is not None:
        reference = reference.double()
        stats["cosine"] = torch.nn.functional.cosine_similarity(mean, reference, dim=0).item()
        stats["relative_error"] = ((mean - reference).norm() / reference.norm()).item()
    return stats
