"""The latent space as one concept: a small family whose members own everything that differs
between kinds of ``z``.

A :class:`LatentSpace` says what the encoder must output (a location and a second output: a
scale per dimension, or one concentration), which distribution the guide is under each gradient
estimator, the point an image is encoded to, what a picture draws (the manifold of a 2-D
space, the scatter of the guide's means, interpolations between two codes), and whether NUTS
and Monte Carlo EM can move in it. The closed-form KL, where there is one, is a
``torch.distributions`` registration between the guide's and the prior's classes
(:mod:`pyro_vae.priors`, :mod:`pyro_vae.sphere`), found by ``kl_divergence``.

Members:

``GAUSSIAN``
    ``z`` in ``R^Z``; the guide is ``N(loc, diag(scale^2))`` (the normal, mixture and vamp
    priors).
``SPHERE``
    ``z`` on the unit sphere ``S^(Z-1)``; the guide is Power Spherical with mean direction
    ``loc / |loc|`` and one concentration an image (the hyperspherical prior, an S-VAE).
``BERNOULLI``
    ``z`` in ``{0, 1}^D``; the encoder gives ``D`` logits and the guide is ``D`` independent
    Bernoulli units (the ``bernoulli`` and ``uniform`` priors).
``Categorical(C)``
    ``G`` one-hot groups of ``C`` classes; the encoder gives ``G * C`` logits (the ``uniform``
    and ``categorical`` priors).

A discrete latent takes its own estimators (:data:`pyro_vae.estimators.DISCRETE_ESTIMATORS`),
and :meth:`LatentSpace.refusal` says in one line why another does not apply.

Each prior names its latent space (:attr:`pyro_vae.priors.Prior.latent`). The rest of the
package asks the latent space, never which one it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro.distributions as dist
import torch

from pyro_vae.discrete import BernoulliCode, CategoricalCode
from pyro_vae.errors import ConfigError
from pyro_vae.estimators import (
    CONTINUOUS_ESTIMATORS,
    DISCRETE_ESTIMATORS,
    ScoreFunctionNormal,
    ScoreFunctionPowerSpherical,
    StickingTheLandingNormal,
    StickingTheLandingPowerSpherical,
    check_estimator,
)
from pyro_vae.sphere import PowerSpherical

__all__ = [
    "BERNOULLI",
    "GAUSSIAN",
    "LATENTS",
    "LATENT_SPACES",
    "SPHERE",
    "LatentSpace",
    "Picture",
    "guide_distribution",
    "latent_space",
]


@dataclass(frozen=True)
class Picture:
    """Points to draw and how to label them: a scatter's ``(N, 2)`` points and axes."""

    points: torch.Tensor
    xlabel: str
    ylabel: str
    title: str


