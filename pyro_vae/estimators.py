"""The gradient-estimator switch: how the guide's sample site gets its gradient.

``reparam``
    The pathwise estimator (Kingma & Welling 2013): ``z = mu + sigma * eps`` with
    ``eps ~ N(0, I)``, so ``grad E_q[f(z)] = E_eps[grad f(mu + sigma * eps)]``. Pyro uses it
    for any guide distribution with ``has_rsample``; a Normal has it.
``reinforce``
    The score-function estimator (Williams 1992): ``grad E_q[f] = E_q[f grad log q]``. The
    guide's Normal is marked non-reparameterized (``has_rsample`` false on the base
    distribution, before ``.to_event``), so Pyro samples it without a gradient path and
    ``Trace_ELBO`` adds the score term. Under the data plate each image's own ELBO weights its
    own score term, not the batch sum.

    The flag is a class attribute of :class:`ScoreFunctionNormal` rather than the instance
    flag ``has_rsample_(False)``: Pyro's plates expand the distribution (a particle plate
    always does), ``expand`` makes a new instance that forgets the instance flag, and Pyro
    (1.9) then fails to copy it onto the ``Independent`` wrapper.

References: Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo Gradient Estimation in
Machine Learning".
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from pyro_vae.errors import ConfigError

__all__ = ["ESTIMATORS", "ScoreFunctionNormal", "guide_distribution", "is_reparameterized"]

ESTIMATORS = ("reparam", "reinforce")


class ScoreFunctionNormal(dist.Normal):
    """A Normal that Pyro differentiates by the score function only (no ``rsample`` path)."""

    has_rsample = False


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
    cls = dist.Normal if is_reparameterized(estimator) else ScoreFunctionNormal
    return cls(loc, scale).to_event(1)
