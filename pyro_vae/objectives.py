"""Training objectives: which Pyro ELBO class estimates which bound.

``elbo``
    ``Trace_ELBO``: ``E_q[log p(x, z) - log q(z|x)]`` by Monte Carlo, KL term included.
``elbo-analytic-kl``
    ``TraceMeanField_ELBO``: ``E_q[log p(x|z)] - KL(q(z|x) || p(z))`` with the closed-form
    Gaussian KL ``-1/2 sum(1 + log sigma^2 - mu^2 - sigma^2)`` (Kingma & Welling 2013, App. B).
    The same bound with less variance; the default.
``iwae``
    ``RenyiELBO(alpha=0)`` with ``K`` particles: ``E[log 1/K sum_k p(x, z_k) / q(z_k|x)]``, the
    importance-weighted bound of Burda et al. (2015), tighter than the ELBO for ``K > 1``.

Particles are vectorized (one batched pass for ``K > 1`` samples). Only ``elbo`` supports the
score-function estimators and ``stl``: Pyro's ``TraceMeanField_ELBO`` assumes a
reparameterized guide and uses the closed-form KL (which would bypass ``stl``'s stop-gradient
density), and its ``RenyiELBO`` has no score-function gradient for a guide site. With a
baseline estimator, ``elbo`` is estimated by ``TraceGraph_ELBO``, which implements baselines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyro
import pyro.infer as infer
import torch
from pyro import poutine

from pyro_vae.errors import ConfigError
from pyro_vae.estimators import is_reparameterized, uses_baseline

__all__ = [
    "OBJECTIVES",
    "check_objective",
    "log_importance_weights",
    "make_elbo",
    "scratch_param_store",
]

OBJECTIVES = ("elbo", "elbo-analytic-kl", "iwae")


def check_objective(
    objective: str, estimator: str = "reparam", num_particles: int = 1, jit: bool = False
) -> None:
    """Raise :class:`ConfigError` unless the combination can train."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if int(num_particles) < 1:
        raise ConfigError(f"the number of particles K must be at least 1, got {num_particles}")
    if estimator != "reparam" and objective != "elbo":
        why = (
            "its density must not be replaced by the closed-form KL or the IWAE weights"
            if is_reparameterized(estimator)
            else "Pyro's TraceMeanField_ELBO and RenyiELBO assume a reparameterized guide"
        )
        raise ConfigError(f"estimator {estimator!r} needs objective 'elbo' ({why})")
    if uses_baseline(estimator) and int(num_particles) != 1:
        raise ConfigError(f"estimator {estimator!r} takes one particle (K = 1)")
    if jit and uses_baseline(estimator):
        raise ConfigError(
            f"Pyro's JitTraceGraph_ELBO cannot trace the running-average baseline of estimator "
            f"{estimator!r}; drop --jit"
        )
    if jit and objective == "iwae":
        raise ConfigError("Pyro has no JIT-compiled RenyiELBO; drop --jit for objective 'iwae'")


def make_elbo(
    objective: str = "elbo-analytic-kl",
    estimator: str = "reparam",
    num_particles: int = 1,
    jit: bool = False,
) -> infer.ELBO:
    """The Pyro ELBO object for an objective.

    :param objective: one of :data:`OBJECTIVES`.
    :param estimator: the guide's estimator, checked for compatibility.
    :param num_particles: ``K``, samples per image (vectorized).
    :param jit: use Pyro's JIT-compiled variant (``JitTrace_ELBO``, ``JitTraceMeanField_ELBO``).
    """
    check_objective(objective, estimator, num_particles, jit)
    # One particle needs no particle plate: without it every site skips a broadcast.
    vectorize = int(num_particles) > 1
    kwargs = dict(
        num_particles=int(num_particles), vectorize_particles=vectorize, max_plate_nesting=1
    )
    if objective == "iwae":
        return infer.RenyiELBO(alpha=0.0, **kwargs)
    if uses_baseline(estimator):
        return infer.TraceGraph_ELBO(**kwargs)
    if jit:
        kwargs["ignore_jit_warnings"] = True
        cls = infer.JitTrace_ELBO if objective == "elbo" else infer.JitTraceMeanField_ELBO
    else:
        cls = infer.Trace_ELBO if objective == "elbo" else infer.TraceMeanField_ELBO
    return cls(**kwargs)


@contextmanager
def scratch_param_store() -> Iterator[None]:
    """Run with every current param visible, and drop whatever gets registered meanwhile.

    Evaluating a model and guide registers their modules in Pyro's global param store; this
    keeps that from leaking into later runs, while a guide whose ``pyro.param`` values were
    trained beforehand is still scored at its trained values.
    """
    store = pyro.get_param_store()
    with store.scope(store.get_state()):
        yield


def _vectorized(fn, num_particles: int):
    # What Pyro's ELBOs do with vectorize_particles=True: one extra plate, left of the data plate.
    def wrapped(*args, **kwargs):
        with pyro.plate("particles", num_particles, dim=-2):
            return fn(*args, **kwargs)

    return wrapped


def log_importance_weights(model, guide, x: torch.Tensor, num_particles: int = 1) -> torch.Tensor:
    """``log w_k = log p(x, z_k) - log q(z_k|x)`` with ``z_k ~ q(z|x)``, shape ``(K, B)``.

    Computed from Pyro traces of the given ``model`` and ``guide`` (each taking the batch ``x``
    and holding one ``pyro.plate`` over it), so it works for any such pair. Their mean over ``k``
    estimates the ELBO; ``logsumexp_k - log K`` is the IWAE bound (Burda et al. 2015).
    """
    if int(num_particles) < 1:
        raise ConfigError(f"the number of particles K must be at least 1, got {num_particles}")
    guide_trace = poutine.trace(_vectorized(guide, num_particles)).get_trace(x)
    replayed = poutine.replay(_vectorized(model, num_particles), trace=guide_trace)
    model_trace = poutine.trace(replayed).get_trace(x)
    shape = (num_particles, x.shape[0])
    log_w = x.new_zeros(shape)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample":
                log_w = log_w + sign * site["log_prob"].expand(shape)
    return log_w