class LatentSpace:
    """One kind of latent space (see the module docstring)."""

    name = ""
    #: what the encoder's second output is (``None``: it returns one output, the logits)
    second_output: str | None = "scale"
    #: whether z lives in R^Z, where NUTS and Monte Carlo EM's HMC move
    euclidean = True
    #: whether z takes finitely many values (no pathwise gradient)
    discrete = False
    #: the gradient estimators that apply (pyro_vae.estimators), and the one by default
    estimators: tuple[str, ...] = CONTINUOUS_ESTIMATORS
    default_estimator = "reparam"
    #: classes a group, for a categorical latent
    categories: int | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatentSpace) and (self.name, self.categories) == (
            other.name, other.categories)  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.name, self.categories))

    def __repr__(self) -> str:
        return f"LatentSpace({self.name!r})"

    def code_size(self, latent_dim: int) -> int:
        """The size of a code as the decoder sees it (and of the encoder's first output)."""
        return latent_dim

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        """A value of the latent site, as the decoder takes it: ``(..., code_size)``."""
        return z

    def point(self, code: torch.Tensor) -> torch.Tensor:
        """The decoder's input at the guide's mean, for :meth:`code`'s output (what
        reconstructions, interpolations and the scatter of codes draw)."""
        return code

    def units(self, per_entry: torch.Tensor) -> torch.Tensor:
        """A statistic of each latent unit (what counts as active), from one of each entry of
        a code: the same for all but a categorical latent, whose unit is a group of classes
        (its largest)."""
        return per_entry

    def refusal(self, estimator: str) -> str | None:
        """Why ``estimator`` cannot train this latent, or ``None``."""
        if estimator in self.estimators:
            return None
        if self.discrete:
            why = ("has no pathwise gradient" if estimator in ("reparam", "stl")
                   else "is for continuous latents")  # fmt: skip
            return (f"estimator {estimator!r} {why}: a {self.name} latent takes "
                    f"{', '.join(self.estimators)}")  # fmt: skip
        return (
            f"estimator {estimator!r} is for discrete latents (--latent bernoulli or "
            f"categorical); a {self.name} latent takes {', '.join(self.estimators)}"
        )

    def check_dim(self, latent_dim: int) -> None:
        """Raise :class:`ConfigError` for a size this space cannot have."""

    def second_output_size(self, latent_dim: int) -> int:
        """The size of the encoder's second output."""
        return latent_dim

    def encoder_contract(self, latent_dim: int) -> str:
        """What the encoder must return, in the words of an error message."""
        return f"(loc, scale), each (B, {latent_dim})"

    def guide(self, loc: torch.Tensor, second: torch.Tensor, estimator: str):
        """``q(z|x)`` from the encoder's outputs, set up for the gradient ``estimator`` (a
        checked one: this runs every step, and checks nothing)."""
        raise NotImplementedError

    def code(self, loc: torch.Tensor) -> torch.Tensor:
        """The point an image is encoded to (what :meth:`pyro_vae.VAE.encode` returns)."""
        return loc

    def draw_and_mean(self, loc: torch.Tensor, second: torch.Tensor):
        """``(z, E_q[z])``: one draw of the guide and its mean, for the evaluation."""
        raise NotImplementedError

    def manifold(self, num_per_axis: int) -> tuple[torch.Tensor, int, str] | None:
        """``(z, columns, title)`` of the learned 2-D manifold's picture (``None``: a discrete
        latent has no manifold)."""
        n = num_per_axis
        u = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        coords = torch.distributions.Normal(0.0, 1.0).icdf(u)  # (n,)
        z1, z2 = torch.meshgrid(coords, coords.flip(0), indexing="xy")  # z2 grows upwards
        z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)  # (n * n, 2), row by row
        return z, n, "learned manifold: E[x|z] on a grid through Phi^-1"

    def scatter(self, loc: torch.Tensor, second: torch.Tensor) -> Picture | None:
        """The guide's codes drawn in this space's own coordinates, or ``None`` where the
        plain drawing of the means (or their principal components) is the right one."""
        return None

    def interpolate(self, z: torch.Tensor) -> torch.Tensor:
        """Points between two codes, ``(steps, Z)`` on the chord, brought into the space."""
        return z

    def hmc_refusal(self, what: str) -> str | None:
        """Why ``what`` (NUTS, Monte Carlo EM) cannot sample this space, or ``None``."""
        return None


class Gaussian(LatentSpace):
    """``z`` in ``R^Z`` with a diagonal Gaussian guide."""

    name = "gaussian"

    def guide(self, loc, second, estimator):
        if estimator == "reparam":
            cls = dist.Normal
        elif estimator == "stl":
            cls = StickingTheLandingNormal
        else:
            cls = ScoreFunctionNormal
        return cls(loc, second).to_event(1)

    def draw_and_mean(self, loc, second):
        return loc + second * torch.randn_like(second), loc


