r"""Discrete latents: their distributions, and the gradient estimators Pyro does not have.

A discrete ``z`` has no pathwise gradient: ``E_q[f(z)]`` is a sum over codes, and a code moves
in jumps. The estimators behind ``--estimator`` for a Bernoulli or categorical latent:

``reinforce``, ``reinforce-baseline``, ``reinforce-nn-baseline``
    Pyro's ``Trace_ELBO`` and ``TraceGraph_ELBO`` on the guide's Bernoulli or one-hot
    categorical site, as for a continuous latent (:mod:`pyro_vae.estimators`): the score
    function, with a running-average baseline, and with NVIL's input-dependent one (Mnih &
    Gregor 2014).
``reinforce-loo``
    :class:`LeaveOneOutELBO`: ``K`` draws an image, each draw's score weighted by its
    ``f_k = log p(x, z_k) - log q(z_k|x)`` less the mean of the other draws' (Kool, van Hoof &
    Welling 2019; Mnih & Rezende 2016, eq. 5).
``vimco``
    :class:`VIMCO`: the ``K``-sample importance-weighted bound
    ``L = log 1/K sum_k w_k`` with a per-draw learning signal ``L - L_{-k}``, where ``L_{-k}``
    puts the geometric mean of the other weights in place of ``w_k`` (Mnih & Rezende 2016).
``arm``, ``disarm``
    :class:`ARM`, Bernoulli latents only: two antithetic codes ``b = 1[u < sigma(a)]`` and
    ``b~ = 1[1 - u < sigma(a)]`` from one uniform ``u``, for the logits ``a`` of ``q``; ARM's
    gradient of the logits is ``(f(b~) - f(b)) (u - 1/2)`` (Yin & Zhou 2019), DisARM's, with
    ``u`` summed out analytically, ``1/2 (f(b) - f(b~)) (-1)^b~ 1[b != b~] sigma(|a|)`` (Dong,
    Mnih & Tucker 2020). The decoder climbs the mean of ``log p(x, b)`` over the pair.
``gumbel``, ``straight-through``
    :class:`RelaxedELBO`: the decoder sees a Concrete (Gumbel-softmax) relaxation of the code at
    a temperature (Maddison, Mnih & Teh 2017; Jang, Gu & Poole 2017), or the hard code with the
    relaxation's gradient (straight-through); the KL is the discrete one, in closed form. Biased:
    the gradient is not that of the discrete ELBO (``benchmarks/`` measures by how much).
``enumerate``
    Pyro's ``TraceEnum_ELBO`` with the guide's site enumerated: the exact sum over every code,
    weighted by ``q``. :data:`MAX_ENUMERATED` codes at most (``2^D`` for ``D`` Bernoulli
    units, ``C^G`` for ``G`` groups of ``C`` classes), each run through the decoder every step.

The guide's site is the same plain distribution under every estimator
(:class:`BernoulliCode`, :class:`CategoricalCode`): the estimators that Pyro's ELBOs lack are
written as ELBO classes on Pyro's traces of the model and guide, as
:class:`pyro_vae.objectives.ReweightedWakeSleep` is.
"""

from __future__ import annotations

import itertools
import math

import pyro.distributions as dist
import pyro.infer as infer
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer.util import torch_item
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence
from torch.distributions.kl import register_kl

from pyro_vae.checks import is_real
from pyro_vae.errors import ConfigError
from pyro_vae.estimators import RELAXED
from pyro_vae.traces import in_particles, masked_log_prob

__all__ = [
    "ARM",
    "MAX_ENUMERATED",
    "VIMCO",
    "BernoulliCode",
    "CategoricalCode",
    "LeaveOneOutELBO",
    "RelaxedELBO",
]

#: the most codes ``enumerate`` sums over (each is one pass of the decoder an image a step)
MAX_ENUMERATED = 4096


