"""Power Spherical and hyperspherical-uniform distributions against closed forms and quadrature.

Monte Carlo checks are seeded (conftest) and use a tolerance of 5 standard errors, in float64
where the closed form matters. Exact facts used: under ``PowerSpherical(mu, kappa)`` on
``S^(d-1)``, ``t = (1 + mu^T x)/2 ~ Beta(alpha, beta)`` with ``alpha = (d-1)/2 + kappa``,
``beta = (d-1)/2``; ``E[x] = mu kappa / (kappa + d - 1)``; and
``E[x x^T] = E[w^2] mu mu^T + (1 - E[w^2]) (I - mu mu^T) / (d - 1)`` with ``w = 2t - 1``.
The surface element in the polar angle ``phi`` from ``mu`` is ``A_(d-2) sin(phi)^(d-2) dphi``.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.sphere import HypersphericalUniform, PowerSpherical, log_sphere_area, sphere

# equalities and closed forms: CI runs these again with another CPU's arithmetic
pytestmark = pytest.mark.numerics

Z = 5.0  # standard errors


def unit(d, *shape, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, d, dtype=dtype), dim=-1)


def orthogonal_unit(mu):
    n = torch.randn_like(mu)
    n = n - (n @ mu) * mu
    return n / n.norm()


def assert_within_se(estimate, se, expected, z=Z, floor=1e-12):
    """Every entry of ``estimate`` within ``z`` standard errors of ``expected``."""
    estimate, se, expected = torch.broadcast_tensors(
        torch.as_tensor(estimate), torch.as_tensor(se), torch.as_tensor(expected)
    )
    bad = (estimate - expected).abs() > z * se + floor
    assert not bad.any(), (
        f"off by {((estimate - expected).abs() / se)[bad].tolist()} SE: "
        f"{estimate[bad].tolist()} vs {expected[bad].tolist()}"
    )


def mean_and_se(samples, dim=0):
    n = samples.shape[dim]
    return samples.mean(dim), samples.std(dim) / math.sqrt(n)


def beta_params(d, kappa):
    kappa = torch.as_tensor(kappa, dtype=torch.float64)
    return kappa + (d - 1) / 2, torch.full_like(kappa, (d - 1) / 2)


# ---------------------------------------------------------------- normalization (quadrature)


@pytest.mark.parametrize("kappa", [0.0, 1.0, 10.0, 100.0])
def test_density_integrates_to_one_on_the_circle(kappa):
    mu = unit(2)
    m = 4096  # the rectangle rule is spectrally accurate for a smooth periodic integrand
    theta = torch.arange(m, dtype=torch.float64) * (2 * math.pi / m)
    x = torch.stack([theta.cos(), theta.sin()], -1)
    p = PowerSpherical(mu, torch.tensor(kappa, dtype=torch.float64), validate_args=True)
    integral = p.log_prob(x).exp().sum() * (2 * math.pi / m)
    assert integral.item() == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("d", [3, 5, 10])
@pytest.mark.parametrize("kappa", [0.0, 1.0, 10.0, 100.0])
def test_density_integrates_to_one_over_the_polar_angle(d, kappa):
    # d = 3 is S^2, with surface element 2 pi sin(phi) dphi; the density depends on mu^T x only.
    mu = unit(d)
    n = orthogonal_unit(mu)
    phi = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    x = phi.cos()[:, None] * mu + phi.sin()[:, None] * n
    p = PowerSpherical(mu, torch.tensor(kappa, dtype=torch.float64), validate_args=True)
    integrand = p.log_prob(x).exp() * phi.sin() ** (d - 2) * math.exp(log_sphere_area(d - 1))
    assert torch.trapezoid(integrand, phi).item() == pytest.approx(1.0, abs=1e-6)


def test_sphere_areas():
    assert math.exp(log_sphere_area(2)) == pytest.approx(2 * math.pi, rel=1e-14)
    assert math.exp(log_sphere_area(3)) == pytest.approx(4 * math.pi, rel=1e-14)
    assert math.exp(log_sphere_area(4)) == pytest.approx(2 * math.pi**2, rel=1e-14)


def test_zero_concentration_is_the_uniform():
    for d in (2, 3, 7):
        x = unit(d, 10)
        x[0] = -unit(d)  # x = -mu: 0 * log 0 must be 0
        p = PowerSpherical(x[0].neg(), torch.zeros((), dtype=torch.float64), validate_args=True)
        u = HypersphericalUniform(d, dtype=torch.float64, validate_args=True)
        torch.testing.assert_close(p.log_prob(x), u.log_prob(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(p.entropy(), u.entropy(), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- sampling


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [2, 3, 10, 200])
def test_samples_lie_on_the_sphere(d, dtype):
    e1 = torch.zeros(d, dtype=dtype)
    e1[0] = 1
    e2 = torch.roll(e1, 1)
    loc = torch.stack([e1, -e1, e2, unit(d, dtype=dtype), F.normalize(e1 + 1e-6 * e2, dim=0)])
    kappa = torch.tensor([0.0, 1e-3, 10.0, 1e3, 1e5], dtype=dtype)
    p = PowerSpherical(loc, kappa, validate_args=True)
    x = p.rsample((7, 3))
    assert x.shape == (7, 3, 5, d) and x.dtype == dtype
    assert sphere.check(x).all()
    assert (x.norm(dim=-1) - 1).abs().max() < 20 * torch.finfo(dtype).eps * d**0.5
    assert torch.isfinite(p.log_prob(x)).all()
    # samples at kappa = 1e5 hug the mean direction (E[1 - mu^T x] = (d - 1) / (kappa + d - 1))
    assert ((x[..., -1, :] * loc[-1]).sum(-1) > 1 - 100 * d / 1e5).all()


@pytest.mark.parametrize("d", [2, 3, 5])
def test_sample_mean_and_variance_match_the_closed_forms(d):
    n = 20000
    loc = unit(d, 3)
    kappa = torch.tensor([0.5, 5.0, 50.0], dtype=torch.float64)
    p = PowerSpherical(loc, kappa, validate_args=True)
    x = p.sample((n,))
    mean, se = mean_and_se(x)
    assert_within_se(mean, se, p.mean)
    torch.testing.assert_close(p.mean, loc * (kappa / (kappa + d - 1))[:, None])
    sq, sq_se = mean_and_se((x - p.mean) ** 2)
    assert_within_se(sq, sq_se, p.variance)


@pytest.mark.parametrize("d", [2, 3, 5, 20])
@pytest.mark.parametrize("kappa", [0.0, 2.0, 30.0])
def test_mu_dot_x_follows_the_beta_marginal(d, kappa):
    # A random direction mu: the Householder map must carry e1 to mu, not to -mu or elsewhere.
    n = 20000
    mu = unit(d)
    x = PowerSpherical(mu, torch.tensor(kappa, dtype=torch.float64)).sample((n,))
    t = (1 + x @ mu) / 2
    a, b = (v.item() for v in beta_params(d, kappa))
    beta = scipy.stats.beta(a, b)
    mean, se = mean_and_se(t)
    assert_within_se(mean, se, beta.mean())
    var, var_se = mean_and_se((t - beta.mean()) ** 2)
    assert_within_se(var, var_se, beta.var())
    assert scipy.stats.kstest(t.numpy(), beta.cdf).pvalue > 1e-4


def test_the_tangential_direction_is_uniform():
    # Around mu the tangential part (x - (mu^T x) mu) / |...| is uniform on S^(d-2): mean 0 and
    # second moment (I - mu mu^T) / (d - 1).
    d, n = 5, 20000
    mu = unit(d)
    x = PowerSpherical(mu, torch.tensor(3.0, dtype=torch.float64)).sample((n,))
    tangent = F.normalize(x - (x @ mu)[:, None] * mu, dim=-1)
    mean, se = mean_and_se(tangent)
    assert_within_se(mean, se, torch.zeros(d, dtype=torch.float64))
    outer = tangent[:, :, None] * tangent[:, None, :]
    m2, m2_se = mean_and_se(outer)
    expected = (torch.eye(d, dtype=torch.float64) - torch.outer(mu, mu)) / (d - 1)
    assert_within_se(m2, m2_se, expected)


# ---------------------------------------------------------------- log_prob, entropy, KL


@pytest.mark.parametrize("d", [2, 3, 10])
@pytest.mark.parametrize("kappa", [0.0, 0.5, 10.0, 200.0])
def test_monte_carlo_entropy_matches_the_closed_form(d, kappa):
    n = 20000
    p = PowerSpherical(unit(d), torch.tensor(kappa, dtype=torch.float64), validate_args=True)
    neg_log_q = -p.log_prob(p.sample((n,)))
    mean, se = mean_and_se(neg_log_q)
    assert_within_se(mean, se, p.entropy(), floor=1e-10)


def test_entropy_matches_the_paper_formula():
    d = 6
    kappa = torch.tensor([0.0, 0.3, 4.0, 80.0], dtype=torch.float64)
    a, b = beta_params(d, kappa)
    log_norm = (a + b) * math.log(2) + b * math.log(math.pi) + a.lgamma() - (a + b).lgamma()
    expected = log_norm - kappa * (math.log(2) + a.digamma() - (a + b).digamma())
    p = PowerSpherical(unit(d, 4), kappa)
    torch.testing.assert_close(p.entropy(), expected)
    assert p.entropy()[0].item() == pytest.approx(log_sphere_area(d), abs=1e-12)


@pytest.mark.parametrize("d", [2, 3, 10])
@pytest.mark.parametrize("kappa", [0.5, 10.0, 200.0])
def test_kl_to_the_uniform_matches_monte_carlo(d, kappa):
    n = 20000
    q = PowerSpherical(unit(d), torch.tensor(kappa, dtype=torch.float64), validate_args=True)
    p = HypersphericalUniform(d, dtype=torch.float64, validate_args=True)
    z = q.sample((n,))
    mean, se = mean_and_se(q.log_prob(z) - p.log_prob(z))
    kl = torch.distributions.kl_divergence(q, p)
    assert_within_se(mean, se, kl)
    torch.testing.assert_close(kl, p.log_surface_area() - q.entropy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_is_zero_at_zero_concentration_and_grows(dtype):
    for d in (2, 3, 10, 1000):
        kappa = torch.tensor([0.0, 1e-3, 0.1, 1.0, 10.0, 1e3, 1e5], dtype=dtype)
        q = PowerSpherical(unit(d, 7, dtype=dtype), kappa)
        p = HypersphericalUniform(d, dtype=dtype)
        kl = torch.distributions.kl_divergence(q, p)
        assert kl.dtype == dtype and kl.shape == (7,)
        assert kl[0].item() == 0.0
        assert (kl[1:] > 0).all() and (kl.diff() > 0).all()
        q64 = PowerSpherical(F.normalize(q.loc.double(), dim=-1), kappa.double())
        exact = torch.distributions.kl_divergence(q64, HypersphericalUniform(d))
        torch.testing.assert_close(kl.double(), exact, rtol=1e-5, atol=1e-12)


def test_kl_broadcasts_and_goes_through_independent_wrappers():
    d = 4
    q = PowerSpherical(unit(d, 3, 2), torch.tensor([1.0, 7.0], dtype=torch.float64))
    p = HypersphericalUniform(d, dtype=torch.float64)
    kl = torch.distributions.kl_divergence(q, p)
    assert kl.shape == (3, 2)
    expected = p.log_surface_area() - q.entropy()
    torch.testing.assert_close(kl, expected)
    wrapped = torch.distributions.kl_divergence(q.to_event(1), p.expand([3, 2]).to_event(1))
    torch.testing.assert_close(wrapped, expected.sum(-1))
    wrapped = torch.distributions.kl_divergence(q.to_event(2), p.expand([3, 2]).to_event(2))
    torch.testing.assert_close(wrapped, expected.sum())
    with pytest.raises(ValueError, match="different dimensions"):
        torch.distributions.kl_divergence(q, HypersphericalUniform(d + 1))


def test_float32_agrees_with_float64():
    # float32's log_prob is as precise as its rounded inputs allow: kappa log(1 + mu^T x) moves
    # by about kappa * 1e-7. The entropy's lgamma terms (in the thousands for d = 1000) are
    # computed in float64, so only the final rounding remains.
    kappa = torch.tensor([0.0, 0.5, 3.0, 40.0, 900.0], dtype=torch.float64)
    for d in (8, 1000):
        loc = unit(d, 5)
        x = PowerSpherical(loc, kappa).sample((6,))
        p64 = PowerSpherical(loc, kappa)
        p32 = PowerSpherical(loc.float(), kappa.float())
        lp32 = p32.log_prob(x.float()).double()
        lp64 = p64.log_prob(x)
        assert ((lp32 - lp64).abs() <= 1e-6 * lp64.abs() + (kappa + 1) * 1e-6).all()
        torch.testing.assert_close(p32.entropy().double(), p64.entropy(), rtol=1e-7, atol=1e-5)


# ---------------------------------------------------------------- reparameterized gradients


@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("kappa", [0.7, 15.0])
def test_pathwise_gradient_matches_the_closed_form(d, kappa):
    # f(x) = a^T x + (b^T x)^2 has E[f] = a^T E[x] + b^T E[x x^T] b in closed form. Each of the
    # n rows of the leaves gets its own sample, so their .grad rows are n single-sample
    # pathwise gradients; their mean must match the gradient of the closed form.
    n = 20000
    theta0 = torch.randn(d, dtype=torch.float64)
    a, b = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)

    def expected_f(theta, kappa):
        mu = F.normalize(theta, dim=-1)
        alpha, beta = kappa + (d - 1) / 2, (d - 1) / 2
        mean_w = (alpha - beta) / (alpha + beta)
        ew2 = (
            4 * alpha * (alpha + 1) / ((alpha + beta) * (alpha + beta + 1))
            - 4 * (alpha / (alpha + beta))
            + 1
        )
        bmu = b @ mu
        return mean_w * (a @ mu) + ew2 * bmu**2 + (1 - ew2) * (b @ b - bmu**2) / (d - 1)

    theta_cf = theta0.clone().requires_grad_()
    kappa_cf = torch.tensor(kappa, dtype=torch.float64, requires_grad=True)
    expected_f(theta_cf, kappa_cf).backward()

    theta = theta0.repeat(n, 1).requires_grad_()
    kappas = torch.full((n,), kappa, dtype=torch.float64, requires_grad=True)
    x = PowerSpherical(F.normalize(theta, dim=-1), kappas, validate_args=True).rsample()
    f = x @ a + (x @ b) ** 2
    assert_within_se(*mean_and_se(f.detach()), expected_f(theta0, kappa))
    f.sum().backward()
    assert_within_se(*mean_and_se(theta.grad), theta_cf.grad)
    assert_within_se(*mean_and_se(kappas.grad), kappa_cf.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_are_finite_at_extremes(dtype):
    d = 4
    e1 = torch.zeros(d, dtype=dtype)
    e1[0] = 1
    loc = torch.stack([e1, -e1, torch.roll(e1, 1), unit(d, dtype=dtype)]).requires_grad_()
    kappa = torch.tensor([1e-4, 1e5, 0.0, 1e3], dtype=dtype, requires_grad=True)
    q = PowerSpherical(loc, kappa)
    x = q.rsample((500,))
    loss = (x * torch.arange(d, dtype=dtype)).sum() + q.log_prob(x.detach()).sum()
    loss = loss + torch.distributions.kl_divergence(q, HypersphericalUniform(d, dtype=dtype)).sum()
    loss.backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(kappa.grad).all()


# ---------------------------------------------------------------- the uniform


@pytest.mark.parametrize("d", [2, 3, 10])
def test_uniform_samples_and_density(d):
    n = 20000
    u = HypersphericalUniform(d, dtype=torch.float64, validate_args=True)
    x = u.sample((n,))
    assert x.shape == (n, d) and x.dtype == torch.float64 and sphere.check(x).all()
    # E[x] = 0, E[x x^T] = I / d
    assert_within_se(*mean_and_se(x), torch.zeros(d, dtype=torch.float64))
    assert_within_se(*mean_and_se(x**2), torch.full((d,), 1.0 / d, dtype=torch.float64))
    torch.testing.assert_close(u.mean, torch.zeros(d, dtype=torch.float64))
    torch.testing.assert_close(u.variance, torch.full((d,), 1.0 / d, dtype=torch.float64))
    lp = u.log_prob(x)
    assert lp.shape == (n,) and (lp == -log_sphere_area(d)).all()
    assert u.entropy().item() == pytest.approx(log_sphere_area(d))
    if d == 3:  # Archimedes: each coordinate of a uniform point on S^2 is Uniform(-1, 1)
        assert scipy.stats.kstest(x[:, 2].numpy(), scipy.stats.uniform(-1, 2).cdf).pvalue > 1e-4


def test_uniform_shapes_dtype_and_expand():
    u = HypersphericalUniform(3, batch_shape=(4,), dtype=torch.float32)
    assert u.batch_shape == (4,) and u.event_shape == (3,)
    assert u.sample((2,)).shape == (2, 4, 3) and u.sample().dtype == torch.float32
    assert u.rsample().requires_grad is False
    e = u.expand([5, 4])
    assert e.batch_shape == (5, 4) and e.sample().shape == (5, 4, 3) and e.dim == 3
    assert e.log_prob(torch.tensor([0.0, 0.0, 1.0])).shape == (5, 4)
    assert e.entropy().shape == (5, 4) and e.mean.shape == (5, 4, 3)
    assert HypersphericalUniform(2).log_prob(torch.tensor([[0.0, 1.0]])).item() == pytest.approx(
        -math.log(2 * math.pi)
    )
    assert HypersphericalUniform(3).log_prob(torch.tensor([1.0, 0.0, 0.0])).item() == pytest.approx(
        -math.log(4 * math.pi)
    )


# ---------------------------------------------------------------- shapes and validation


def test_power_spherical_shapes_and_expand():
    loc = unit(3, 2, dtype=torch.float32)  # batch (2,)
    p = PowerSpherical(loc, 4.0)
    assert p.batch_shape == (2,) and p.event_shape == (3,) and p.concentration.shape == (2,)
    q = PowerSpherical(unit(3, dtype=torch.float32), torch.tensor([1.0, 2.0, 3.0]))
    assert q.batch_shape == (3,) and q.loc.shape == (3, 3)
    e = p.expand([5, 2])
    assert e.batch_shape == (5, 2) and e.rsample((4,)).shape == (4, 5, 2, 3)
    x = p.sample()
    torch.testing.assert_close(e.log_prob(x), p.log_prob(x).expand(5, 2))
    torch.testing.assert_close(e.entropy(), p.entropy().expand(5, 2))
    assert e.mean.shape == (5, 2, 3) and e.variance.shape == (5, 2, 3)
    torch.testing.assert_close(e.mode, loc.expand(5, 2, 3))
    ind = p.to_event(1)
    assert ind.batch_shape == () and ind.event_shape == (2, 3) and ind.log_prob(x).shape == ()


def test_validation():
    with pytest.raises(ValueError):
        PowerSpherical(torch.tensor([1.0, 1.0]), 1.0, validate_args=True)  # not unit norm
    with pytest.raises(ValueError):
        PowerSpherical(torch.tensor([1.0, 0.0]), -1.0, validate_args=True)
    with pytest.raises(ValueError):
        PowerSpherical(torch.tensor([1.0]), 1.0)  # d = 1
    with pytest.raises(ValueError):
        HypersphericalUniform(1)
    p = PowerSpherical(torch.tensor([0.0, 1.0]), 1.0, validate_args=True)
    with pytest.raises(ValueError):
        p.log_prob(torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError):
        HypersphericalUniform(2, validate_args=True).log_prob(torch.tensor([2.0, 0.0]))


# ---------------------------------------------------------------- Pyro


def _models(n, d, data, events=0):
    """Model: z ~ Uniform(S^(d-1)) per item, plus an observed site that ignores z, so the
    ELBO is -sum(KL) + a constant. ``events`` extra batch dims of z are made event dims."""

    def model():
        prior = HypersphericalUniform(d, dtype=torch.float64)
        if events:
            prior = prior.expand([3] * events).to_event(events)
        with pyro.plate("data", n):
            z = pyro.sample("z", prior)
            assert z.shape[-2 - events :] == (n,) + (3,) * events + (d,)
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=data)

    def guide():
        theta = pyro.param("theta", torch.randn((n,) + (3,) * events + (d,), dtype=torch.float64))
        kappa = pyro.param(
            "kappa",
            torch.rand((n,) + (3,) * events, dtype=torch.float64) * 20,
            constraint=dist.constraints.positive,
        )
        q = PowerSpherical(F.normalize(theta, dim=-1), kappa)
        if events:
            q = q.to_event(events)
        with pyro.plate("data", n):
            pyro.sample("z", q)

    def closed_form_kl():
        q = PowerSpherical(F.normalize(pyro.param("theta"), dim=-1), pyro.param("kappa"))
        return torch.distributions.kl_divergence(q, HypersphericalUniform(d)).sum()

    return model, guide, closed_form_kl


@pytest.mark.parametrize("events", [0, 1])
def test_trace_mean_field_elbo_uses_the_closed_form_kl(events):
    n, d = 6, 4
    data = torch.randn(n, dtype=torch.float64)
    model, guide, closed_form_kl = _models(n, d, data, events)
    loss = TraceMeanField_ELBO().differentiable_loss(model, guide)
    log_lik = dist.Normal(0.0, 1.0).log_prob(data).sum()
    # One particle: a Monte Carlo KL would be off by far more than rounding.
    torch.testing.assert_close(loss, closed_form_kl() - log_lik, rtol=1e-12, atol=1e-12)
    loss.backward()  # the KL to the uniform depends on kappa only
    assert (pyro.param("kappa").unconstrained().grad.abs() > 0).all()


def test_trace_elbo_gives_the_monte_carlo_kl():
    n, d, particles = 6, 4, 4000
    data = torch.randn(n, dtype=torch.float64)
    model, guide, closed_form_kl = _models(n, d, data)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, guide)
    log_lik = dist.Normal(0.0, 1.0).log_prob(data).sum()
    # the standard error of the per-particle sum over items of log q - log p
    q = PowerSpherical(F.normalize(pyro.param("theta"), dim=-1), pyro.param("kappa"))
    z = q.sample((particles,))
    per_particle = (q.log_prob(z) - HypersphericalUniform(d).log_prob(z)).sum(-1)
    se = per_particle.std() / math.sqrt(particles)
    assert_within_se(loss.detach() + log_lik, se, closed_form_kl().detach())


def test_plates_broadcast_both_distributions():
    d = 3

    def model():
        with pyro.plate("outer", 2, dim=-2), pyro.plate("inner", 5, dim=-1):
            return pyro.sample("z", HypersphericalUniform(d))

    def guide():
        loc = F.normalize(torch.ones(d), dim=0)  # batch () broadcast by the plates
        with pyro.plate("outer", 2, dim=-2), pyro.plate("inner", 5, dim=-1):
            return pyro.sample("z", PowerSpherical(loc, 2.0))

    for fn in (model, guide):
        tr = pyro.poutine.trace(fn).get_trace()
        tr.compute_log_prob()
        site = tr.nodes["z"]
        assert site["value"].shape == (2, 5, d) and site["fn"].batch_shape == (2, 5)
        assert site["log_prob"].shape == (2, 5)


def test_svi_learns_the_direction_of_a_von_mises_fisher_likelihood():
    # Posterior proportional to exp(20 m^T z) on S^2: the fitted guide points along m.
    d = 3
    m = F.normalize(torch.tensor([1.0, -2.0, 0.5]), dim=0)

    def model():
        z = pyro.sample("z", HypersphericalUniform(d))
        pyro.factor("lik", 20.0 * (z @ m))

    def guide():
        loc = pyro.param(
            "loc", F.normalize(torch.tensor([-1.0, 1.0, 1.0]), dim=0), constraint=sphere
        )
        kappa = pyro.param("kappa", torch.tensor(1.0), constraint=dist.constraints.positive)
        pyro.sample("z", PowerSpherical(loc, kappa))

    elbo = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=0)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), elbo)
    for _ in range(150):
        svi.step()
    assert (pyro.param("loc") @ m).item() > 0.98
    assert sphere.check(pyro.param("loc"))
    assert pyro.param("kappa").item() > 10


def test_the_jit_elbo_of_a_hyperspherical_vae_is_the_plain_one_in_distribution():
    """``--jit --prior hyperspherical`` (the sphere's dimension was a traced tensor, a ValueError
    of 128 lines): the compiled ELBO draws in another order than the plain one, so their
    estimates agree in distribution, not draw by draw: the mean loss and the mean gradient of
    a few encoder weights over 300 estimates, within 5 standard errors."""
    import warnings

    from pyro_vae import VAE
    from pyro_vae.isolation import isolated
    from pyro_vae.objectives import make_elbo

    x = torch.bernoulli(torch.full((16, 12), 0.4), generator=torch.Generator().manual_seed(0))
    stats = []
    for jit in (False, True):
        with isolated(0), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation
            vae = VAE(data_dim=12, latent_dim=3, hidden_sizes=(8,), prior="hyperspherical")
            elbo = make_elbo("elbo", "reparam", 1, jit)
            draws = []
            for _ in range(300):
                vae.zero_grad()
                loss = elbo.loss_and_grads(vae.model, vae.guide, x)
                weights = next(vae.encoder.parameters()).grad.flatten()[:3]
                draws.append(torch.cat([torch.tensor([loss]), weights.double()]))
            draws = torch.stack(draws).double()
            stats.append((draws.mean(0), draws.std(0) / len(draws) ** 0.5))
    (plain, plain_se), (jit, jit_se) = stats
    assert ((plain - jit).abs() <= 5 * torch.hypot(plain_se, jit_se)).all(), (plain, jit)
