"""Wake-sleep (pyro_vae.objectives.WakeSleep) against its gradients in closed form on a
linear-Gaussian model, and as a training objective of the CLI and fit."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from linear_gaussian import SIGMA, S, guide, model

from pyro_vae import ConfigError, TrainConfig
from pyro_vae.objectives import WakeSleep

# equalities and closed forms: CI runs these again with another CPU's arithmetic
pytestmark = pytest.mark.numerics


def _closed_form(x, w=1.3, b=-0.4, a=0.6, c=0.2):
    """The expected ascent directions of both phases, summed over the N images.

    wake: E_{z ~ q(z|x_n)} d/d(w, b) log p(x_n, z), with m = a x + c, E z = m, E z^2 = m^2 + s^2:
        d/dw = (x m - w (m^2 + s^2) - b m) / sigma^2,   d/db = (x - w m - b) / sigma^2.
    sleep: E_{(z, x) ~ p} d/d(a, c) log q(z|x), with E x = b, E x^2 = w^2 + b^2 + sigma^2,
        E z x = w, E z = 0:
        d/da = (w - a (w^2 + b^2 + sigma^2) - c b) / s^2,   d/dc = (-a b - c) / s^2.
    """
    m = a * x + c
    n = len(x)
    return {
        "w": ((x * m - w * (m**2 + S**2) - b * m) / SIGMA**2).sum().item(),
        "b": ((x - w * m - b) / SIGMA**2).sum().item(),
        "a": n * (w - a * (w**2 + b**2 + SIGMA**2) - c * b) / S**2,
        "c": n * (-a * b - c) / S**2,
    }


def test_wake_and_sleep_gradients_match_the_closed_forms(float64):
    x = torch.randn(4000) * 1.5 + 0.3
    elbo = WakeSleep()
    draws = {name: [] for name in "wbac"}
    for _ in range(300):
        elbo.loss_and_grads(model, guide, x)
        for name in draws:
            param = pyro.param(name).unconstrained()
            draws[name].append(-param.grad.item())  # ascent direction
            param.grad = None
    expected = _closed_form(x)
    for name, values in draws.items():
        values = torch.tensor(values)
        se = values.std().item() / math.sqrt(len(values))
        assert abs(values.mean().item() - expected[name]) < 5 * se, (name, values.mean(), expected)
        assert se < 0.05 * abs(expected[name]), (name, se)  # the check has power


def test_each_phase_reaches_only_its_own_network(float64):
    """Wake gives the guide no gradient (its sample is detached), sleep gives the model none
    (its dream is detached): with the model's parameters frozen out of the sleep phase, the
    guide's gradient is the sleep phase's alone, and vice versa."""
    x = torch.randn(50)
    elbo = WakeSleep()
    pyro.set_rng_seed(1)
    elbo.loss_and_grads(model, guide, x)
    together = {n: pyro.param(n).unconstrained().grad.clone() for n in "wbac"}
    # the wake phase alone: the guide's parameters get nothing
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    _, log_joint, _ = elbo._wake(model, guide, (x,), {})
    (-log_joint).backward()
    assert pyro.param("a").unconstrained().grad is None or pyro.param("a").unconstrained().grad == 0
    for n in "wb":
        assert torch.equal(pyro.param(n).unconstrained().grad, together[n])


def test_the_reported_loss_is_minus_the_elbo_at_the_wake_sample(float64):
    x = torch.randn(20)
    pyro.set_rng_seed(4)
    loss = WakeSleep().loss_and_grads(model, guide, x)
    pyro.set_rng_seed(4)
    trace = pyro.poutine.trace(guide).get_trace(x)
    replayed = pyro.poutine.trace(pyro.poutine.replay(model, trace=trace)).get_trace(x)
    assert loss == pytest.approx(-(replayed.log_prob_sum() - trace.log_prob_sum()).item())


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(estimator="reinforce"), "takes no estimator"),
        (dict(estimator="stl"), "takes no estimator"),
        (dict(num_particles=5), "one sample a step"),
        (dict(jit=True), "JIT"),
        (dict(kl_weight=2.0), "no KL term"),
        (dict(kl_warmup=2), "no KL term"),
    ],
)
def test_refused_combinations(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(objective="wake-sleep", **settings).validate()


def test_the_cli_refuses_with_one_line(capsys, tmp_path):
    from conftest import cli_fails

    err = cli_fails(["train", "--dataset", "mnist-sample", "--objective", "wake-sleep",
                     "--estimator", "reinforce", "--out", str(tmp_path / "r")], capsys)  # fmt: skip
    assert "takes no estimator" in err and not (tmp_path / "r").exists()