class BernoulliCode(dist.Independent):
    """``D`` independent Bernoulli units as one site, event shape ``(D,)``, whose support
    Pyro can enumerate: all ``2^D`` codes."""

    has_enumerate_support = True

    def __init__(self, logits: torch.Tensor, validate_args=None) -> None:
        super().__init__(dist.Bernoulli(logits=logits), 1, validate_args=validate_args)

    @property
    def logits(self) -> torch.Tensor:
        return self.base_dist.logits

    def expand(self, batch_shape, _instance=None):
        return BernoulliCode(self.logits.expand(*batch_shape, self.event_shape[0]))

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        d = self.event_shape[0]
        codes = torch.tensor(list(itertools.product((0.0, 1.0), repeat=d)), dtype=self.logits.dtype,
                             device=self.logits.device)  # fmt: skip
        codes = codes.reshape(len(codes), *(1,) * len(self.batch_shape), d)
        return codes.expand(len(codes), *self.batch_shape, d) if expand else codes


class CategoricalCode(dist.Independent):
    """``G`` independent one-hot categorical variables of ``C`` classes as one site, event
    shape ``(G, C)``, whose support Pyro can enumerate: all ``C^G`` codes."""

    has_enumerate_support = True

    def __init__(self, logits: torch.Tensor, validate_args=None) -> None:
        super().__init__(dist.OneHotCategorical(logits=logits), 1, validate_args=validate_args)

    @property
    def logits(self) -> torch.Tensor:
        return self.base_dist.logits

    def expand(self, batch_shape, _instance=None):
        return CategoricalCode(self.logits.expand(*batch_shape, *self.event_shape))

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        g, c = self.event_shape
        eye = torch.eye(c, dtype=self.logits.dtype, device=self.logits.device)
        index = torch.tensor(list(itertools.product(range(c), repeat=g)), device=eye.device)
        codes = eye[index]  # (C^G, G, C)
        codes = codes.reshape(len(codes), *(1,) * len(self.batch_shape), g, c)
        return codes.expand(len(codes), *self.batch_shape, g, c) if expand else codes


@register_kl(BernoulliCode, BernoulliCode)
def _kl_bernoulli_codes(q: BernoulliCode, p: BernoulliCode) -> torch.Tensor:
    """``sum_d KL(Bern(sigmoid(a_d)) || Bern(sigmoid(b_d)))``, from the logits, broadcast (torch's
    Bernoulli KL does not broadcast) and finite where a probability rounds to 0 or 1."""
    a, b = q.logits, p.logits
    on = torch.sigmoid(a)
    kl = on * (F.logsigmoid(a) - F.logsigmoid(b)) + (1 - on) * (F.logsigmoid(-a) - F.logsigmoid(-b))
    return kl.sum(-1)


@register_kl(CategoricalCode, CategoricalCode)
def _kl_categorical_codes(q: CategoricalCode, p: CategoricalCode) -> torch.Tensor:
    """``sum_g KL(Cat(softmax(a_g)) || Cat(softmax(b_g)))``, from the logits, broadcast."""
    log_q, log_p = torch.log_softmax(q.logits, -1), torch.log_softmax(p.logits, -1)
    return (log_q.exp() * (log_q - log_p)).sum((-2, -1))


def enumerated_codes(latent_dim: int, categories: int | None) -> int:
    """How many codes ``enumerate`` sums over: ``2^D``, or ``C^G``."""
    return 2**latent_dim if categories is None else categories**latent_dim


def check_enumerable(latent_dim: int, categories: int | None) -> None:
    """Refuse a latent space too large to sum over, in one line."""
    if latent_dim * math.log2(2 if categories is None else categories) > math.log2(MAX_ENUMERATED):
        size = f"2^{latent_dim}" if categories is None else f"{categories}^{latent_dim}"
        raise ConfigError(
            f"estimator 'enumerate' sums over every code, and this latent space has {size}, "
            f"more than {MAX_ENUMERATED} (at most 12 Bernoulli units, or G groups of C classes "
            "with C^G <= 4096); choose a sampling estimator"
        )


# ---------------------------------------------------------------------------------------------
# Traces: the latent site of the guide, and the model's log densities at given codes