class Sphere(LatentSpace):
    """``z`` on the unit sphere with a Power Spherical guide (De Cao & Aziz 2020)."""

    name = "sphere"
    second_output = "concentration"
    euclidean = False

    def check_dim(self, latent_dim):
        if latent_dim < 2:
            raise ConfigError(
                "a hyperspherical latent needs latent_dim >= 2 (the circle is the sphere in 2-D)"
            )

    def second_output_size(self, latent_dim):
        return 1

    def encoder_contract(self, latent_dim):
        return f"(loc, concentration), (B, {latent_dim}) and (B, 1), for a hyperspherical latent"

    def guide(self, loc, second, estimator):
        direction = loc / loc.norm(dim=-1, keepdim=True)
        concentration = second.squeeze(-1)
        if estimator == "reparam":
            return PowerSpherical(direction, concentration)
        if estimator == "stl":
            return StickingTheLandingPowerSpherical(direction, concentration)
        return ScoreFunctionPowerSpherical(direction, concentration)

    def code(self, loc):
        return loc / loc.norm(dim=-1, keepdim=True)

    def draw_and_mean(self, loc, second):
        q = self.guide(loc, second, "reparam")
        return q.sample(), q.mean  # mu kappa / (kappa + d - 1): near 0 where q is near uniform

    def manifold(self, num_per_axis):
        n = num_per_axis  # the circle: z = (cos theta, sin theta), theta around it row by row
        theta = 2 * math.pi * torch.arange(n * 3, dtype=torch.float32) / (n * 3)
        z = torch.stack([theta.cos(), theta.sin()], dim=-1)
        title = f"learned manifold on the circle: E[x|z] at {n * 3} angles, 0 to 2 pi, row by row"
        return z, n, title

    def scatter(self, loc, second):
        if loc.shape[-1] == 2:
            kappa = second.squeeze(-1)
            points = torch.stack([torch.atan2(loc[:, 1], loc[:, 0]), kappa.log10()], dim=-1)
            return Picture(points, "angle of the mean direction (radians)", "log10 concentration",
                           "guide on the circle: mean direction and concentration")  # fmt: skip
        if loc.shape[-1] == 3:
            points = torch.stack([torch.atan2(loc[:, 1], loc[:, 0]),
                                  torch.asin(loc[:, 2].clamp(-1, 1))], dim=-1)  # fmt: skip
            return Picture(points, "longitude (radians)", "latitude (radians)",
                           "guide mean directions on the sphere S^2")  # fmt: skip
        return None

    def interpolate(self, z):
        # along the great circle: the chord's points, projected back
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def hmc_refusal(self, what):
        if what == "mcem":
            return (
                "objective 'mcem' samples the posterior by HMC in R^d, and the hyperspherical "
                "latent lives on the sphere; choose another prior"
            )
        return (
            "the NUTS posterior check needs a latent in R^Z: NUTS moves in unconstrained "
            "space, and the unit sphere of a hyperspherical latent has no map to it"
        )


class _Discrete(LatentSpace):
    """What the discrete latents share: the encoder gives logits alone, the guide is the same
    distribution under every estimator (:mod:`pyro_vae.discrete` implements the estimators as
    ELBO classes), and there is no manifold to draw or to move in by HMC."""

    second_output = None
    euclidean = False
    discrete = True

    def second_output_size(self, latent_dim):
        return 0

    def manifold(self, num_per_axis):
        return None

    def hmc_refusal(self, what):
        if what == "mcem":
            return (f"objective 'mcem' samples the posterior by HMC in R^d, and a {self.name} "
                    "latent is discrete; choose another objective")  # fmt: skip
        return (f"the NUTS posterior check needs a latent in R^Z, and a {self.name} latent is "
                "discrete (its posterior can be enumerated instead)")  # fmt: skip

    def interpolate(self, z):
        return z  # between two guide means: probabilities, which the decoder takes


class Bernoulli(_Discrete):
    """``z`` in ``{0, 1}^D``: ``D`` binary units, each a Bernoulli of the encoder's logit."""

    name = "bernoulli"
    estimators = DISCRETE_ESTIMATORS
    default_estimator = "disarm"  # unbiased, two evaluations of f, the least variance of them

    def encoder_contract(self, latent_dim):
        return f"(logits,), (B, {latent_dim}), for a Bernoulli latent"

    def guide(self, loc, second, estimator):
        return BernoulliCode(loc)

    def point(self, code):
        return torch.sigmoid(code)

    def draw_and_mean(self, loc, second):
        probs = torch.sigmoid(loc)
        return torch.bernoulli(probs), probs


