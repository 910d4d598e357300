"""Reading Pyro traces: the sample sites of a trace, its observed one, and a site's log
density, for the objectives and estimators that compute their own losses from traces
(:mod:`pyro_vae.objectives`, :mod:`pyro_vae.discrete`)."""

from __future__ import annotations

import pyro
import torch
from pyro.poutine.util import site_is_subsample

from pyro_vae.errors import ConfigError

__all__ = ["in_particles", "masked_log_prob", "observed_sites", "sample_sites"]

PARTICLES = "num_particles_vectorized"  # Pyro's own name for the plate of vectorized particles


def sample_sites(trace) -> list[dict]:
    return [site for site in trace.nodes.values()
            if site["type"] == "sample" and not site_is_subsample(site)]  # fmt: skip


def observed_sites(trace, conditioned=()) -> list[str]:
    """The names of the observed sites, less the ones ``conditioned`` on latent values."""
    observed = [name for name, site in trace.nodes.items()
                if site["type"] == "sample" and site["is_observed"]
                and name not in conditioned]  # fmt: skip
    if len(observed) != 1:
        raise ConfigError(
            f"this objective needs a model with one observed site (the images), found {observed}"
        )
    return observed


def masked_log_prob(site: dict) -> torch.Tensor:
    """A site's log density, unscaled (the weights are log-mean-exp'd), masked."""
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    if site["mask"] is not None:
        log_prob = log_prob.masked_fill(~site["mask"], 0.0)
    return log_prob


def in_particles(fn, size: int):
    """``fn`` run inside a plate of ``size`` particles at dim -2 (one plate of data inside)."""

    def wrapped(*args, **kwargs):
        with pyro.plate(PARTICLES, size, dim=-2):
            return fn(*args, **kwargs)

    return wrapped