def _latent_site(trace) -> dict:
    sites = [site for site in trace.nodes.values()
             if site["type"] == "sample" and not site["is_observed"]
             and not site_is_subsample(site)]  # fmt: skip
    if len(sites) != 1:
        names = [site["name"] for site in sites]
        raise ConfigError(f"this estimator needs a guide with one latent site, found {names}")
    return sites[0]


def _log_prob(site: dict, value: torch.Tensor | None = None) -> torch.Tensor:
    """A site's log density (at ``value``, else its own), masked, unscaled."""
    return masked_log_prob(site if value is None else {**site, "value": value})


def _model_at(model, name: str, z: torch.Tensor, args, kwargs):
    """The model's trace with its latent site ``name`` held at codes ``z`` ``(P, B, ...)``:
    ``(log p(x|z), log p(z), the latent site, the observed site's scale)``, the first two
    ``(P, B)``. The latent site's value is set, not sampled: its density is taken here."""
    run = in_particles(poutine.condition(model, data={name: z}), z.shape[0])
    trace = poutine.trace(run).get_trace(*args, **kwargs)
    observed = [site for site in trace.nodes.values()
                if site["type"] == "sample" and site["is_observed"] and site["name"] != name
                and not site_is_subsample(site)]  # fmt: skip
    if len(observed) != 1:
        names = [site["name"] for site in observed]
        raise ConfigError(
            f"this estimator needs a model with one observed site (the images), found {names}"
        )
    latent = trace.nodes[name]
    log_lik = _log_prob(observed[0]).expand(z.shape[0], -1)
    return log_lik, latent, observed[0]["scale"]


