"""Reweighted wake-sleep (pyro_vae.objectives.ReweightedWakeSleep): one set of importance
weights per image, checked against Pyro's RenyiELBO (the wake-theta gradient), Pyro's
ReweightedWakeSleep (one image, where whole-batch and per-image weights agree), and the
weights written out by hand; and as a training objective of the CLI and fit."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import SIGMA, S, guide, model

from pyro_vae import ConfigError, TrainConfig
from pyro_vae.objectives import ReweightedWakeSleep, WakeSleep

# equalities and closed forms: CI runs these again with another CPU's arithmetic
pytestmark = pytest.mark.numerics

K = 6  # particles


def _grads(elbo_step, *args, names="wbac"):
    """The gradients one call of ``elbo_step`` leaves on the parameters, then cleared."""
    pyro.clear_param_store()
    out = elbo_step(*args)
    grads = {}
    for name in names:
        param = pyro.param(name).unconstrained()
        grads[name] = None if param.grad is None else param.grad.clone()
        param.grad = None
    return out, grads


def test_the_model_gradient_and_loss_are_pyros_importance_weighted_bound(float64):
    """Wake-theta climbs each image's IWAE bound with q's density fixed: the decoder's
    gradient and the loss equal Pyro's RenyiELBO(alpha=0), which keeps one bound per image."""
    x = torch.randn(30) * 1.5
    pyro.set_rng_seed(3)
    mine, g_mine = _grads(ReweightedWakeSleep(K).loss_and_grads, model, guide, x)
    renyi = pyro.infer.RenyiELBO(alpha=0.0, num_particles=K, vectorize_particles=True,
                                 max_plate_nesting=1)  # fmt: skip
    pyro.set_rng_seed(3)
    theirs, g_theirs = _grads(renyi.loss_and_grads, model, guide, x)
    assert mine == pytest.approx(theirs, rel=1e-12)
    for name in "wb":
        assert torch.allclose(g_mine[name], g_theirs[name], rtol=1e-10), name
    pyro.set_rng_seed(3)
    assert ReweightedWakeSleep(K).loss(model, guide, x) == pytest.approx(mine, rel=1e-12)


def test_one_image_matches_pyros_reweighted_wake_sleep(float64):
    """With one image, Pyro's whole-batch weights are the per-image ones: all four gradients
    agree with Pyro's class."""
    x = torch.tensor([0.8])
    pyro.set_rng_seed(5)
    _, g_mine = _grads(ReweightedWakeSleep(K).loss_and_grads, model, guide, x)
    pyro.set_rng_seed(5)
    pyros = pyro.infer.ReweightedWakeSleep(num_particles=K, vectorize_particles=True,
                                           max_plate_nesting=1)  # fmt: skip
    _, g_theirs = _grads(pyros.loss_and_grads, model, guide, x)
    for name in "wbac":
        assert torch.allclose(g_mine[name], g_theirs[name], rtol=1e-10), name


def _written_out(x, eps, w=1.3, b=-0.4, a=0.6, c=0.2):
    """The wake-phi surrogate written out from the same noise ``eps`` (K, B): weights
    normalized over each image's particles."""
    a, c = torch.tensor(a, requires_grad=True), torch.tensor(c, requires_grad=True)
    z = (a * x + c + S * eps).detach()
    log_q = dist.Normal(a * x + c, S).log_prob(z)
    log_w = dist.Normal(w * z + b, SIGMA).log_prob(x) + dist.Normal(0.0, 1.0).log_prob(z)
    normalized = torch.softmax((log_w - log_q).detach(), dim=0)
    (-(normalized * log_q).sum()).backward()
    return {"a": a.grad, "c": c.grad}


