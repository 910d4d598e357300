"""The gradient-estimator switch: how the guide's sample site gets its gradient.

``reparam``
    The pathwise estimator (Kingma & Welling 2013): ``z = mu + sigma * eps`` with
    ``eps ~ N(0, I)``, so ``grad E_q[f(z)] = E_eps[grad f(mu + sigma * eps)]``. Pyro uses it
    for any guide distribution with ``has_rsample``; a Normal has it.
``reinforce``
    The score-function estimator (Williams 1992): ``grad E_q[f] = E_q[f grad log q]``. The
    guide's Normal is marked non-reparameterized (``has_rsample_(False)`` on the base
    distribution, before ``.to_event``) and Pyro's ``Trace_ELBO`` adds the score term.
    Under the data plate each image's own ELBO weights its own score term, not the batch sum.

References: Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo Gradient Estimation in
Machine Learning".
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from pyro_vae.errors import ConfigError

__all__ = ["ESTIMATORS", "guide_distribution", "is_reparameterized"]

ESTIMATORS = ("reparam", "reinforce")


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")


def is_reparameterized(estimator: str) -> bool:
    """Whether the estimator differentiates through the sample (pathwise)."""
    check_estimator(estimator)
    return estimator == "reparam"


def guide_distribution(
    loc: torch.Tensor, scale: torch.Tensor, estimator: str = "reparam"
) -> dist.TorchDistribution:
    """``N(loc, diag(scale^2))`` over the last dimension, set up for the given estimator."""
    base = dist.Normal(loc, scale)
    if not is_reparameterized(estimator):
        base.has_rsample_(False)
    return base.to_event(1)
