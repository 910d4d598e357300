r"""The prior ``p(z)`` of the latent code, and with it the guide's family.

``normal``
    :math:`\mathcal{N}(0, I)` on :math:`\mathbb{R}^Z`, Kingma & Welling's prior. The guide is
    :math:`\mathcal{N}(\mu(x), \operatorname{diag} \sigma(x)^2)` and the KL has a closed form.
``mixture``
    A learned mixture of ``K`` diagonal Gaussians,
    :math:`p(z) = \sum_k \pi_k \mathcal{N}(z; m_k, \operatorname{diag} s_k^2)`, with the
    weights, means and scales trained with the networks. The guide is Gaussian.
``vamp``
    The VampPrior (Tomczak & Welling 2018): the guide itself at ``K`` learned pseudo-inputs
    :math:`u_k`, :math:`p(z) = \frac{1}{K} \sum_k q(z \mid u_k)`. The pseudo-inputs are
    images (clipped to ``[0, 1]`` by a hard tanh, as in the paper), initialized near 0.05 with
    standard deviation 0.01 as in the authors' code, and trained with the networks; the
    encoder gets gradients from the prior as well as the guide.
``hyperspherical``
    The uniform distribution on the unit sphere :math:`S^{Z-1}` (an S-VAE, Davidson et al.
    2018), with the Power Spherical guide of :mod:`pyro_vae.sphere` (De Cao & Aziz 2020):
    mean direction ``loc / |loc|`` and one concentration an image. The KL has a closed form.

No closed form exists for the KL from a Gaussian guide to a mixture, so with ``mixture`` and
``vamp`` the analytic-KL objective (Pyro's ``TraceMeanField_ELBO`` and
:class:`pyro_vae.meanfield.MeanFieldELBO`) switches, as Pyro's does, to the Monte Carlo
estimate ``log q(z|x) - log p(z)`` at the guide's sample: the same bound as ``elbo``, with
its variance. :func:`has_closed_form_kl` says which priors keep the closed form.

Each prior is an ``nn.Module`` (a part of the :class:`~pyro_vae.VAE`, registered with Pyro as
``"prior"`` in the model, and saved in checkpoints with the networks) whose
:meth:`Prior.distribution` gives ``p(z)`` as a Pyro distribution with event shape ``(Z,)``
and batch shape ``()``, and whose :meth:`Prior.sample` draws from it with a given
``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints
from torch.distributions.kl import register_kl

from pyro_vae.checks import is_whole, require_choice, require_whole
from pyro_vae.discrete import BernoulliCode, CategoricalCode
from pyro_vae.errors import ConfigError
from pyro_vae.latents import BERNOULLI, GAUSSIAN, LATENTS, SPHERE, LatentSpace, latent_space
from pyro_vae.memory import binding_limit, format_bytes
from pyro_vae.sphere import HypersphericalUniform

__all__ = [
    "ALL_PRIORS",
    "DEFAULT_COMPONENTS",
    "DEFAULT_PRIOR",
    "DISCRETE_PRIORS",
    "PRIORS",
    "PRIOR_SPACES",
    "BernoulliPrior",
    "CategoricalPrior",
    "GaussianMixturePrior",
    "HypersphericalPrior",
    "NormalPrior",
    "Prior",
    "StandardNormal",
    "VampPrior",
    "check_prior",
    "has_closed_form_kl",
    "latent_of",
    "make_prior",
    "resolve_latent",
]

PRIORS = ("normal", "mixture", "vamp", "hyperspherical")  # on a continuous latent
DISCRETE_PRIORS = ("bernoulli", "categorical", "uniform")  # on a discrete one
ALL_PRIORS = PRIORS + DISCRETE_PRIORS
#: the prior a latent space has when none is named
#: the space each prior is on, where it has one of its own (``uniform`` is on either discrete one)
PRIOR_SPACES = {
    "normal": "gaussian", "mixture": "gaussian", "vamp": "gaussian", "hyperspherical": "sphere",
    "bernoulli": "bernoulli", "categorical": "categorical",
}  # fmt: skip
DEFAULT_PRIOR = {"gaussian": "normal", "sphere": "hyperspherical", "bernoulli": "bernoulli",
                 "categorical": "uniform"}  # fmt: skip
# K when none is given: 10 Gaussians; 500 pseudo-inputs, Tomczak & Welling's choice for MNIST
DEFAULT_COMPONENTS = {"mixture": 10, "vamp": 500}
MIN_SCALE = 1e-5


def check_prior(
    prior: str, components: int | None, latent_dim: int, latent: LatentSpace | None = None
) -> None:
    """Raise :class:`ConfigError` for an unknown prior, a number of components that is not a
    positive whole number (or is given to a prior without components), a prior on another
    latent space than ``latent`` (default: the prior's own), or a size the space cannot have."""
    require_choice(prior, "prior", ALL_PRIORS)
    if components is not None:
        if prior not in DEFAULT_COMPONENTS:
            raise ConfigError(
                f"the {prior} prior has no components; the number of components is for "
                f"{' and '.join(DEFAULT_COMPONENTS)}"
            )
        if not (is_whole(components) and components >= 1):
            raise ConfigError(
                f"the number of prior components must be a positive whole number, got "
                f"{components!r}"
            )
    space = latent_of(prior, latent)
    if is_whole(latent_dim):
        space.check_dim(latent_dim)


def latent_of(prior: str, latent: LatentSpace | None = None) -> LatentSpace:
    """The latent space a prior is a distribution on (:mod:`pyro_vae.latents`): ``latent``,
    if the prior is one of its own (``uniform`` is a prior of both discrete spaces)."""
    require_choice(prior, "prior", ALL_PRIORS)
    own = PRIOR_SPACES.get(prior)
    if latent is None:
        if own is None:
            raise ConfigError("prior 'uniform' needs a discrete latent: --latent bernoulli or "
                              "categorical")  # fmt: skip
        return latent_space(own)
    if not _fits(prior, latent):
        fits = [p for p in ALL_PRIORS if _fits(p, latent)]
        raise ConfigError(
            f"prior {prior!r} is not a distribution on a {latent.name} latent; it takes "
            f"{', '.join(fits)}"
        )
    return latent


def _fits(prior: str, latent: LatentSpace) -> bool:
    own = PRIOR_SPACES.get(prior)
    return latent.discrete if own is None else own == latent.name


def resolve_latent(
    latent: str | None, prior: str | None, categories: int | None, checked: bool = False
) -> LatentSpace:
    """The latent space of a VAE: ``latent`` by name, else its prior's (``None`` for both: the
    Gaussian); ``categories``, ``C`` of a categorical latent, is refused for any other."""
    if not checked:
        if latent is not None:
            require_choice(latent, "latent", LATENTS)
        if categories is not None:
            if latent != "categorical":
                raise ConfigError("categories are for a categorical latent (--latent categorical)")
            require_whole(categories, "categories")
    if latent is None:
        return latent_of(prior) if prior is not None else latent_space("gaussian")
    return latent_space(latent, categories)


def has_closed_form_kl(prior: str) -> bool:
    """Whether ``KL(q(z|x) || p(z))`` has a closed form that the analytic-KL objective uses."""
    require_choice(prior, "prior", ALL_PRIORS)
    return prior not in ("mixture", "vamp")


def _validating() -> bool:
    """Whether new distributions check their arguments (``pyro.enable_validation``)."""
    return torch.distributions.Distribution._validate_args


class StandardNormal(dist.Normal):
    """``Normal(0, 1)`` elementwise (the ``normal`` prior's base distribution): a ``Normal``
    whose KL from a Gaussian guide is computed by :func:`_kl_normal_standard_normal`."""


@register_kl(torch.distributions.Normal, StandardNormal)
def _kl_normal_standard_normal(q, p):
    """``KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1) / 2 - log s``, elementwise (Kingma &
    Welling 2013, App. B): torch's Normal-Normal formula for this prior, without the division
    by the prior's scale and the subtraction of its mean (fewer operations a step, forward and
    backward). ``p``'s parameters are assumed to be 0 and 1, as :class:`StandardNormal` says."""
    kl = (q.loc.square() + q.scale.square() - 1).mul(0.5) - q.scale.log()
    if p.batch_shape != q.batch_shape:
        kl = kl.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))
    return kl


