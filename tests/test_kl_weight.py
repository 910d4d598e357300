"""The KL weight (beta-VAE) and its warm-up: the training objective is exactly
``E_q[log p(x|z)] - beta KL(q(z|x) || p(z))`` for every objective and estimator that accepts
a weight (checked against the terms written out from the same draw), the others refuse, the
warm-up's values, and runs that record, resume and evaluate with it."""

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae import VAE, ConfigError, TrainConfig, fit
from pyro_vae.evaluate import kl_per_dimension
from pyro_vae.objectives import check_kl_weight, kl_weight_at, make_elbo

# equalities and closed forms: CI runs these again with another CPU's arithmetic
pytestmark = pytest.mark.numerics

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
BETA = 2.5


def _terms(vae: VAE, x: torch.Tensor, seed: int):
    """``log p(x|z)``, ``log p(z)``, ``log q(z|x)`` and the closed-form KL, summed over the
    batch, written out for the draw ``z`` the guide makes with ``seed``; differentiable in the
    networks' parameters through ``z = loc + scale * eps``."""
    torch.manual_seed(seed)
    z_drawn = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"].detach()
    loc, scale = vae.encoder(x)
    eps = ((z_drawn - loc) / scale).detach()
    z = loc + scale * eps
    logits = vae.decoder(z)[0]
    log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    log_pz = (-0.5 * z.pow(2) - HALF_LOG_2PI).sum()
    log_qz = (-0.5 * eps.pow(2) - scale.log() - HALF_LOG_2PI).sum()
    return log_px_z, log_pz, log_qz, kl_per_dimension(loc, scale).sum()


@pytest.mark.parametrize(
    "objective, estimator",
    [("elbo-analytic-kl", "reparam"), ("elbo", "reparam"), ("elbo", "stl")],
)
@pytest.mark.parametrize("validation", [False, True], ids=["lean", "validated"])
def test_the_loss_is_reconstruction_minus_beta_kl(float64, objective, estimator, validation):
    torch.manual_seed(0)
    vae = VAE(30, latent_dim=3, hidden_sizes=(8,), estimator=estimator)
    x = torch.bernoulli(torch.rand(6, 30))
    params = list(vae.parameters())
    log_px_z, log_pz, log_qz, kl = _terms(vae, x, seed=1)
    if objective == "elbo-analytic-kl":
        expected = -(log_px_z - BETA * kl)
    else:
        expected = -(log_px_z - BETA * (log_qz - log_pz))
    pyro.clear_param_store()
    torch.manual_seed(1)
    with pyro.validation_enabled(validation), vae.weighting_kl(BETA):
        loss = make_elbo(objective, estimator).differentiable_loss(vae.model, vae.guide, x)
    torch.testing.assert_close(loss, expected)
    # reparam: the gradient of the written-out objective. stl drops the score term
    # d log q / d params of the guide's density (Roeder et al. 2017), so only the decoder's
    # gradient is the plain objective's.
    compared = params if estimator == "reparam" else list(vae.decoder.parameters())
    for got, want in zip(
        torch.autograd.grad(loss, compared), torch.autograd.grad(expected, compared), strict=True
    ):
        torch.testing.assert_close(got, want)
    assert vae.kl_weight == 1.0  # outside the block


def test_beta_one_is_the_plain_elbo(float64):
    torch.manual_seed(0)
    vae = VAE(30, latent_dim=3, hidden_sizes=(8,))
    x = torch.bernoulli(torch.rand(6, 30))
    log_px_z, _, _, kl = _terms(vae, x, seed=1)
    torch.manual_seed(1)
    loss = make_elbo().differentiable_loss(vae.model, vae.guide, x)
    torch.testing.assert_close(loss, -(log_px_z - kl))


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(kl_weight=2.0, objective="iwae"), "no KL term"),
        (dict(kl_warmup=3, objective="iwae"), "--kl-warmup needs objective"),
        (dict(kl_weight=0.5, objective="elbo", estimator="reinforce"), "score-function"),
        (dict(kl_weight=0.5, objective="elbo", estimator="reinforce-baseline"), "score-function"),
        (dict(kl_weight=0.0), "positive"),
        (dict(kl_weight=-1.0), "positive"),
        (dict(kl_weight=float("inf")), "positive"),
        (dict(kl_weight="2"), "must be a number"),
        (dict(kl_warmup=-1), "whole number"),
        (dict(kl_warmup=1.5), "whole number"),
    ],
)
def test_refused_settings(settings, message):
    config = TrainConfig(dataset="mnist-sample", **settings)
    with pytest.raises(ConfigError, match=message):
        config.validate()
    # the same words from the objectives' own check
    with pytest.raises(ConfigError, match=message):
        check_kl_weight(
            settings.get("kl_weight", 1.0),
            settings.get("kl_warmup", 0),
            settings.get("objective", "elbo-analytic-kl"),
            settings.get("estimator", "reparam"),
        )


def test_weight_one_is_accepted_with_every_objective():
    check_kl_weight(1.0, 0, "iwae", "reparam")
    check_kl_weight(1.0, 0, "elbo", "reinforce")


def test_warmup_schedule():
    assert [kl_weight_at(2.0, 4, s) for s in range(1, 7)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert kl_weight_at(0.5, 0, 1) == 0.5  # no warm-up


SMALL = dict(
    dataset="mnist-sample", train_size=256, batch_size=64, hidden_sizes=(32,), latent_dim=4
)


def test_a_warmed_up_beta_vae_records_resumes_and_evaluates_as_the_true_model(tmp_path):
    settings = dict(SMALL, kl_weight=3.0, kl_warmup=2, epochs=3)
    whole = fit(TrainConfig(**settings), tmp_path / "whole")
    steps = whole.history[0]["step"]  # global batches an epoch
    assert [r["kl_weight"] for r in whole.history] == [1.5, 3.0, 3.0]
    assert whole.history[0]["step"] == steps and whole.history[1]["step"] == 2 * steps
    assert whole.vae.kl_weight == 1.0  # evaluation sees the true model
    fit(TrainConfig(**{**settings, "epochs": 1}), tmp_path / "split")
    resumed = fit(TrainConfig(**settings), tmp_path / "split", resume=True)
    assert resumed.history == [
        {**r, "seconds": s["seconds"]} for r, s in zip(whole.history, resumed.history, strict=True)
    ]
    for a, b in zip(whole.vae.parameters(), resumed.vae.parameters(), strict=True):
        assert torch.equal(a, b)
    # another weight trains another model
    other = fit(TrainConfig(**{**settings, "kl_weight": 1.0, "kl_warmup": 0}), tmp_path / "b1")
    assert "kl_weight" not in other.history[0]
    assert not torch.equal(next(other.vae.parameters()), next(whole.vae.parameters()))
