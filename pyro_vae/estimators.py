"""The gradient-estimator switch: how the guide's sample site gets its gradient.

A discrete latent (Bernoulli, categorical) has its own list, :data:`DISCRETE_ESTIMATORS`:
the three score-function ones below, and those of :mod:`pyro_vae.discrete` (leave-one-out,
VIMCO, ARM, DisARM, Gumbel-softmax, straight-through, exact enumeration).

Every estimator targets the same gradient, ``grad E_q[f(z)]`` with
``f(z) = log p(x, z) - log q(z|x)``; they differ in variance and cost.

``reparam``
    The pathwise estimator (Kingma & Welling 2013): ``z = mu + sigma * eps`` with
    ``eps ~ N(0, I)``, so ``grad E_q[f] = E_eps[grad f(mu + sigma * eps)]``. Pyro uses it for
    any guide distribution with ``has_rsample``; a Normal has it.
``reinforce``
    The score-function estimator (Williams 1992): ``grad E_q[f] = E_q[f grad log q]``. The
    guide's Normal is non-reparameterized (``has_rsample`` false on the base distribution,
    before ``.to_event``), so Pyro samples it without a gradient path and ``Trace_ELBO`` adds
    the surrogate term ``log q(z|x) * f(z).detach()``. Under the data plate each image's own
    ``f`` weights its own score term, not the batch sum.
``reinforce-baseline``
    ``E_q[(f - b) grad log q]`` with ``b`` a decaying average of past values of ``f``
    (``TraceGraph_ELBO`` with ``use_decaying_avg_baseline``). Pyro keeps one average per
    position in the batch, so batches must all have the same size: the last, smaller batch
    of an epoch is dropped (for both baseline estimators).
``reinforce-nn-baseline``
    The same with ``b = a + b_psi(x)``: the decaying average ``a`` plus an input-dependent
    baseline network that learns what the average leaves (centering plus an input-dependent
    baseline, as in Mnih & Gregor's NVIL, 2014). ``TraceGraph_ELBO`` trains ``b_psi`` on the
    squared error ``(f - a - b_psi(x))^2``, with its own learning rate. Without the average
    the network would first have to learn the scale of ``f`` (hundreds of nats) in small
    Adam steps.
``stl``
    "Sticking the landing" (Roeder, Wu & Duvenaud 2017): the pathwise estimator with the
    score term of ``log q`` removed, i.e. ``log q(z|x)`` evaluated at stop-gradient
    parameters. The removed term has expectation zero, so the estimator stays unbiased, and
    its variance vanishes as ``q`` approaches the true posterior.

The non-reparameterized flag is a class attribute of :class:`ScoreFunctionNormal` rather than
the instance flag ``has_rsample_(False)``: Pyro's plates expand a site's distribution (a
particle plate always does), ``expand`` makes a new instance that forgets the instance flag,
and Pyro (1.9) then fails to copy it onto the ``Independent`` wrapper.

References: Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo Gradient Estimation in
Machine Learning"; Roeder, Wu & Duvenaud (2017), "Sticking the Landing".
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from pyro_vae.checks import is_real, require_choice
from pyro_vae.errors import ConfigError
from pyro_vae.sphere import PowerSpherical

__all__ = [
    "CONTINUOUS_ESTIMATORS",
    "DISCRETE_ESTIMATORS",
    "RELAXED",
    "ESTIMATORS",
    "ScoreFunctionNormal",
    "ScoreFunctionPowerSpherical",
    "StickingTheLandingNormal",
    "StickingTheLandingPowerSpherical",
    "baseline_options",
    "is_reparameterized",
    "uses_baseline",
]

ESTIMATORS = (
    "reparam", "reinforce", "reinforce-baseline", "reinforce-nn-baseline", "stl",
    "reinforce-loo", "vimco", "arm", "disarm", "gumbel", "straight-through", "enumerate",
)  # fmt: skip
#: the estimators of a continuous latent (Gaussian, hyperspherical)
CONTINUOUS_ESTIMATORS = ESTIMATORS[:5]
#: the estimators of a discrete latent (:mod:`pyro_vae.discrete`); ``arm`` and ``disarm`` for
#: a Bernoulli one only
DISCRETE_ESTIMATORS = (
    "reinforce", "reinforce-baseline", "reinforce-nn-baseline", "reinforce-loo", "vimco", "arm",
    "disarm", "gumbel", "straight-through", "enumerate",
)  # fmt: skip
#: the estimators that relax a discrete latent (biased, with a temperature)
RELAXED = ("gumbel", "straight-through")
#: the discrete estimators written as ELBO classes of pyro_vae.discrete, with the draws they take
DRAWS = {"reinforce-loo": "K >= 2", "vimco": "K >= 2", "arm": "one antithetic pair",
         "disarm": "one antithetic pair", "gumbel": "K = 1", "straight-through": "K = 1",
         "enumerate": "every code"}  # fmt: skip


class ScoreFunctionNormal(dist.Normal):
    """A Normal that Pyro differentiates by the score function only (no ``rsample`` path)."""

    has_rsample = False


class StickingTheLandingNormal(dist.Normal):
    """A reparameterized Normal whose ``log_prob`` sees its parameters as constants.

    Samples keep their pathwise gradient ``z = loc + scale * eps``; the density is evaluated at
    ``loc.detach()``, ``scale.detach()``, which drops the score term ``d log q / d phi``.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dist.Normal(self.loc.detach(), self.scale.detach()).log_prob(value)


class ScoreFunctionPowerSpherical(PowerSpherical):
    """A Power Spherical distribution that Pyro differentiates by the score function only."""

    has_rsample = False

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return super().rsample(sample_shape)


class StickingTheLandingPowerSpherical(PowerSpherical):
    """A reparameterized Power Spherical distribution whose ``log_prob`` sees its parameters
    as constants (sticking the landing on the sphere)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return PowerSpherical(self.loc.detach(), self.concentration.detach()).log_prob(value)


def check_estimator(estimator: str, baseline_beta: float | None = None) -> None:
    """Raise :class:`ConfigError` for an unknown estimator, or a decay ``baseline_beta`` of the
    running-average baseline outside ``[0, 1)``."""
    require_choice(estimator, "estimator", ESTIMATORS)
    if baseline_beta is not None:
        if not is_real(baseline_beta):
            raise ConfigError(f"baseline_beta must be a number, got {baseline_beta!r}")
        if not 0 <= baseline_beta < 1:
            raise ConfigError(f"baseline beta must be in [0, 1), got {baseline_beta}")


def is_reparameterized(estimator: str) -> bool:
    """Whether the estimator differentiates through the sample (pathwise)."""
    check_estimator(estimator)
    return estimator in ("reparam", "stl")


def uses_baseline(estimator: str) -> bool:
    """Whether the estimator needs Pyro's ``TraceGraph_ELBO`` (the baseline variants)."""
    check_estimator(estimator)
    return estimator in ("reinforce-baseline", "reinforce-nn-baseline")


def baseline_options(
    estimator: str,
    x: torch.Tensor | None = None,
    baseline_net: torch.nn.Module | None = None,
    baseline_beta: float = 0.9,
) -> dict:
    """The ``infer`` dict of the guide's sample site: Pyro's baseline options, if any."""
    if estimator == "reinforce-baseline":
        return {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": baseline_beta}}
    if estimator == "reinforce-nn-baseline":
        return {
            "baseline": {
                "use_decaying_avg_baseline": True,
                "baseline_beta": baseline_beta,
                "nn_baseline": baseline_net,
                "nn_baseline_input": x,
            }
        }
    return {}