class Prior(nn.Module):
    """``p(z)`` over latents of size :attr:`latent_dim`."""

    name = ""
    #: whether KL(q || p) from a diagonal Gaussian guide splits into a term a dimension
    #: (:func:`pyro_vae.evaluate.kl_per_dimension`)
    kl_by_dimension = False
    #: the space z lives in, which decides the guide's distribution (:mod:`pyro_vae.latents`)
    latent: LatentSpace = GAUSSIAN

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)

    def distribution(self, encoder: nn.Module | None = None) -> dist.TorchDistribution:
        """``p(z)``: event shape ``(Z,)``, batch shape ``()``. ``encoder`` is the VAE's (the
        VampPrior's components are the guide at its pseudo-inputs)."""
        raise NotImplementedError

    def batch_distribution(
        self, batch_shape: Sequence[int], encoder: nn.Module | None = None
    ) -> dist.TorchDistribution:
        """:meth:`distribution` expanded to ``batch_shape``, one ``p(z)`` an image."""
        return self.distribution(encoder).expand(batch_shape)

    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        encoder: nn.Module | None = None,
    ) -> torch.Tensor:
        """``num_samples`` draws ``z ~ p(z)``, ``(N, Z)``, from ``generator``'s stream."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


class NormalPrior(Prior):
    """``N(0, I)``."""

    name = "normal"
    kl_by_dimension = True

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        # a buffer that follows the VAE to its device (not saved: the prior has no state)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        self._cache: dict[tuple, dist.TorchDistribution] = {}

    def distribution(self, encoder=None):
        return self.batch_distribution((), encoder)

    def batch_distribution(self, batch_shape, encoder=None):
        # The same object for the same shape, device, dtype and validation setting: the
        # distribution has no parameters, and building and expanding it anew is a measurable
        # share of a small network's training step (benchmarks/speed.py).
        shape = torch.Size(batch_shape)
        key = (shape, self._anchor.device, self._anchor.dtype, _validating())
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            zero = self._anchor.expand(*shape, self.latent_dim)
            self._cache[key] = StandardNormal(zero, torch.ones_like(zero)).to_event(1)
        return self._cache[key]

    def sample(self, num_samples, generator=None, encoder=None):
        return torch.randn(num_samples, self.latent_dim, generator=generator,
                           device=self._anchor.device)  # fmt: skip


class _GaussianMixture(dist.MixtureSameFamily):
    """torch's ``MixtureSameFamily`` of diagonal Gaussians, whose support is said to be
    ``real_vector`` (torch's own constraint for it has no transform, which NUTS needs)."""

    support = constraints.real_vector


def _mixture(logits, loc, scale) -> dist.TorchDistribution:
    return _GaussianMixture(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))


