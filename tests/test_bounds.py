"""The bounds against references: closed forms, an exact marginal likelihood, and Pyro itself.

- ``kl_per_dimension`` against torch's Gaussian KL and a Monte Carlo estimate of it;
- the importance-sampled ``log p(x)`` and the ELBO of a linear-Gaussian VAE, where ``p(x)`` and
  ``p(z|x)`` are Gaussian and known exactly;
- ``importance_sampled_log_likelihood`` on the package's VAE against Pyro's IWAE bound,
  ``-RenyiELBO(alpha=0).loss``, with and without chunking the particles;
- the estimate stays finite when every importance weight underflows ``exp``.

Monte Carlo comparisons allow 5 standard errors, each computed from the samples themselves.
(``conftest.py`` seeds and clears the param store before every test.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from pyro_vae.evaluate import (
    importance_sampled_log_likelihood,
    kl_per_dimension,
    log_importance_weights,
)
from pyro_vae.model import VAE

# equalities and closed forms: CI runs these again with another CPU's arithmetic
pytestmark = pytest.mark.numerics

NUM_SE = 5.0


def test_kl_per_dimension_matches_torch_and_monte_carlo(float64):
    torch.manual_seed(0)
    loc = 2 * torch.randn(3, 4)
    scale = 0.1 + 2 * torch.rand(3, 4)  # both sides of 1
    q, p = Normal(loc, scale), Normal(0.0, 1.0)
    kl = kl_per_dimension(loc, scale)
    assert kl.shape == (3, 4)
    torch.testing.assert_close(kl, kl_divergence(q, p), rtol=1e-12, atol=1e-12)

    num_samples = 200_000
    z = q.sample((num_samples,))  # (N, 3, 4)
    log_ratio = q.log_prob(z) - p.log_prob(z)
    estimate, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(num_samples)
    assert ((kl - estimate).abs() < NUM_SE * stderr).all(), (kl, estimate, stderr)


@dataclass
class LinearGaussian:
    """``z ~ N(0, I_Z)``, ``x | z ~ N(W z + b, s^2 I_D)``: conjugate, so everything is exact.

    ``p(x) = N(x; b, W W^T + s^2 I)`` and ``p(z|x) = N(m, S)`` with
    ``S = (I + W^T W / s^2)^-1`` and ``m = S W^T (x - b) / s^2``.
    """

    W: torch.Tensor  # (D, Z)
    b: torch.Tensor  # (D,)
    s: float

    @property
    def latent_dim(self) -> int:
        return self.W.shape[1]

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(x.shape[0], self.latent_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)  # (B, Z), or (K, B, Z) under vectorized particles
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.s).to_event(1), obs=x)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.s**2 * torch.eye(len(self.b))
        return MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)  # (B,)

    def posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        S = torch.linalg.inv(torch.eye(self.latent_dim) + self.W.T @ self.W / self.s**2)
        m = (x - self.b) @ self.W @ S / self.s**2  # (B, Z): row form of S W^T (x - b) / s^2
        return dist.MultivariateNormal(m, covariance_matrix=S)

    def exact_guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x))

    def diagonal_q(self, x: torch.Tensor) -> MultivariateNormal:
        # Deliberately wrong: shifted, no correlation, and 1.5x too wide (wide enough that the
        # importance weights have finite variance, checked in the test).
        post = self.posterior(x)
        return MultivariateNormal(post.loc + 0.3, scale_tril=1.5 * post.stddev.diag_embed())

    def diagonal_guide(self, x: torch.Tensor) -> None:
        q = self.diagonal_q(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(q.loc, q.stddev).to_event(1))


@pytest.fixture
def linear_gaussian(float64) -> tuple[LinearGaussian, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    lg = LinearGaussian(
        W=torch.randn(3, 2, generator=generator), b=torch.randn(3, generator=generator), s=0.7
    )
    z = torch.randn(4, 2, generator=generator)
    x = z @ lg.W.T + lg.b + lg.s * torch.randn(4, 3, generator=generator)  # (B, D) = (4, 3)
    return lg, x


def test_importance_sampling_converges_to_exact_log_likelihood(linear_gaussian):
    lg, x = linear_gaussian
    exact = lg.log_marginal(x)
    posterior, q = lg.posterior(x), lg.diagonal_q(x)
    # E_q[w^2] is finite iff 2 S^-1 - Q^-1 is positive definite; else no standard error exists
    assert (torch.linalg.eigvalsh(2 * posterior.precision_matrix - q.precision_matrix) > 0).all()

    num_particles = 20_000
    log_px, elbo = importance_sampled_log_likelihood(
        lg.model, lg.diagonal_guide, x, num_particles=num_particles
    )
    assert log_px.dtype == elbo.dtype == torch.float64 and log_px.shape == elbo.shape == (4,)

    # Standard errors from an independent set of K log weights: the delta method gives
    # sd(log mean w) ~ sd(w) / (sqrt(K) mean w), with w rescaled by its max to stay finite.
    log_w = log_importance_weights(lg.model, lg.diagonal_guide, x, num_particles)  # (K, B)
    w = (log_w - log_w.max(0).values).exp()
    log_px_stderr = w.std(0) / (w.mean(0) * math.sqrt(num_particles))
    elbo_stderr = log_w.std(0) / math.sqrt(num_particles)

    assert ((log_px - exact).abs() < NUM_SE * log_px_stderr).all(), (log_px, exact, log_px_stderr)
    # The ELBO falls short of log p(x) by KL(q(z|x) || p(z|x)), in closed form for Gaussians.
    gap = kl_divergence(q, posterior)
    assert ((elbo - (exact - gap)).abs() < NUM_SE * elbo_stderr).all(), (elbo, exact - gap)
    assert (exact - elbo > NUM_SE * elbo_stderr).all(), (elbo, exact, elbo_stderr)


def test_exact_posterior_guide_gives_constant_weights(linear_gaussian):
    lg, x = linear_gaussian
    exact = lg.log_marginal(x)
    log_w = log_importance_weights(lg.model, lg.exact_guide, x, num_particles=100)
    assert log_w.shape == (100, 4)
    # p(x, z) / p(z|x) = p(x) for every z: zero-variance importance sampling
    torch.testing.assert_close(log_w, exact.expand(100, 4), rtol=0, atol=1e-10)
    log_px, elbo = importance_sampled_log_likelihood(lg.model, lg.exact_guide, x, 100)
    torch.testing.assert_close(log_px, exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(elbo, exact, rtol=0, atol=1e-10)


def _small_vae() -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(0)
    vae = VAE(data_dim=12, latent_dim=2, hidden_sizes=(8,), likelihood="bernoulli")
    images = torch.bernoulli(torch.full((16, 12), 0.5))  # (N, D)
    return vae, images


def _replicates(estimate, seeds) -> torch.Tensor:
    """A row per seed: independent replicates of a Monte Carlo estimate, ``(R, ...)``."""
    values = []
    for seed in seeds:
        pyro.set_rng_seed(seed)
        values.append(torch.as_tensor(estimate(), dtype=torch.float64))
    return torch.stack(values)


def _assert_same_mean(a: torch.Tensor, b: torch.Tensor) -> None:
    """Two sets of replicates estimate the same expectation (column by column)."""
    stderr = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    diff = (a.mean(0) - b.mean(0)).abs()
    assert (diff < NUM_SE * stderr).all(), (a.mean(0), b.mean(0), stderr)


NUM_PARTICLES, NUM_REPLICATES = 50, 20


def test_importance_sampled_log_likelihood_matches_pyro_iwae_bound(float64):
    vae, images = _small_vae()
    renyi = pyro.infer.RenyiELBO(
        alpha=0, num_particles=NUM_PARTICLES, vectorize_particles=True, max_plate_nesting=1
    )

    def ours_estimate():
        log_px, _ = importance_sampled_log_likelihood(vae.model, vae.guide, images, NUM_PARTICLES)
        return log_px.mean()

    ours = _replicates(ours_estimate, seeds=range(NUM_REPLICATES))
    # RenyiELBO's loss is minus the sum over the batch of each image's IWAE bound
    pyros = _replicates(
        lambda: -renyi.loss(vae.model, vae.guide, images) / len(images),
        seeds=range(1000, 1000 + NUM_REPLICATES),
    )
    _assert_same_mean(ours, pyros)


def test_chunking_particles_does_not_change_the_estimate(float64):
    vae, images = _small_vae()

    def estimate(max_rows):
        def both_means():
            log_px, elbo = importance_sampled_log_likelihood(
                vae.model, vae.guide, images, NUM_PARTICLES, max_rows=max_rows
            )
            return torch.stack([log_px.mean(), elbo.mean()])

        return both_means

    # The same seeds for both: their draws may even coincide, which only makes the unpaired
    # standard error conservative. 4 particles a chunk: 13 chunks, the last one short.
    seeds = range(NUM_REPLICATES)
    chunked = _replicates(estimate(4 * len(images)), seeds)
    whole = _replicates(estimate(NUM_PARTICLES * len(images)), seeds)
    _assert_same_mean(chunked, whole)


@pytest.mark.parametrize("max_rows", [4 * 10, 2**16], ids=["chunked", "one-chunk"])
def test_estimate_is_finite_when_weights_underflow(max_rows):
    # float32, as in training; chunked: 10 particles for 4 images, 7 chunks, the last one short
    torch.manual_seed(0)
    vae = VAE(data_dim=100, latent_dim=2, hidden_sizes=(8,), likelihood="bernoulli")
    with torch.no_grad():
        vae.decoder.out.bias.fill_(-100.0)  # p(x_i = 1 | z) ~ e^-100, so log w ~ -1e4
    images = torch.ones(4, 100)
    log_px, elbo = importance_sampled_log_likelihood(
        vae.model, vae.guide, images, num_particles=64, max_rows=max_rows
    )
    assert (elbo < -5e3).all()  # exp(log w) is 0 even in float64
    assert torch.isfinite(log_px).all() and torch.isfinite(elbo).all()
    # log mean exp >= mean log over the same weights (Jensen)
    assert (log_px >= elbo - 1e-6 * elbo.abs()).all()


def test_trained_pyro_params_are_used_and_evaluation_leaves_no_params_behind():
    """A guide's ``pyro.param`` values trained beforehand are the ones scored."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(x.shape[0], 1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 0.1).to_event(1))

    x = torch.full((1, 1), 3.0)
    pyro.param("loc", torch.full((1, 1), 3.0 / 1.01))  # the exact posterior mean
    exact = Normal(0.0, math.sqrt(1.01)).log_prob(x).squeeze()
    log_px, _ = importance_sampled_log_likelihood(model, guide, x, 1000)
    assert abs(log_px.item() - exact.item()) < 0.01
    assert list(pyro.get_param_store().keys()) == ["loc"]
    vae = VAE(data_dim=4, latent_dim=2, hidden_sizes=(3,))
    importance_sampled_log_likelihood(vae.model, vae.guide, torch.ones(2, 4), 5)
    assert list(pyro.get_param_store().keys()) == ["loc"]  # the VAE's modules were not left
