"""The training objectives Kingma & Welling (2013) measured AEVB against, and reweighted
wake-sleep, as a user runs them: ``fit`` with run folders, resume, and a short real-MNIST run."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from pyro_vae import TrainConfig, fit
from pyro_vae.objectives import MonteCarloEM, ReweightedWakeSleep, WakeSleep, make_elbo

# equalities and closed forms: CI runs these again with another CPU's arithmetic
pytestmark = pytest.mark.numerics

METHODS = [
    pytest.param("wake-sleep", 1, WakeSleep, id="wake-sleep"),
    pytest.param("rws", 5, ReweightedWakeSleep, id="rws"),
    pytest.param("mcem", 1, MonteCarloEM, id="mcem"),
]


@pytest.mark.parametrize("objective, k, cls", METHODS)
def test_a_short_run_trains_and_resumes_as_uninterrupted(tmp_path, objective, k, cls):
    """Bit for bit: the RNG streams, the optimizer's state and each objective's own state (MCEM's
    step size) come back from the checkpoint."""
    small = dict(dataset="mnist-sample", train_size=256, batch_size=64, hidden_sizes=(64,),
                 latent_dim=4, objective=objective, num_particles=k)  # fmt: skip
    assert isinstance(make_elbo(objective, num_particles=k), cls)
    whole = fit(TrainConfig(**small, epochs=4), tmp_path / "whole")
    first, last = whole.history[0], whole.history[-1]
    assert last["train_elbo"] > first["train_elbo"] and math.isfinite(last["valid_elbo"])
    fit(TrainConfig(**small, epochs=2), tmp_path / "split")
    resumed = fit(TrainConfig(**small, epochs=4), tmp_path / "split", resume=True)
    for a, b in zip(whole.vae.parameters(), resumed.vae.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [r["train_elbo"] for r in resumed.history] == [r["train_elbo"] for r in whole.history]


@pytest.mark.slow
@pytest.mark.parametrize("objective, k, cls", METHODS)
def test_each_method_learns_real_mnist(data_dir, objective, k, cls):
    """A short real-MNIST run (60 steps) of each: the held-out ELBO climbs above that of the
    same run with a learning rate of 1e-9 (about -208 nats: the decoder's output bias starts at
    the mean image). Wake-sleep climbs slowest (about 6 nats here; the others about 40)."""
    config = TrainConfig(dataset="mnist", data_dir=str(data_dir), train_size=6000, epochs=1,
                         batch_size=100, hidden_sizes=(200,), latent_dim=5, objective=objective,
                         num_particles=k, valid_fraction=0.05, learning_rate=3e-3)  # fmt: skip
    untrained = fit(replace(config, learning_rate=1e-9)).history[0]["valid_elbo"]
    trained = fit(config).history[0]["valid_elbo"]
    assert trained > untrained + 4, (untrained, trained)
