r"""Distributions on the unit sphere for a hyperspherical VAE latent (S-VAE).

A latent ``z`` on the unit sphere :math:`S^{d-1} = \{x \in \mathbb{R}^d : \|x\| = 1\}`
needs two distributions that neither Pyro nor PyTorch ships:

:class:`HypersphericalUniform` (the prior)
    The uniform distribution on :math:`S^{d-1}`, with the constant density
    ``log p(x) = -log A_d``, where ``A_d = 2 pi^(d/2) / Gamma(d/2)`` is the surface area
    (``2 pi`` for the circle, ``4 pi`` for the ordinary sphere). Sampled as a normalized
    standard Gaussian vector.

:class:`PowerSpherical` (the guide)
    The Power Spherical distribution of De Cao & Aziz (2020), "The Power Spherical
    distribution", arXiv:2006.04437. With mean direction ``mu`` (a unit vector) and
    concentration ``kappa >= 0``::

        p(x; mu, kappa) = C(kappa, d) (1 + mu^T x)^kappa,
        1 / C(kappa, d) = 2^(alpha + beta) pi^beta Gamma(alpha) / Gamma(alpha + beta),
        alpha = (d - 1)/2 + kappa,    beta = (d - 1)/2.

    (Writing ``x = (w, sqrt(1 - w^2) v)`` in coordinates around ``mu``, the surface element is
    ``(1 - w^2)^((d-3)/2) dw dv``; with ``t = (1 + w)/2`` the density of ``t`` is
    ``Beta(alpha, beta)`` and integrating over ``v`` gives the normalizer above.) Sampling
    follows the paper, without rejection::

        t ~ Beta(alpha, beta),   w = 2t - 1,   v ~ Uniform(S^(d-2)),
        y = (w, sqrt(1 - w^2) v),   x = R y   with R orthogonal and R e_1 = mu.

    ``t`` comes from PyTorch's reparameterized ``Beta.rsample``, and ``R`` is the Householder
    reflection ``I - 2 u u^T / u^T u`` with ``u = e_1 - mu`` (which maps ``e_1`` to ``mu``)
    when ``mu_1 < 0``, and otherwise minus the reflection with ``u = e_1 + mu`` (which maps
    ``e_1`` to ``-mu``), so that ``u^T u >= 2`` and no ``0 / 0`` arises near ``mu = +-e_1``.
    Either map gives the same distribution, which is symmetric about ``mu``. For ``d = 2``
    the "sphere" ``S^0`` of ``v`` is ``{-1, +1}``. Closed forms (from the paper)::

        E[x] = mu (alpha - beta) / (alpha + beta) = mu kappa / (kappa + d - 1),
        H(p) = -log C(kappa, d) - kappa (log 2 + psi(alpha) - psi(alpha + beta)),

    the entropy following from ``E[log(1 + mu^T x)] = log 2 + E[log t]`` and
    ``E[log t] = psi(alpha) - psi(alpha + beta)`` for the Beta. ``kappa = 0`` is the uniform
    distribution.

The KL divergence from the guide to the uniform prior is in closed form,
``KL(q || p) = -H(q) - E_q[log p] = -H(q) + log A_d``, and is registered with
:func:`torch.distributions.kl.register_kl`, so ``torch.distributions.kl_divergence`` and Pyro's
``TraceMeanField_ELBO`` (directly or through ``Independent`` wrappers) use it.

Why Power Spherical rather than von Mises-Fisher (the S-VAE of Davidson et al., 2018,
"Hyperspherical Variational Auto-Encoders", with density proportional to
``exp(kappa mu^T x)``): the vMF normalizer needs the modified Bessel function
``I_(d/2-1)(kappa)``, which overflows or underflows in float32 for large ``kappa`` or ``d`` and
whose gradient needs care; and its sampler (Wood, 1994) draws ``w`` by rejection, so the
reparameterization gradient needs an extra correction term. The Power Spherical distribution
has the same role (a unimodal, rotationally symmetric density around ``mu``), but its marginal
``t`` is a Beta variable, sampled without rejection and reparameterized by PyTorch, and its
normalizer, entropy and KL need only ``lgamma`` and ``digamma``, which are numerically stable
for any ``kappa`` and ``d``.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.transforms import Normalize
from torch.distributions import Beta, constraints, register_kl, transform_to

__all__ = ["HypersphericalUniform", "PowerSpherical", "log_sphere_area", "sphere"]


class _Sphere(constraints.Constraint):
    """The unit sphere: vectors (along the last dimension) of Euclidean norm 1.

    The norm is checked within ``reltol * eps * sqrt(d)`` of 1, ``eps`` the machine epsilon of
    the value's dtype: loose enough for vectors normalized, and samples drawn, in float32.
    """

    event_dim = 1
    reltol = 1000.0

    def check(self, value):
        if not value.is_floating_point():
            value = value.to(torch.get_default_dtype())
        eps = torch.finfo(value.dtype).eps
        error = (torch.linalg.vector_norm(value, dim=-1) - 1).abs()
        return error <= self.reltol * eps * value.size(-1) ** 0.5

    def __repr__(self):
        return "sphere"


sphere = _Sphere()
"""Constraint: unit-norm vectors (``event_dim = 1``). ``pyro.param(..., constraint=sphere)``
keeps a parameter on the sphere by normalizing it."""


@transform_to.register(_Sphere)
def _transform_to_sphere(constraint):
    return Normalize()


def log_sphere_area(dim: int) -> float:
    """The log surface area of ``S^(dim-1)`` in ``R^dim``: ``log(2 pi^(d/2) / Gamma(d/2))``."""
    return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)


def _widen(x):
    """``x`` in float64, where it is a narrower float and the device has float64 (not MPS).

    The ``lgamma`` terms of the normalizer, entropy and KL grow like ``d log d`` and cancel, so
    they are computed in float64 and the results cast back.
    """
    if x.dtype in (torch.float16, torch.bfloat16, torch.float32) and x.device.type != "mps":
        return x.double()
    return x


def _log_normalizer(kappa, dim: int):
    alpha, beta = kappa + 0.5 * (dim - 1), 0.5 * (dim - 1)
    return (
        torch.lgamma(alpha + beta)
        - torch.lgamma(alpha)
        - (alpha + beta) * math.log(2.0)
        - beta * math.log(math.pi)
    )


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"the sphere's ambient dimension must be an integer >= 2, got {dim!r}")
    return dim


class PowerSpherical(TorchDistribution):
    """The Power Spherical distribution on ``S^(d-1)`` (De Cao & Aziz, 2020).

    Density ``C(kappa, d) (1 + mu^T x)^kappa``; see the module docstring for the formulas.

    Args:
        loc: mean direction ``mu``, unit vectors of shape ``(..., d)``, ``d >= 2``.
        concentration: ``kappa >= 0``, shape broadcastable with ``loc.shape[:-1]``;
            ``0`` is the uniform distribution. A Python number is accepted.

    ``batch_shape`` is the broadcast of ``loc.shape[:-1]`` and ``concentration.shape``;
    ``event_shape`` is ``(d,)``. ``rsample`` is reparameterized in both arguments.
    """

    arg_constraints = {"loc": sphere, "concentration": constraints.nonnegative}
    support = sphere
    has_rsample = True

    def __init__(self, loc, concentration, validate_args=None):
        if not torch.is_tensor(loc) or loc.dim() < 1:
            raise ValueError("loc must be a tensor of shape (..., d)")
        _check_dim(int(loc.shape[-1]))  # under torch.jit.trace (--jit) a size is a tensor
        if not torch.is_tensor(concentration) or not concentration.is_floating_point():
            concentration = torch.as_tensor(concentration, dtype=loc.dtype, device=loc.device)
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], concentration.shape)
        event_shape = loc.shape[-1:]
        self.loc = loc.expand(batch_shape + event_shape)
        self.concentration = concentration.expand(batch_shape)
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PowerSpherical, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.concentration = self.concentration.expand(batch_shape)
        super(PowerSpherical, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def dim(self) -> int:
        """The ambient dimension ``d`` (the sphere is ``S^(d-1)``)."""
        return self.event_shape[0]

    @property
    def _alpha(self):
        return self.concentration + 0.5 * (self.dim - 1)

    @property
    def _beta(self):
        return torch.full_like(self.concentration, 0.5 * (self.dim - 1))

    def _log_normalizer(self):
        """``log C(kappa, d) = lgamma(a + b) - lgamma(a) - (a + b) log 2 - b log pi``."""
        return _log_normalizer(_widen(self.concentration), self.dim).to(self.concentration.dtype)

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)  # sample + batch + (d,)
        d = self.dim
        t = Beta(self._alpha, self._beta, validate_args=False).rsample(sample_shape)
        w = 2 * t - 1
        # sqrt(1 - w^2) = 2 sqrt(t (1 - t)), kept off 0 so that its gradient stays finite.
        radius = 2 * (t * (1 - t)).clamp_min(torch.finfo(t.dtype).tiny).sqrt()
        g = torch.randn(shape[:-1] + (d - 1,), dtype=self.loc.dtype, device=self.loc.device)
        v = g / torch.linalg.vector_norm(g, dim=-1, keepdim=True).clamp_min(
            torch.finfo(g.dtype).tiny
        )
        y = torch.cat([w.unsqueeze(-1), radius.unsqueeze(-1) * v], dim=-1)
        return self._rotate(y)

    def _rotate(self, y):
        """Apply an orthogonal map ``R`` with ``R e_1 = loc`` (see the module docstring)."""
        mu = self.loc
        e1 = torch.zeros_like(mu)
        e1[..., 0] = 1
        # sign s = +1 where mu_1 < 0: u = e1 - mu, x = H y; else s = -1: u = e1 + mu, x = -H y.
        s = torch.where(mu[..., :1] < 0, 1.0, -1.0).to(mu.dtype)
        u = e1 - s * mu
        uu = (u * u).sum(-1, keepdim=True)  # >= ~2 by the choice of s
        return s * (y - (2 * (y * u).sum(-1, keepdim=True) / uu) * u)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        dot = (self.loc * value).sum(-1)
        # xlogy: 0 * log 0 = 0, so kappa = 0 (uniform) is finite at x = -mu.
        return self._log_normalizer() + torch.xlogy(self.concentration, (1 + dot).clamp_min(0))

    def entropy(self):
        kappa = _widen(self.concentration)
        alpha, beta = kappa + 0.5 * (self.dim - 1), 0.5 * (self.dim - 1)
        entropy = -_log_normalizer(kappa, self.dim) - kappa * (
            math.log(2.0) + torch.digamma(alpha) - torch.digamma(alpha + beta)
        )
        return entropy.to(self.concentration.dtype)

    @property
    def mean(self):
        kappa = self.concentration
        return self.loc * (kappa / (kappa + (self.dim - 1))).unsqueeze(-1)

    @property
    def mode(self):
        return self.loc

    @property
    def variance(self):
        """The diagonal of the covariance ``Var(w) mu mu^T + E[1 - w^2] (I - mu mu^T) / (d-1)``."""
        alpha, beta = self._alpha, self._beta
        total = alpha + beta
        mean_w = (alpha - beta) / total
        var_w = 4 * alpha * beta / (total**2 * (total + 1))
        tangential = (1 - var_w - mean_w**2) / (self.dim - 1)
        mu2 = self.loc**2
        return var_w.unsqueeze(-1) * mu2 + tangential.unsqueeze(-1) * (1 - mu2)


class HypersphericalUniform(TorchDistribution):
    """The uniform distribution on the unit sphere ``S^(dim-1)`` in ``R^dim``.

    Args:
        dim: the ambient dimension ``d >= 2`` (the event shape is ``(d,)``).
        batch_shape: batch shape; ``pyro.plate`` and ``.expand`` set it too.
        device, dtype: of samples, ``log_prob`` and ``entropy`` (default: CPU and the default
            dtype); pass the encoder's, e.g. ``device=loc.device, dtype=loc.dtype``.

    ``sample`` normalizes a standard Gaussian vector; ``log_prob`` is ``-log A_d`` everywhere
    on the sphere, ``A_d = 2 pi^(d/2) / Gamma(d/2)`` the surface area. ``rsample`` is
    ``sample``: there are no parameters, so the pathwise gradient is zero.
    """

    arg_constraints = {}
    support = sphere
    has_rsample = True

    def __init__(self, dim, batch_shape=(), *, device=None, dtype=None, validate_args=None):
        self._dim = _check_dim(dim)
        self._device = torch.device("cpu") if device is None else torch.device(device)
        self._dtype = torch.get_default_dtype() if dtype is None else dtype
        super().__init__(torch.Size(batch_shape), torch.Size([dim]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(HypersphericalUniform, _instance)
        new._dim, new._device, new._dtype = self._dim, self._device, self._dtype
        super(HypersphericalUniform, new).__init__(
            torch.Size(batch_shape), self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    @property
    def dim(self) -> int:
        return self._dim

    def log_surface_area(self) -> float:
        """``log A_d``, the log surface area of the sphere."""
        return log_sphere_area(self._dim)

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        g = torch.randn(shape, dtype=self._dtype, device=self._device)
        return g / torch.linalg.vector_norm(g, dim=-1, keepdim=True).clamp_min(
            torch.finfo(g.dtype).tiny
        )

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        dtype = value.dtype if value.is_floating_point() else self._dtype
        return torch.full(shape, -self.log_surface_area(), dtype=dtype, device=value.device)

    def entropy(self):
        return torch.full(
            self.batch_shape, self.log_surface_area(), dtype=self._dtype, device=self._device
        )

    @property
    def mean(self):
        return torch.zeros(
            self.batch_shape + self.event_shape, dtype=self._dtype, device=self._device
        )

    @property
    def variance(self):
        return torch.full(
            self.batch_shape + self.event_shape,
            1.0 / self._dim,
            dtype=self._dtype,
            device=self._device,
        )


@register_kl(PowerSpherical, HypersphericalUniform)
def _kl_powerspherical_uniform(q, p):
    """``KL(q || p) = -H(q) - E_q[log p] = -H(q) + log A_d`` (``log p = -log A_d`` is constant)."""
    if q.event_shape != p.event_shape:
        raise ValueError(
            f"KL between spheres of different dimensions: {q.event_shape} and {p.event_shape}"
        )
    # -H(q) + log A_d with log A_d = -log C(0, d) and the log 2 terms cancelled:
    # lgamma(a + b) - lgamma(2b) - lgamma(a) + lgamma(b) + kappa (psi(a) - psi(a + b)),
    # exactly 0 at kappa = 0 (a = b), without subtracting two large log-areas.
    # The lgamma terms are large for large d (about 3000 at d = 1000) and cancel: see _widen.
    d = q.dim
    kappa = _widen(q.concentration)
    beta = torch.full_like(kappa, 0.5 * (d - 1))
    alpha = kappa + beta
    kl = (
        torch.lgamma(alpha + beta)
        - torch.lgamma(2 * beta)
        - torch.lgamma(alpha)
        + torch.lgamma(beta)
        + kappa * (torch.digamma(alpha) - torch.digamma(alpha + beta))
    )
    kl = kl.to(q.concentration.dtype)
    return kl.expand(torch.broadcast_shapes(q.batch_shape, p.batch_shape))