class _CodeELBO(infer.ELBO):
    """What the estimators of this module share: the guide's latent site, traced once, and the
    model's log densities at chosen codes."""

    def __init__(self, num_particles: int) -> None:
        super().__init__(num_particles=int(num_particles), max_plate_nesting=1)

    def _guide(self, guide, args, kwargs, particles: int | None = None) -> dict:
        run = guide if particles is None else in_particles(guide, particles)
        return _latent_site(poutine.trace(run).get_trace(*args, **kwargs))

    def _log_weights(self, model, guide, args, kwargs):
        """``(log p(x, z_k), log q(z_k|x), scale)`` at ``K`` draws ``z_k ~ q(z|x)``, ``(K, B)``
        each, differentiable in the model's and the guide's parameters."""
        site = self._guide(guide, args, kwargs, self.num_particles)
        log_lik, latent, scale = _model_at(model, site["name"], site["value"], args, kwargs)
        log_p = log_lik + _log_prob(latent, site["value"])
        return log_p, _log_prob(site), scale

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Minus the Monte Carlo ELBO (summed over the batch) at ``K`` draws."""
        with torch.no_grad():
            log_p, log_q, scale = self._log_weights(model, guide, args, kwargs)
            return -torch_item((scale * (log_p - log_q).mean(0)).sum())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss, surrogate = self._surrogate(model, guide, args, kwargs)
        if surrogate.requires_grad:
            surrogate.backward()
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} follows a surrogate, not a loss")

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError(f"{type(self).__name__} draws its own traces")

    def _surrogate(self, model, guide, args, kwargs) -> tuple[float, torch.Tensor]:
        raise NotImplementedError


class LeaveOneOutELBO(_CodeELBO):
    """REINFORCE with the leave-one-out baseline (``reinforce-loo``): for ``K >= 2`` draws
    ``z_k ~ q(z|x)`` an image and ``f_k = log p(x, z_k) - log q(z_k|x)``,

    .. math::

        \\nabla \\approx \\frac{1}{K} \\sum_k \\Big[ \\nabla f_k
            + \\big(f_k - \\tfrac{1}{K-1} \\textstyle\\sum_{j \\ne k} f_j\\big)
              \\nabla \\log q(z_k|x) \\Big],

    unbiased, since each draw's baseline does not depend on it (Kool, van Hoof & Welling
    2019). The loss is minus the ``K``-draw ELBO."""

    def __init__(self, num_particles: int = 2) -> None:
        if num_particles < 2:
            raise ConfigError(f"estimator 'reinforce-loo' needs K >= 2 draws, got {num_particles}")
        super().__init__(num_particles)

    def _surrogate(self, model, guide, args, kwargs):
        log_p, log_q, scale = self._log_weights(model, guide, args, kwargs)
        f = log_p - log_q  # (K, B)
        k = self.num_particles
        signal = (f - (f.sum(0, keepdim=True) - f) / (k - 1)).detach()
        surrogate = (f + signal * log_q).mean(0)
        return -torch_item((scale * f.mean(0)).sum()), -(scale * surrogate).sum()


class VIMCO(_CodeELBO):
    """VIMCO (Mnih & Rezende 2016): the importance-weighted bound of ``K >= 2`` draws,
    ``L = log 1/K sum_k w_k`` with ``w_k = p(x, z_k) / q(z_k|x)``, and its gradient

    .. math::

        \\nabla L \\approx \\sum_k (L - L_{-k}) \\nabla \\log q(z_k|x)
            + \\sum_k \\tilde w_k \\nabla \\log w_k,

    where ``L_{-k}`` is ``L`` with ``log w_k`` replaced by the mean of the other draws'
    (their geometric mean), a baseline that does not depend on ``z_k``. The loss is ``-L``."""

    def __init__(self, num_particles: int = 2) -> None:
        if num_particles < 2:
            raise ConfigError(f"estimator 'vimco' needs K >= 2 draws, got {num_particles}")
        super().__init__(num_particles)

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            log_p, log_q, scale = self._log_weights(model, guide, args, kwargs)
            return -torch_item((scale * _log_mean_exp(log_p - log_q)).sum())

    def _surrogate(self, model, guide, args, kwargs):
        log_p, log_q, scale = self._log_weights(model, guide, args, kwargs)
        log_w = log_p - log_q  # (K, B)
        bound = _log_mean_exp(log_w)  # (B,)
        signal = (bound - _leave_one_out_bounds(log_w.detach())).detach()  # (K, B)
        surrogate = bound + (signal * log_q).sum(0)
        return -torch_item((scale * bound).sum()), -(scale * surrogate).sum()


def _log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def _leave_one_out_bounds(log_w: torch.Tensor) -> torch.Tensor:
    """``L_{-k}``, ``(K, B)``: the bound with ``log w_k`` replaced by the others' mean."""
    k = log_w.shape[0]
    others = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)  # (K, B)
    swapped = log_w.unsqueeze(0).expand(k, *log_w.shape).clone()  # (K, K, B): row k, draw j
    index = torch.arange(k, device=log_w.device)
    swapped[index, index] = others
    return _log_mean_exp(swapped.transpose(0, 1))  # the mean over draws j, for each row k


