"""The optimizer choice: Adagrad (Kingma & Welling 2013) against Pyro's own, weight decay as
the gradient of a Gaussian prior on the parameters, resume, and the refusals."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import ConfigError, TrainConfig, fit
from pyro_vae.optim import JointOptimizer

# equalities and closed forms: CI runs these again with another CPU's arithmetic
pytestmark = pytest.mark.numerics

SMALL = dict(dataset="mnist-sample", train_size=256, batch_size=64, hidden_sizes=(32,),
             latent_dim=3, optimizer="adagrad", learning_rate=0.02)  # fmt: skip


def test_adagrad_is_pyros_adagrad(monkeypatch):
    """One Adagrad over all parameters steps as Pyro's one-Adagrad-per-tensor does."""
    import pyro_vae.train as train

    joint = fit(TrainConfig(**SMALL, epochs=2))
    adam = fit(TrainConfig(**{**SMALL, "optimizer": "adam"}, epochs=2))
    assert not torch.allclose(next(adam.vae.parameters()), next(joint.vae.parameters()))
    pyros = lambda config: pyro.optim.Adagrad({"lr": config.learning_rate})  # noqa: E731
    monkeypatch.setattr(train, "make_optimizer", pyros)
    reference = fit(TrainConfig(**SMALL, epochs=2))
    for a, b in zip(joint.vae.parameters(), reference.vae.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _model(data):
    loc = pyro.param("loc", torch.tensor([0.5, -1.0, 2.0]))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=data)


def _guide(data):
    pass


def _with_prior(decay):
    """The model with ``log N(loc; 0, I / decay)`` added, once per step."""

    def model(data):
        _model(data)
        pyro.factor("prior", -0.5 * decay * (pyro.param("loc") ** 2).sum())

    return model


@pytest.mark.parametrize("algorithm", ["adam", "adagrad"])
def test_weight_decay_is_the_gradient_of_a_gaussian_prior(algorithm):
    """``weight_decay = c`` steps as the loss plus ``c |theta|^2 / 2`` would: with the loss
    summed over M of N images, c = M / N is a N(0, I) prior on the parameters."""
    data = torch.randn(20, 3)
    decay = 0.3

    def train(model, weight_decay):
        pyro.clear_param_store()
        optim = JointOptimizer(lambda name: 0.1, algorithm=algorithm, weight_decay=weight_decay,
                               fused=False)  # fmt: skip
        svi = pyro.infer.SVI(model, _guide, optim, pyro.infer.Trace_ELBO())
        for _ in range(5):
            svi.step(data)
        return pyro.param("loc").detach().clone()

    decayed = train(_model, decay)
    torch.testing.assert_close(decayed, train(_with_prior(decay), 0.0), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(decayed, train(_model, 0.0))


def test_an_adagrad_run_resumes_as_uninterrupted(tmp_path):
    settings = dict(SMALL, weight_decay=64 / 256)
    whole = fit(TrainConfig(**settings, epochs=3), tmp_path / "whole")
    fit(TrainConfig(**settings, epochs=1), tmp_path / "split")
    resumed = fit(TrainConfig(**settings, epochs=3), tmp_path / "split", resume=True)
    for a, b in zip(whole.vae.parameters(), resumed.vae.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(dict(optimizer="sgd"), id="unknown optimizer"),
        pytest.param(dict(weight_decay=-0.1), id="negative decay"),
        pytest.param(dict(weight_decay=float("nan")), id="nan decay"),
        pytest.param(dict(weight_decay="0.1"), id="string decay"),
    ],
)
def test_bad_settings_are_refused(settings):
    with pytest.raises(ConfigError):
        TrainConfig(**settings).validate()


def test_the_cli_refuses_with_one_line(capsys, tmp_path):
    from conftest import cli_fails

    argv = ["train", "--dataset", "mnist-sample", "--weight-decay", "-1", "--out",
            str(tmp_path / "r")]  # fmt: skip
    assert "weight_decay" in cli_fails(argv, capsys) and not (tmp_path / "r").exists()
