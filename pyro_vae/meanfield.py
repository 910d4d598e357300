"""``elbo-analytic-kl``'s ELBO: :class:`MeanFieldELBO`, Pyro's ``TraceMeanField_ELBO``
computing only the terms its estimate uses.

It overrides two of Pyro's private methods (``_get_trace`` and
``_differentiable_loss_particle``), which is worth it only while it buys at least 5% of the
default training step (``benchmarks/speed.py``: about 6% at batch 128, see
``docs/benchmarks.md``); ``tests/test_objectives.py`` checks its losses and gradients against
Pyro's class, and that the methods it overrides are still Pyro's, with the same signatures,
so that a change of Pyro under it fails a test rather than a run.
"""

from __future__ import annotations

import pyro.infer as infer
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan
from torch.distributions import kl_divergence

__all__ = ["MeanFieldELBO"]


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

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """Pyro's ``Trace_ELBO.loss_and_grads`` for one particle written out (without its
        generator of traces): the same loss, and the same backward pass, which runs only if
        the traces hold a param site and the loss has a gradient."""
        if self.num_particles != 1 or self.vectorize_particles or is_validation_enabled():
            return super().loss_and_grads(model, guide, *args, **kwargs)
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        loss, surrogate_loss = self._differentiable_loss_particle(model_trace, guide_trace)
        if getattr(surrogate_loss, "requires_grad", False) and any(
            site["type"] == "param" for trace in (model_trace, guide_trace)
            for site in trace.nodes.values()
        ):  # fmt: skip
            surrogate_loss.backward(retain_graph=self.retain_graph)
        warn_if_nan(loss, "loss")
        return loss

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        if is_validation_enabled():  # the traces were scored by Pyro's _get_trace
            return super()._differentiable_loss_particle(model_trace, guide_trace)
        elbo = None
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                elbo = _plus(elbo, _scaled_log_prob(site).sum())
                continue
            guide_site = guide_trace.nodes[name]
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:  # as Pyro's class: log p(z) - log q(z) at the sample
                term = _scaled_log_prob(site).sum() - _scaled_log_prob(guide_site).sum()
                elbo = _plus(elbo, term)
                continue
            kl = scale_and_mask(kl, guide_site["scale"], guide_site["mask"])
            if torch.is_tensor(kl):
                elbo = _plus(elbo, -kl.sum())
            else:
                elbo = _plus(elbo, -kl * guide_site["fn"].batch_shape.numel())
        for name, guide_site in guide_trace.nodes.items():  # auxiliary guide sites
            if guide_site["type"] == "sample" and not site_is_subsample(guide_site):
                if name not in model_trace.nodes:
                    elbo = _plus(elbo, -_scaled_log_prob(guide_site).sum())
        if elbo is None:
            elbo = torch.tensor(0.0)
        return -torch_item(elbo), -elbo


def _plus(total, term):
    """``total + term``, where ``None`` is an empty sum (no ``0.0 +`` node in the graph)."""
    return term if total is None else total + term


def _scaled_log_prob(site: dict) -> torch.Tensor:
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_prob, site["scale"], site["mask"])