def test_the_guide_gradient_normalizes_the_weights_image_by_image(float64):
    """Against the surrogate written out from the same draws: normalizing over the whole batch
    instead (Pyro's class) gives a different gradient, which this test would catch."""
    x = torch.randn(40) * 1.5
    pyro.set_rng_seed(7)
    _, g_mine = _grads(ReweightedWakeSleep(K).loss_and_grads, model, guide, x)
    pyro.set_rng_seed(7)
    eps = torch.randn(K, 40)  # the guide's draw: loc + scale * standard normal noise
    expected = _written_out(x, eps)
    for name in "ac":
        assert torch.allclose(g_mine[name], expected[name], rtol=1e-10), name
    pyro.set_rng_seed(7)
    pyros = pyro.infer.ReweightedWakeSleep(num_particles=K, vectorize_particles=True,
                                           max_plate_nesting=1)  # fmt: skip
    _, g_batch = _grads(pyros.loss_and_grads, model, guide, x)
    assert not torch.allclose(g_batch["a"], expected["a"], rtol=1e-3)


def test_insomnia_mixes_in_the_sleep_phase(float64):
    x = torch.randn(25)
    pyro.set_rng_seed(2)
    _, wake = _grads(ReweightedWakeSleep(K).loss_and_grads, model, guide, x)
    pyro.set_rng_seed(2)
    _, mixed = _grads(ReweightedWakeSleep(K, insomnia=0.25).loss_and_grads, model, guide, x)

    def sleep_only(x):
        ReweightedWakeSleep(K).log_weights(model, guide, x)  # the same draws first
        (-WakeSleep.sleep_log_q(model, guide, (x,), {})).backward()

    pyro.set_rng_seed(2)
    _, sleep = _grads(sleep_only, x, names="ac")
    for name in "ac":
        expected = 0.25 * wake[name] + 0.75 * sleep[name]
        assert torch.allclose(mixed[name], expected, rtol=1e-10), name
    for name in "wb":  # the model's gradient does not depend on the guide's mix
        assert torch.allclose(mixed[name], wake[name], rtol=1e-12)


def test_learns_the_posterior_of_a_linear_gaussian_model(float64):
    """Trained alone (the model fixed), the guide approaches the exact posterior
    p(z|x) = N(w (x - b) / (w^2 + sigma^2), sigma^2 / (w^2 + sigma^2)): loc a x + c."""
    w, b = 1.3, -0.4
    x = w * torch.randn(2000) + b + SIGMA * torch.randn(2000)
    pyro.set_rng_seed(0)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), ReweightedWakeSleep(10))
    for _ in range(600):
        svi.step(x)
        for name in "wb":  # hold the model at the truth
            pyro.param(name).unconstrained().data.copy_(torch.tensor(w if name == "w" else b))
    denominator = w**2 + SIGMA**2
    assert pyro.param("a").item() == pytest.approx(w / denominator, abs=0.03)
    assert pyro.param("c").item() == pytest.approx(-w * b / denominator, abs=0.03)


@pytest.mark.parametrize(
    "settings, message",
    [
        pytest.param(dict(estimator="reinforce"), "takes no estimator", id="reinforce"),
        pytest.param(dict(num_particles=1), "K >= 2", id="one particle"),
        pytest.param(dict(num_particles=5, jit=True), "JIT", id="jit"),
        pytest.param(dict(num_particles=5, kl_weight=2.0), "no KL term", id="kl weight"),
    ],
)
def test_refused_combinations(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(objective="rws", **settings).validate()


@pytest.mark.parametrize("bad", [1, 0, 2.5, "3"])
def test_the_class_refuses_bad_particle_counts(bad):
    with pytest.raises(ConfigError, match="K >= 2"):
        ReweightedWakeSleep(bad)


def test_the_cli_refuses_with_one_line(capsys, tmp_path):
    from conftest import cli_fails

    err = cli_fails(["train", "--dataset", "mnist-sample", "--objective", "rws", "-K", "1",
                     "--out", str(tmp_path / "r")], capsys)  # fmt: skip
    assert "K >= 2" in err and not (tmp_path / "r").exists()