def _draw_mixture(logits, loc, scale, num_samples, generator) -> torch.Tensor:
    k = torch.multinomial(torch.softmax(logits, -1), num_samples, True, generator=generator)
    eps = torch.randn(num_samples, loc.shape[-1], generator=generator, device=loc.device)
    return loc[k] + scale[k] * eps


class GaussianMixturePrior(Prior):
    """A learned mixture of ``K`` diagonal Gaussians. The means start as draws from
    ``N(0, I)`` (from the global stream, like the networks' weights), the scales at 1 and the
    weights equal, so that the prior starts as a spread of unit Gaussians around the origin."""

    name = "mixture"

    def __init__(self, latent_dim: int, components: int = DEFAULT_COMPONENTS["mixture"]) -> None:
        super().__init__(latent_dim)
        self.components = int(components)
        self.logits = nn.Parameter(torch.zeros(self.components))
        self.loc = nn.Parameter(torch.randn(self.components, self.latent_dim))
        # softplus(raw) + MIN_SCALE = 1 at the start
        start = math.log(math.expm1(1.0 - MIN_SCALE))
        self.raw_scale = nn.Parameter(torch.full((self.components, self.latent_dim), start))

    def _parts(self):
        return self.logits, self.loc, F.softplus(self.raw_scale) + MIN_SCALE

    def distribution(self, encoder=None):
        return _mixture(*self._parts())

    @torch.no_grad()
    def sample(self, num_samples, generator=None, encoder=None):
        return _draw_mixture(*self._parts(), num_samples, generator)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, components={self.components}"