class ARM(_CodeELBO):
    """ARM (Yin & Zhou 2019) or, with ``disarm``, DisARM (Dong, Mnih & Tucker 2020), for a
    Bernoulli latent: one antithetic pair of codes an image from one uniform draw ``u``,
    ``b = 1[u < sigma(a)]`` and ``b~ = 1[u > sigma(-a)]``, each marginally a draw of ``q``.
    With ``f = log p(x, b) - log q(b|x)``, the gradient of ``E_q[f]`` in the logits ``a`` is

    - ARM: ``(f(b~) - f(b)) (u - 1/2)``;
    - DisARM: ``1/2 (f(b) - f(b~)) (-1)^b~ 1[b != b~] sigma(|a|)``, ARM's with ``u`` summed
      out given the pair (never more variance than ARM's, by Rao-Blackwell);

    both unbiased, each unit's from the same two evaluations of ``f``. It reaches the encoder
    through ``a``; the direct dependence of ``f`` on the encoder, ``-grad log q(b|x)``, whose
    expectation is zero, is left out, as in the authors' code. The decoder (and a learned
    prior) climb the pair's mean ``log p(x, b)``. The loss is minus the pair's mean ELBO."""

    def __init__(self, disarm: bool = True) -> None:
        super().__init__(num_particles=2)
        self.disarm = bool(disarm)

    def _pair(self, model, guide, args, kwargs):
        site = self._guide(guide, args, kwargs)
        logits = site["fn"].logits  # (B, D)
        if not isinstance(site["fn"], BernoulliCode):
            raise ConfigError("estimators 'arm' and 'disarm' need a Bernoulli latent")
        u = torch.rand_like(logits)
        b = (u < torch.sigmoid(logits)).to(logits.dtype)
        b_tilde = (u > torch.sigmoid(-logits)).to(logits.dtype)
        codes = torch.stack([b, b_tilde])  # (2, B, D)
        log_lik, latent, scale = _model_at(model, site["name"], codes, args, kwargs)
        log_p = log_lik + _log_prob(latent, codes)
        log_q = site["fn"].log_prob(codes)  # (2, B)
        return log_p, log_q, scale, logits, u, codes

    def _log_weights(self, model, guide, args, kwargs):
        log_p, log_q, scale, *_ = self._pair(model, guide, args, kwargs)
        return log_p, log_q, scale

    def _surrogate(self, model, guide, args, kwargs):
        log_p, log_q, scale, logits, u, (b, b_tilde) = self._pair(model, guide, args, kwargs)
        f = (log_p - log_q).detach()  # (2, B)
        if self.disarm:
            differ = (b != b_tilde).to(logits.dtype)
            sign = 1.0 - 2.0 * b_tilde  # (-1)^b~
            grad = 0.5 * (f[0] - f[1])[:, None] * sign * differ * torch.sigmoid(logits.abs())
        else:
            grad = (f[1] - f[0])[:, None] * (u - 0.5)
        surrogate = log_p.mean(0) + (grad.detach() * logits).sum(-1)  # (B,)
        return -torch_item((scale * f.mean(0)).sum()), -(scale * surrogate).sum()


class RelaxedELBO(_CodeELBO):
    """The Concrete / Gumbel-softmax estimator (``gumbel``; Maddison, Mnih & Teh 2017, Jang,
    Gu & Poole 2017) or, with ``straight_through``, the straight-through one:

    .. math::

        \\mathcal{L} = \\mathbb{E}_{y}[\\log p(x \\mid y)] - \\mathrm{KL}(q(z|x) \\,\\|\\, p(z)),
        \\qquad y = \\mathrm{softmax}((a + g) / \\tau),\\ g \\sim \\mathrm{Gumbel}

    with the decoder at the relaxed code ``y`` (straight-through: at the hard code
    ``argmax(a + g)``, a draw of ``q``, with ``y``'s gradient), and the closed-form KL of the
    discrete ``q`` from the prior, as in Jang et al.'s experiments. ``tau`` is
    :attr:`temperature`. The gradient is biased for the discrete ELBO, less so as ``tau``
    falls, with more variance. ``poutine.scale`` on the latent site (a KL weight) weights the
    KL. The loss reported is minus this relaxed bound."""

    def __init__(self, temperature: float = 1.0, straight_through: bool = False) -> None:
        super().__init__(num_particles=1)
        self.temperature = float(temperature)
        self.straight_through = bool(straight_through)

    def _relaxed(self, fn) -> dist.TorchDistribution:
        t = torch.tensor(self.temperature, dtype=fn.logits.dtype, device=fn.logits.device)
        if isinstance(fn, BernoulliCode):
            cls = (dist.RelaxedBernoulliStraightThrough if self.straight_through
                   else dist.RelaxedBernoulli)  # fmt: skip
        else:
            cls = (dist.RelaxedOneHotCategoricalStraightThrough if self.straight_through
                   else dist.RelaxedOneHotCategorical)  # fmt: skip
        return cls(t, logits=fn.logits)

    def _surrogate(self, model, guide, args, kwargs):
        site = self._guide(guide, args, kwargs)
        y = self._relaxed(site["fn"]).rsample()[None]  # (1, B, ...)
        log_lik, latent, scale = _model_at(model, site["name"], y, args, kwargs)
        # the discrete KL in closed form, the prior broadcast over the particle row of one
        kl = kl_divergence(site["fn"], latent["fn"]).reshape(site["fn"].batch_shape)  # (B,)
        if site["scale"] is not None:
            kl = kl * site["scale"]
        bound = log_lik[0] - kl
        loss = -(scale * bound).sum()
        return torch_item(loss), loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self._surrogate(model, guide, args, kwargs)[0]


