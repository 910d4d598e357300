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
``wake-sleep``
    The wake-sleep algorithm (Hinton et al. 1995), :class:`WakeSleep`: not a bound's gradient,
    but two phases a step, the decoder climbing ``log p(x, z)`` at ``z ~ q(z|x)`` and the
    encoder climbing ``log q(z|x)`` on dreams ``(z, x) ~ p(z) p(x|z)``. The loss it reports is
    the ELBO at the wake sample, so its training curve reads like the others'.

Particles are vectorized (one batched pass for ``K > 1`` samples). Only ``elbo`` supports the
score-function estimators and ``stl``: Pyro's ``TraceMeanField_ELBO`` assumes a
reparameterized guide and uses the closed-form KL (which would bypass ``stl``'s stop-gradient
density), and its ``RenyiELBO`` has no score-function gradient for a guide site. With a
baseline estimator, ``elbo`` is estimated by ``TraceGraph_ELBO``, which implements baselines.
"""

from __future__ import annotations

import pyro.infer as infer
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from pyro_vae.checks import is_whole, require_flag, require_positive
from pyro_vae.errors import ConfigError
from pyro_vae.estimators import is_reparameterized, uses_baseline

__all__ = [
    "OBJECTIVES",
    "MeanFieldELBO",
    "WakeSleep",
    "check_kl_weight",
    "check_objective",
    "kl_weight_at",
    "make_elbo",
]

OBJECTIVES = ("elbo", "elbo-analytic-kl", "iwae", "wake-sleep")


class MeanFieldELBO(infer.TraceMeanField_ELBO):
    """Pyro's ``TraceMeanField_ELBO``, computing only the terms its estimate uses.

    .. math::

        \\mathcal{L}(x) = \\mathbb{E}_{q(z|x)}[\\log p(x|z)]
            - \\mathrm{KL}(q(z|x) \\,\\|\\, p(z))

    with one sample of ``z`` and the closed-form KL of each latent site (a Monte Carlo
    ``log q - log p`` where ``torch.distributions`` has no closed form), from Pyro traces of the
    model and guide as in Pyro's class. Pyro's class also scores every latent site's value
    under the model and the guide (``compute_log_prob``, ``compute_score_parts``) and copies both
    traces to drop the plates' sites, although the closed-form KL uses none of it: on the
    default VAE at batch 128 that is a few percent of a training step (``benchmarks/speed.py``).
    With Pyro's validation on, every call is Pyro's class unchanged, with all its checks of
    the model and guide; the tests check that both give the same loss and gradients.
    """

    def _get_trace(self, model, guide, args, kwargs):
        if is_validation_enabled():
            return super()._get_trace(model, guide, args, kwargs)
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        if is_validation_enabled():  # the traces were scored by Pyro's _get_trace
            return super()._differentiable_loss_particle(model_trace, guide_trace)
        elbo = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                elbo = elbo + _scaled_log_prob(site).sum()
                continue
            guide_site = guide_trace.nodes[name]
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:  # as Pyro's class: log p(z) - log q(z) at the sample
                elbo = elbo + _scaled_log_prob(site).sum() - _scaled_log_prob(guide_site).sum()
                continue
            kl = scale_and_mask(kl, guide_site["scale"], guide_site["mask"])
            if torch.is_tensor(kl):
                elbo = elbo - kl.sum()
            else:
                elbo = elbo - kl * guide_site["fn"].batch_shape.numel()
        for name, guide_site in guide_trace.nodes.items():  # auxiliary guide sites
            if guide_site["type"] == "sample" and not site_is_subsample(guide_site):
                if name not in model_trace.nodes:
                    elbo = elbo - _scaled_log_prob(guide_site).sum()
        return -torch_item(elbo), -elbo


class WakeSleep(infer.ELBO):
    """The wake-sleep algorithm (Hinton, Dayan, Frey & Neal 1995), for continuous latents, on
    Pyro's traces of the model and guide.

    Each call of :meth:`loss_and_grads` runs both phases and leaves their gradients on the
    parameters, for one optimizer step:

    - *wake*: ``z ~ q(z|x)`` from a trace of the guide, its values detached (no gradient flows
      through the sample), and the model replayed on them; the gradient of ``-log p(x, z)``
      reaches the decoder (and a learned prior) only.
    - *sleep*: a dream ``(z', x') ~ p(z) p(x|z)`` from a trace of
      ``poutine.uncondition(model)``, detached, and the guide run on ``x'`` conditioned on
      ``z'``; the gradient of ``-log q(z'|x')`` reaches the encoder only.

    The model and the guide take the observations as their first argument, the value of the
    model's one observed site (the VAE's ``model(x)`` and ``guide(x)``): the sleep phase calls
    the guide on the dreamed ``x'`` in its place. Plates scale both phases as they scale an ELBO.

    The returned loss is ``-(log p(x, z) - log q(z|x))`` at the wake sample: minus a one-sample
    ELBO estimate, which is what wake-sleep's training curve reports (the gradients are not
    this quantity's).
    """

    def __init__(self) -> None:
        super().__init__(num_particles=1, max_plate_nesting=1)

    def _wake(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and not site["is_observed"]:
                site["value"] = site["value"].detach()
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        log_q = guide_trace.log_prob_sum(lambda name, site: not site_is_subsample(site))
        log_joint = model_trace.log_prob_sum(lambda name, site: not site_is_subsample(site))
        return model_trace, log_joint, log_q

    def _sleep(self, model, guide, model_trace, args, kwargs):
        observed = [name for name, site in model_trace.nodes.items()
                    if site["type"] == "sample" and site["is_observed"]]  # fmt: skip
        if len(observed) != 1:
            raise ConfigError(
                f"wake-sleep needs a model with one observed site (the images), found {observed}"
            )
        with torch.no_grad():
            dream = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
        latents = {name: site["value"].detach() for name, site in dream.nodes.items()
                   if site["type"] == "sample" and name not in observed
                   and not site_is_subsample(site)}  # fmt: skip
        x_dream = dream.nodes[observed[0]]["value"].detach()
        guide_trace = poutine.trace(poutine.condition(guide, data=latents)).get_trace(
            x_dream, *args[1:], **kwargs
        )
        return guide_trace.log_prob_sum(
            lambda name, site: name in latents and not site_is_subsample(site)
        )

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            _, log_joint, log_q = self._wake(model, guide, args, kwargs)
        return -torch_item(log_joint - log_q)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        model_trace, log_joint, log_q = self._wake(model, guide, args, kwargs)
        log_q_dream = self._sleep(model, guide, model_trace, args, kwargs)
        surrogate = -(log_joint + log_q_dream)
        if surrogate.requires_grad:
            surrogate.backward()
        return -torch_item(log_joint - log_q)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        raise NotImplementedError("wake-sleep follows two gradients, not one loss's")

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("wake-sleep runs its own phases (loss_and_grads)")


def _scaled_log_prob(site: dict) -> torch.Tensor:
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_prob, site["scale"], site["mask"])


def check_objective(
    objective: str, estimator: str = "reparam", num_particles: int = 1, jit: bool = False
) -> None:
    """Raise :class:`ConfigError` unless the combination can train."""
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if not is_whole(num_particles):
        raise ConfigError(f"num_particles must be a whole number, got {num_particles!r}")
    if num_particles < 1:
        raise ConfigError(f"the number of particles K must be at least 1, got {num_particles}")
    require_flag(jit, "jit")
    if objective == "wake-sleep":
        if estimator != "reparam":
            raise ConfigError(
                f"objective 'wake-sleep' takes no estimator (leave the default 'reparam'): its "
                f"gradients are the wake and sleep phases', not a gradient of the ELBO that "
                f"{estimator!r} would estimate"
            )
        if int(num_particles) != 1:
            raise ConfigError("objective 'wake-sleep' draws one sample a phase (K = 1)")
        if jit:
            raise ConfigError("Pyro has no JIT-compiled wake-sleep; drop --jit")
        return
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


def check_kl_weight(
    kl_weight: float, kl_warmup: int = 0, objective: str = "elbo-analytic-kl",
    estimator: str = "reparam",
) -> None:  # fmt: skip
    """Raise :class:`ConfigError` unless the KL weight (beta) and its warm-up can train.

    A weight other than 1 (a beta-VAE, or a warm-up's ramp) scales the latent site in the model
    and the guide (``poutine.scale``). The objective is then exactly
    ``E_q[log p(x|z)] - beta KL(q(z|x) || p(z))`` for ``elbo-analytic-kl`` (Pyro scales the
    closed-form KL by the guide site's scale) and for ``elbo`` with ``reparam`` or ``stl`` (both
    log densities are scaled). Refused: ``iwae``, whose log weights would become
    ``log p(x|z) + beta log p(z)/q(z|x)`` inside the log-mean-exp, a different bound rather
    than a weighted KL; and the score-function estimators, whose Pyro surrogate scales the
    score term ``log q(z|x)`` by beta as well, so the reconstruction's learning signal would be
    scaled by beta too.
    """
    require_positive(kl_weight, "kl_weight")
    if not is_whole(kl_warmup) or kl_warmup < 0:
        raise ConfigError(f"kl_warmup must be a whole number of epochs >= 0, got {kl_warmup!r}")
    if kl_weight == 1.0 and kl_warmup == 0:
        return
    what = "--kl-weight other than 1" if kl_warmup == 0 else "--kl-warmup"
    if objective == "wake-sleep":
        raise ConfigError(f"{what} does not apply to wake-sleep, which has no KL term to weight")
    if objective == "iwae":
        raise ConfigError(
            f"{what} needs objective 'elbo-analytic-kl' or 'elbo': the importance-weighted "
            "bound has no KL term to weight"
        )
    if not is_reparameterized(estimator):
        raise ConfigError(
            f"{what} needs estimator 'reparam' or 'stl': Pyro's score-function surrogate would "
            f"scale the whole learning signal of estimator {estimator!r} by the weight"
        )


def kl_weight_at(kl_weight: float, warmup_steps: int, step: int) -> float:
    """The KL weight of training step ``step`` (from 1): ``kl_weight`` after a linear ramp
    over the first ``warmup_steps`` steps (Bowman et al. 2016; Sonderby et al. 2016), from
    ``kl_weight / warmup_steps`` at step 1 (Pyro's ``poutine.scale`` wants a positive scale)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(kl_weight)
    return float(kl_weight) * step / warmup_steps


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
    if objective == "wake-sleep":
        return WakeSleep()
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
        cls = infer.Trace_ELBO if objective == "elbo" else MeanFieldELBO
    return cls(**kwargs)