class VampPrior(Prior):
    """The VampPrior: ``p(z) = (1/K) sum_k q(z | u_k)`` at ``K`` learned pseudo-inputs ``u_k``
    of the images' event shape (Tomczak & Welling 2018)."""

    name = "vamp"

    def __init__(
        self,
        latent_dim: int,
        event_shape: tuple[int, ...],
        components: int = DEFAULT_COMPONENTS["vamp"],
    ) -> None:
        super().__init__(latent_dim)
        self.components = int(components)
        self.event_shape = tuple(event_shape)
        # the authors' initialization: N(0.05, 0.01^2), then the hard tanh into [0, 1]
        self.raw_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(self.components, *event_shape))

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The ``K`` pseudo-inputs, ``(K, *event_shape)``, in ``[0, 1]``."""
        return F.hardtanh(self.raw_inputs, 0.0, 1.0)

    def _parts(self, encoder):
        if encoder is None:
            raise ConfigError("the VampPrior needs the VAE's encoder")
        loc, scale = encoder(self.pseudo_inputs)  # (K, Z) each
        return self.raw_inputs.new_zeros(self.components), loc, scale

    def distribution(self, encoder=None):
        return _mixture(*self._parts(encoder))

    @torch.no_grad()
    def sample(self, num_samples, generator=None, encoder=None):
        return _draw_mixture(*self._parts(encoder), num_samples, generator)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, components={self.components}"


class HypersphericalPrior(Prior):
    """The uniform distribution on the unit sphere ``S^(Z-1)`` in ``R^Z``."""

    name = "hyperspherical"
    latent = SPHERE

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def distribution(self, encoder=None):
        return HypersphericalUniform(self.latent_dim, device=self._anchor.device,
                                     dtype=self._anchor.dtype)  # fmt: skip

    def sample(self, num_samples, generator=None, encoder=None):
        z = torch.randn(num_samples, self.latent_dim, generator=generator,
                        device=self._anchor.device)  # fmt: skip
        return z / z.norm(dim=-1, keepdim=True)


class BernoulliPrior(Prior):
    """``D`` independent units ``Bernoulli(sigmoid(a))``, with logits ``a`` learned (the
    ``bernoulli`` prior, as in the ARM and DisARM experiments) or fixed at 0 (``uniform``:
    every code equally likely). The KL from the guide has a closed form."""

    latent = BERNOULLI

    def __init__(self, latent_dim: int, learned: bool = True) -> None:
        super().__init__(latent_dim)
        self.name = "bernoulli" if learned else "uniform"
        zeros = torch.zeros(self.latent_dim)
        if learned:
            self.logits = nn.Parameter(zeros)
        else:
            self.register_buffer("logits", zeros, persistent=False)

    def distribution(self, encoder=None):
        return BernoulliCode(self.logits)

    def batch_distribution(self, batch_shape, encoder=None):
        return BernoulliCode(self.logits.expand(*batch_shape, self.latent_dim))

    @torch.no_grad()
    def sample(self, num_samples, generator=None, encoder=None):
        u = torch.rand(num_samples, self.latent_dim, generator=generator,
                       device=self.logits.device)  # fmt: skip
        return (u < torch.sigmoid(self.logits)).to(self.logits.dtype)


class CategoricalPrior(Prior):
    """``G`` independent groups, each a categorical of ``C`` classes: with class logits learned
    (``categorical``) or uniform (``uniform``, Jang et al.'s). The KL has a closed form.
    ``latent_dim`` is ``G``; draws are one-hot, ``(N, G * C)`` as the decoder takes them."""

    def __init__(self, latent_dim: int, categories: int, learned: bool = False) -> None:
        super().__init__(latent_dim)
        self.name = "categorical" if learned else "uniform"
        self.latent = latent_space("categorical", categories)
        zeros = torch.zeros(self.latent_dim, int(categories))
        if learned:
            self.logits = nn.Parameter(zeros)
        else:
            self.register_buffer("logits", zeros, persistent=False)

    def distribution(self, encoder=None):
        return CategoricalCode(self.logits)

    def batch_distribution(self, batch_shape, encoder=None):
        return CategoricalCode(self.logits.expand(*batch_shape, *self.logits.shape))

    @torch.no_grad()
    def sample(self, num_samples, generator=None, encoder=None):
        probs = torch.softmax(self.logits, -1)  # (G, C)
        index = torch.multinomial(probs, num_samples, True, generator=generator)  # (G, N)
        one_hot = F.one_hot(index.T, probs.shape[-1]).to(probs)  # (N, G, C)
        return one_hot.flatten(-2)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, categories={self.logits.shape[-1]}"


def make_prior(
    prior: str,
    latent_dim: int,
    components: int | None = None,
    event_shape: tuple[int, ...] | None = None,
    checked: bool = False,
    latent: LatentSpace | None = None,
) -> Prior:
    """The prior named ``prior`` (one of :data:`PRIORS`) for latents of size ``latent_dim``;
    ``components`` is ``K`` for ``mixture`` and ``vamp`` (default :data:`DEFAULT_COMPONENTS`),
    ``event_shape`` the images' shape for ``vamp``'s pseudo-inputs; ``checked``: the settings
    were checked already (:func:`check_prior`); ``latent`` the space (by default the prior's
    own; a discrete one for ``uniform``)."""
    if not checked:
        check_prior(prior, components, latent_dim, latent)
    if prior in DISCRETE_PRIORS:
        space = latent_of(prior, latent)
        if space.categories is None:
            return BernoulliPrior(latent_dim, learned=prior != "uniform")
        return CategoricalPrior(latent_dim, space.categories, learned=prior != "uniform")
    if prior == "normal":
        return NormalPrior(latent_dim)
    if prior == "hyperspherical":
        return HypersphericalPrior(latent_dim)
    k = DEFAULT_COMPONENTS[prior] if components is None else int(components)
    if prior == "mixture":
        return GaussianMixturePrior(latent_dim, k)
    if event_shape is None:
        raise ConfigError("the VampPrior needs the images' shape for its pseudo-inputs")
    # the pseudo-inputs are K images: float32, with their gradients and Adam's two moments
    needed = 4 * 4 * k * math.prod(event_shape)
    limit = binding_limit()
    if limit is not None and needed > limit.available:
        raise ConfigError(
            f"a VampPrior of {k:,} pseudo-inputs of {math.prod(event_shape):,} pixels needs "
            f"about {format_bytes(needed)} to train, more than there is ({limit.describe()}); "
            "choose fewer prior components"
        )
    return VampPrior(latent_dim, tuple(event_shape), k)
