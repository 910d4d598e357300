"""Monte Carlo EM (pyro_vae.objectives.MonteCarloEM): its E-step against the exact posterior
of a linear-Gaussian model, its two gradients against what they should be, and as a training
objective of the CLI and fit."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import ConfigError, TrainConfig
from pyro_vae.objectives import MonteCarloEM

SIGMA = 0.6
# x (3) = W z (2) + b + noise; float64, as every test of the model runs
W = torch.tensor([[1.0, 0.5], [-0.7, 1.2], [0.3, -0.4]], dtype=torch.float64)
BIAS = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)


def model(x):
    w = pyro.param("w", W.clone())
    b = pyro.param("b", BIAS.clone())
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w.T + b, SIGMA).to_event(1), obs=x)


def guide(x):
    loc = pyro.param("loc", torch.zeros(2))
    with pyro.plate("data", x.shape[0]):  # a poor guide: the chains must find the posterior
        pyro.sample("z", dist.Normal(loc.expand(x.shape[0], 2), 1.5).to_event(1))


def exact_posterior(x):
    """p(z|x) = N(mu, Sigma), Sigma = (I + W^T W / s^2)^-1, mu = Sigma W^T (x - b) / s^2."""
    cov = torch.linalg.inv(torch.eye(2) + W.T @ W / SIGMA**2)
    return cov @ W.T @ (x - BIAS) / SIGMA**2, cov


def standard_errors_off(z, x):
    """How many Monte Carlo standard errors the mean and covariance of ``n`` independent draws
    ``z`` (n, 2) are from those of the exact posterior p(z|x): ((2,), (2, 2)). For Gaussian
    draws, se(mean_i) = sqrt(S_ii / n), se(cov_ij) = sqrt((S_ii S_jj + S_ij^2) / n)."""
    n = z.shape[0]
    mu, cov = exact_posterior(x)
    var = torch.diagonal(cov)
    mean_off = (z.mean(0) - mu) / (var / n).sqrt()
    cov_off = (torch.cov(z.T) - cov) / ((torch.outer(var, var) + cov**2) / n).sqrt()
    return mean_off, cov_off


def chains_from_a_poor_guide(n=4000):
    """``n`` chains for one image, started at draws of a guide N(0, 1.5^2 I): the posterior's
    mean is (0.67, -0.26), its standard deviations 0.44 and 0.41."""
    x = torch.tensor([0.9, -1.1, 0.5])
    start = {"z": 1.5 * torch.randn(n, 2)}
    mean_off, _ = standard_errors_off(start["z"], x)
    assert mean_off.abs().max() > 50  # the checks below have power: the start is far off
    return x, x.expand(n, 3), start


def test_the_transitions_leave_the_exact_posterior_invariant(float64):
    """Chains started at exact draws stay exact: at the step the adaptation settles at here
    (0.4, 0.9 of the proposals accepted), where the Metropolis correction matters (without
    it the variances come out 12 and 13 standard errors too wide)."""
    x = torch.tensor([0.9, -1.1, 0.5])
    mu, cov = exact_posterior(x)
    start = {"z": mu + torch.randn(4000, 2) @ torch.linalg.cholesky(cov).T}
    mcem = MonteCarloEM(initial_step_size=0.4)
    z, rate = mcem.e_step(model, start, x.expand(4000, 3), adapt=False)
    assert rate == pytest.approx(0.9, abs=0.05)
    mean_off, cov_off = standard_errors_off(z["z"], x)
    assert (mean_off.abs() < 5).all(), mean_off
    assert (cov_off.abs() < 5).all(), cov_off


def test_one_e_step_from_a_poor_guide_is_not_the_posterior(float64):
    """What a training step does: one E-step at the defaults (3 transitions of 10 leapfrog
    steps of 0.1) moves the guide's draws toward the posterior, not onto it. Measured: means
    31 and 34 standard errors off, variances 74 and 135."""
    x, xs, start = chains_from_a_poor_guide()
    z, rate = MonteCarloEM().e_step(model, start, xs, adapt=False)
    assert rate > 0.9
    mean_off, cov_off = standard_errors_off(z["z"], x)
    assert (mean_off.abs() > 10).all(), mean_off
    assert (torch.diagonal(cov_off) > 25).all(), cov_off  # still too wide, as the guide is


def test_ten_e_steps_from_a_poor_guide_sample_the_exact_posterior(float64):
    """The same chains run on for ten E-steps (30 transitions) have the posterior's mean and
    covariance, within 5 standard errors of Monte Carlo."""
    x, xs, start = chains_from_a_poor_guide()
    mcem, z = MonteCarloEM(), start
    for _ in range(10):
        z, _ = mcem.e_step(model, z, xs, adapt=False)
    mean_off, cov_off = standard_errors_off(z["z"], x)
    assert (mean_off.abs() < 5).all(), mean_off
    assert (cov_off.abs() < 5).all(), cov_off


def test_a_chain_continued_is_one_longer_chain(float64):
    """Two E-steps of 3 transitions from the same seed are one E-step of 6, bit for bit: the
    longer chain ``num_transitions`` asks for is the chain the E-steps would run on."""
    x = torch.randn(50, 3)
    start = {"z": 1.5 * torch.randn(50, 2)}
    pyro.set_rng_seed(5)
    z, _ = MonteCarloEM().e_step(model, start, x, adapt=False)
    z, _ = MonteCarloEM().e_step(model, z, x, adapt=False)
    pyro.set_rng_seed(5)
    longer, _ = MonteCarloEM(num_transitions=6).e_step(model, start, x, adapt=False)
    assert torch.equal(z["z"], longer["z"])


def test_the_step_size_moves_by_the_rate_times_the_acceptance_gap(float64):
    """log h moves by adaptation_rate * (mean acceptance - target) after each E-step: at the
    defaults at most 0.05 * 0.1 = 0.005 up, an e-fold in no fewer than 200 E-steps."""
    x = torch.randn(20, 3)
    mcem = MonteCarloEM()
    for _ in range(3):
        before = math.log(mcem.step_size())
        _, rate = mcem.e_step(model, {"z": torch.randn(20, 2)}, x)
        assert math.log(mcem.step_size()) - before == pytest.approx(0.05 * (rate - 0.9))


def test_the_step_size_adapts_toward_the_target_rate(float64):
    x = torch.randn(200, 3)
    mcem = MonteCarloEM(num_transitions=2, initial_step_size=2.0, adaptation_rate=0.5)
    pyro.set_rng_seed(1)
    rates = []
    for _ in range(60):
        _, rate = mcem.e_step(model, {"z": torch.randn(200, 2)}, x)
        rates.append(rate)
    assert rates[0] < 0.6  # a step of 2 overshoots
    assert sum(rates[-10:]) / 10 == pytest.approx(0.9, abs=0.05)
    assert mcem.STEP_SIZE in pyro.get_param_store()


def test_each_gradient_reaches_its_own_parameters(float64):
    """The guide's gradient is minus the ELBO's at its draw (Pyro's Trace_ELBO on the same
    draw); the model's is minus log p(x, z) at the E-step's samples: rerun from the same seed,
    the E-step returns those samples."""
    x = torch.randn(50, 3)
    mcem = MonteCarloEM(num_transitions=2)
    pyro.set_rng_seed(3)
    loss = mcem.loss_and_grads(model, guide, x)
    got = {n: pyro.param(n).unconstrained().grad.clone() for n in ("w", "b", "loc")}
    for n in got:
        pyro.param(n).unconstrained().grad = None
    pyro.set_rng_seed(3)
    trace_elbo = pyro.infer.Trace_ELBO(max_plate_nesting=1)
    expected_loss = trace_elbo.loss_and_grads(model, guide, x)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    assert torch.allclose(got["loc"], pyro.param("loc").unconstrained().grad, rtol=1e-10)
    for n in got:
        pyro.param(n).unconstrained().grad = None
    del pyro.get_param_store()[MonteCarloEM.STEP_SIZE]  # the first step adapted it
    pyro.set_rng_seed(3)
    draw = pyro.poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    z, _ = MonteCarloEM(num_transitions=2).e_step(model, {"z": draw}, x)
    log_p, _ = mcem.log_joint(model, z, x)
    w, b = pyro.param("w"), pyro.param("b")
    grad_w, grad_b = torch.autograd.grad(-log_p.sum(), [w, b])
    assert torch.allclose(got["w"], grad_w, rtol=1e-10)
    assert torch.allclose(got["b"], grad_b, rtol=1e-10)


def test_learns_the_decoder_of_a_linear_gaussian_model(float64):
    """From a wrong bias, EM climbs the exact log-likelihood N(x; b, W W^T + s^2 I)."""
    pyro.set_rng_seed(0)
    x = torch.randn(500, 2) @ W.T + BIAS + SIGMA * torch.randn(500, 3)
    pyro.param("w", W.clone())
    pyro.param("b", BIAS + 1.5)  # far off

    def exact_log_likelihood():
        cov = pyro.param("w") @ pyro.param("w").T + SIGMA**2 * torch.eye(3)
        return dist.MultivariateNormal(pyro.param("b"), cov).log_prob(x).mean().item()

    before = exact_log_likelihood()
    mcem = MonteCarloEM(num_transitions=10)  # enough from this poor guide
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), mcem)
    for _ in range(150):
        svi.step(x)
    assert exact_log_likelihood() > before + 1.0
    assert torch.allclose(pyro.param("b").detach(), x.mean(0), atol=0.15)


@pytest.mark.parametrize(
    "settings, message",
    [
        pytest.param(dict(estimator="reinforce"), "takes no estimator", id="reinforce"),
        pytest.param(dict(num_particles=3), "one sample a step", id="K"),
        pytest.param(dict(jit=True), "JIT", id="jit"),
        pytest.param(dict(kl_weight=0.5), "no KL term", id="kl weight"),
        pytest.param(dict(prior="hyperspherical"), "sphere", id="sphere"),
    ],
)
def test_refused_combinations(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(objective="mcem", **settings).validate()


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(num_leapfrog=0), id="no leapfrog"),
        pytest.param(dict(num_transitions=1.5), id="half a transition"),
        pytest.param(dict(target_accept=1.0), id="accept all"),
        pytest.param(dict(initial_step_size=-0.1), id="negative step"),
        pytest.param(dict(adaptation_rate=math.nan), id="nan rate"),
    ],
)
def test_the_class_refuses_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        MonteCarloEM(**kwargs)


def test_the_cli_refuses_with_one_line(capsys, tmp_path):
    from conftest import cli_fails

    argv = ["train", "--dataset", "mnist-sample", "--objective", "mcem", "--prior",
            "hyperspherical", "--out", str(tmp_path / "r")]  # fmt: skip
    err = cli_fails(argv, capsys)
    assert "sphere" in err and not (tmp_path / "r").exists()