# ---------------------------------------------------------------------------------------------
# The switch


def check_discrete_estimator(objective: str, estimator: str, num_particles: int, jit: bool) -> None:
    """Raise :class:`ConfigError` unless the objective and ``K`` suit an estimator of this
    module (one of :data:`pyro_vae.estimators.DRAWS`)."""
    bound = "iwae" if estimator == "vimco" else "elbo"
    if objective != bound:
        what = "the importance-weighted bound" if bound == "iwae" else "the ELBO"
        raise ConfigError(f"estimator {estimator!r} estimates {what}'s gradient: it needs "
                          f"objective {bound!r}")  # fmt: skip
    k = int(num_particles)
    if estimator in ("reinforce-loo", "vimco") and k < 2:
        raise ConfigError(
            f"estimator {estimator!r} needs K >= 2 draws an image (-K 2 or more): each draw's "
            "baseline is made of the others"
        )
    if estimator not in ("reinforce-loo", "vimco") and k != 1:
        raise ConfigError(f"estimator {estimator!r} takes K = 1 (-K 1)")
    if jit:
        raise ConfigError(f"estimator {estimator!r} has no JIT-compiled form; drop --jit")


def check_temperature(
    temperature: float | None, estimator: str, anneal: float | None = None, floor: float = 0.5
) -> None:
    """Raise :class:`ConfigError` for a temperature, annealing rate or floor that is not a
    positive number, or one given to an estimator that relaxes nothing."""
    if not is_real(floor) or not math.isfinite(floor) or floor <= 0:
        raise ConfigError(f"the temperature's floor must be a positive number, got {floor!r}")
    for value, what in ((temperature, "a temperature"), (anneal, "an annealing rate")):
        if value is None:
            continue
        if estimator not in RELAXED:
            raise ConfigError(
                f"{what} is for the relaxed estimators ({' and '.join(RELAXED)}), not "
                f"estimator {estimator!r}"
            )
        if not is_real(value) or not math.isfinite(value) or value <= 0:
            noun = what.split(" ", 1)[1]
            raise ConfigError(f"the {noun} must be a positive number, got {value!r}")
    start = 1.0 if temperature is None else temperature
    if anneal is not None and floor >= start:
        raise ConfigError(
            f"the annealed temperature starts at {start:g}, not above its floor {floor:g}: it "
            "would stay at the floor from the first step; lower --temperature-min or drop "
            "--temperature-anneal"
        )


def temperature_at(start: float, rate: float | None, floor: float, step: int) -> float:
    """The relaxation's temperature at training step ``step`` (from 1): ``start`` annealed as
    ``max(floor, start * exp(-rate * step))``, Jang et al.'s schedule (2017, Sec. 4), or
    ``start`` throughout without a rate."""
    if not rate:
        return float(start)
    return max(float(floor), float(start) * math.exp(-float(rate) * step))


def discrete_elbo(estimator: str, num_particles: int = 1, temperature: float = 1.0) -> infer.ELBO:
    """The ELBO object of an estimator of this module."""
    if estimator == "reinforce-loo":
        return LeaveOneOutELBO(num_particles)
    if estimator == "vimco":
        return VIMCO(num_particles)
    if estimator in ("arm", "disarm"):
        return ARM(disarm=estimator == "disarm")
    if estimator in ("gumbel", "straight-through"):
        return RelaxedELBO(temperature, straight_through=estimator == "straight-through")
    if estimator == "enumerate":
        return infer.TraceEnum_ELBO(max_plate_nesting=1)
    raise ConfigError(f"estimator {estimator!r} is not one of pyro_vae.discrete's")