class Categorical(_Discrete):
    """``z`` in ``G`` groups of ``C`` classes, each group one-hot: a categorical of the
    encoder's ``C`` logits for each group (Jang et al.'s 20 x 10). ``latent_dim`` is ``G``;
    the decoder sees the ``G * C`` one-hot values, the encoder gives ``G * C`` logits."""

    name = "categorical"
    estimators = tuple(e for e in DISCRETE_ESTIMATORS if e not in ("arm", "disarm"))
    default_estimator = "gumbel"  # Jang et al.'s best on their 20 x 10 categorical VAE

    def __init__(self, categories: int = 10) -> None:
        self.categories = int(categories)

    def __repr__(self) -> str:
        return f"LatentSpace('categorical', categories={self.categories})"

    def check_dim(self, latent_dim):
        if self.categories < 2:
            raise ConfigError(f"a categorical latent needs at least 2 categories, got "
                              f"{self.categories}")  # fmt: skip

    def code_size(self, latent_dim):
        return latent_dim * self.categories

    def encoder_contract(self, latent_dim):
        return (f"(logits,), (B, {latent_dim * self.categories}) ({latent_dim} groups of "
                f"{self.categories}), for a categorical latent")  # fmt: skip

    def refusal(self, estimator):
        if estimator in ("arm", "disarm"):
            return (
                f"estimator {estimator!r} is for Bernoulli latents (its antithetic pair is "
                f"binary); a categorical latent takes {', '.join(self.estimators)}"
            )
        return super().refusal(estimator)

    def _grouped(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.reshape(*logits.shape[:-1], -1, self.categories)

    def guide(self, loc, second, estimator):
        return CategoricalCode(self._grouped(loc))

    def decoder_input(self, z):
        return z.flatten(-2)

    def units(self, per_entry):
        return self._grouped(per_entry).amax(-1)

    def point(self, code):
        return torch.softmax(self._grouped(code), -1).flatten(-2)

    def draw_and_mean(self, loc, second):
        probs = torch.softmax(self._grouped(loc), -1)
        draw = torch.nn.functional.one_hot(
            torch.multinomial(probs.reshape(-1, self.categories), 1).squeeze(-1),
            self.categories).to(probs).reshape(probs.shape)  # fmt: skip
        return draw.flatten(-2), probs.flatten(-2)


GAUSSIAN, SPHERE, BERNOULLI = Gaussian(), Sphere(), Bernoulli()
LATENT_SPACES = {space.name: space for space in (GAUSSIAN, SPHERE, BERNOULLI, Categorical())}
LATENTS = tuple(LATENT_SPACES)
DEFAULT_CATEGORIES = 10


def latent_space(name: str, categories: int | None = None) -> LatentSpace:
    """The latent space called ``name`` (one of :data:`LATENTS`); ``categories`` is ``C`` of
    a categorical latent (default 10)."""
    if name == "categorical":
        return Categorical(DEFAULT_CATEGORIES if categories is None else categories)
    return LATENT_SPACES[name]


def guide_distribution(
    loc: torch.Tensor,
    scale: torch.Tensor,
    estimator: str = "reparam",
    latent: LatentSpace | str = GAUSSIAN,
) -> dist.TorchDistribution:
    """``q(z|x)`` from an encoder's outputs in a latent space (by default ``N(loc,
    diag(scale^2))`` over the last dimension), set up for the given estimator; on the sphere,
    Power Spherical with mean direction ``loc / |loc|`` and concentration ``scale``, ``(..., 1)``.
    Every estimator applies to both: each has a reparameterized sampler and a ``log_prob``."""
    check_estimator(estimator)
    if isinstance(latent, str):
        if latent not in LATENT_SPACES:
            raise ConfigError(f"unknown latent space {latent!r}; choose one of {LATENT_SPACES}")
        latent = LATENT_SPACES[latent]
    refusal = latent.refusal(estimator)
    if refusal:
        raise ConfigError(refusal)
    return latent.guide(loc, scale, estimator)
