"""The core's ownership rules: one owner of Pyro's global state, of each setting's checks, and
of what counts as divergence."""

import importlib.util
import random
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_vae import VAE, ConfigError, TrainConfig, evaluate, fit, isolated
from pyro_vae.data import load_dataset
from pyro_vae.train import TrainingDiverged

# equalities and closed forms: CI runs these again with another CPU's arithmetic
pytestmark = pytest.mark.numerics

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(dataset="mnist-sample", train_size=256, batch_size=64, hidden_sizes=(32,),
             latent_dim=3, epochs=1)  # fmt: skip


def _process_state() -> tuple:
    """Everything of the caller's process a library call must leave alone."""
    store = pyro.get_param_store()
    params = {name: value.detach().clone() for name, value in store.items()}
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(), params


def _assert_same_state(before: tuple) -> None:
    torch_rng, numpy_rng, python_rng, params = before
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert np.array_equal(np.random.get_state()[1], numpy_rng)
    assert random.getstate() == python_rng
    store = pyro.get_param_store()
    assert sorted(store.keys()) == sorted(params)
    for name, value in params.items():
        assert torch.equal(store[name].detach(), value)


@pytest.fixture
def script_state():
    """A user's script: its own seed, and its own parameters in Pyro's param store, one of
    them under the very name pyro_vae's encoder registers."""
    pyro.clear_param_store()
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    pyro.param("my_scale", torch.ones(3))
    pyro.get_param_store()["encoder$$$loc.weight"] = torch.zeros(3, 32)
    yield
    pyro.clear_param_store()


def test_fit_leaves_the_scripts_rng_and_param_store_as_they_were(script_state):
    before = _process_state()
    result = fit(TrainConfig(**SMALL))
    _assert_same_state(before)
    # the script's stale "encoder$$$loc.weight" was not what fit trained
    assert result.vae.encoder.loc.weight.shape == (3, 32)
    assert not torch.equal(result.vae.encoder.loc.weight, torch.zeros(3, 32))


def test_fit_gives_the_same_run_whatever_the_callers_state(script_state):
    first = fit(TrainConfig(**SMALL))
    torch.manual_seed(999)  # another caller: other streams, an empty param store
    pyro.clear_param_store()
    second = fit(TrainConfig(**SMALL))
    assert first.history == [{**r, "seconds": s["seconds"]} for r, s in
                             zip(second.history, first.history, strict=True)]  # fmt: skip
    for a, b in zip(first.vae.parameters(), second.vae.parameters(), strict=True):
        assert torch.equal(a, b)


def test_evaluate_leaves_the_scripts_state_and_repeats_itself(script_state):
    result = fit(TrainConfig(**SMALL))
    before = _process_state()
    result.vae.train()  # the caller's mode is the caller's
    a = evaluate(result.vae, result.test_images[:50], num_particles=20, seed=5)
    b = evaluate(result.vae, result.test_images[:50], num_particles=20, seed=5)
    _assert_same_state(before)
    assert a == b
    assert result.vae.training


def test_isolated_restores_the_caller_after_an_error(script_state):
    before = _process_state()
    with pytest.raises(RuntimeError, match="inside"), isolated(seed=7) as store:
        assert len(store) == 0  # a fresh store
        pyro.param("temporary", torch.zeros(2))
        torch.randn(5)
        raise RuntimeError("inside")
    _assert_same_state(before)


def test_isolated_inherit_sees_the_callers_params_and_keeps_none_of_its_own(script_state):
    before = _process_state()
    with isolated(params="inherit") as store:
        assert torch.equal(store["my_scale"], torch.ones(3))
        pyro.param("temporary", torch.zeros(2))
    _assert_same_state(before)


def test_isolated_seeds_like_pyro_set_rng_seed():
    with isolated(seed=11):
        mine = torch.randn(4), np.random.rand(), random.random()
    pyro.set_rng_seed(11)
    theirs = torch.randn(4), np.random.rand(), random.random()
    assert torch.equal(mine[0], theirs[0]) and mine[1:] == theirs[1:]


@pytest.mark.parametrize("error", [ValueError, RuntimeError])
def test_an_error_in_a_step_with_finite_networks_is_not_divergence(error, monkeypatch):
    """A shape bug in a model must reach the caller as itself, not as 'training diverged'."""

    def broken_model(self, x):
        raise error("mat1 and mat2 shapes cannot be multiplied (64x784 and 32x3)")

    monkeypatch.setattr(VAE, "model", broken_model)
    with pytest.raises(error, match="shapes cannot be multiplied"):
        fit(TrainConfig(**SMALL), data=load_dataset("mnist-sample"))


def test_a_non_finite_objective_is_divergence():
    with pytest.raises(TrainingDiverged, match="diverged at epoch 1"):
        fit(TrainConfig(**{**SMALL, "learning_rate": 1e12, "epochs": 2}))


BAD_NETWORKS = [
    pytest.param({"latent_dim": 0}, "latent_dim must be a positive", id="latent 0"),
    pytest.param({"latent_dim": 2.5}, "latent_dim must be a whole number", id="latent 2.5"),
    pytest.param({"hidden_sizes": (0,)}, "hidden sizes", id="hidden 0"),
    pytest.param({"hidden_sizes": "400"}, "hidden sizes", id="hidden str"),
    pytest.param({"activation": "sigmoidal"}, "unknown activation", id="activation"),
    pytest.param({"likelihood": "poisson"}, "unknown likelihood", id="likelihood"),
    pytest.param({"estimator": "pathwise"}, "unknown estimator", id="estimator"),
    pytest.param({"baseline_beta": 1.0}, r"baseline beta must be in \[0, 1\)", id="beta 1"),
]


@pytest.mark.parametrize("settings, message", BAD_NETWORKS)
def test_a_vae_and_a_config_refuse_a_setting_in_the_same_words(settings, message):
    with pytest.raises(ConfigError, match=message) as by_hand:
        VAE(784, **settings)
    with pytest.raises(ConfigError, match=message) as by_config:
        TrainConfig(**settings).validate()
    assert str(by_hand.value) == str(by_config.value)


def test_only_the_isolation_module_touches_pyros_global_state():
    """benchmarks/code_shape.py finds every call that seeds, saves or restores the global RNGs
    or swaps the param store; outside pyro_vae/isolation.py only JointOptimizer's name look-up is
    left (Pyro's own optimizers look names up the same way)."""
    spec = importlib.util.spec_from_file_location("code_shape", ROOT / "benchmarks/code_shape.py")
    code_shape = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code_shape)
    touches = code_shape.main([])["touches"]
    outside = [(module, call) for module, _, call in touches if module != "isolation.py"]
    assert len(touches) > len(outside) and outside == [("optim.py", "pyro.get_param_store")]


def test_a_second_thread_is_refused_while_one_runs_pyro_vae():
    """Pyro's param store and handler stack are the process's: while one thread fits, a fit
    or an evaluation in another is refused at once, and the first run is the run it would
    have been alone."""
    import threading
    import time

    from pyro_vae import ConcurrentUseError
    from pyro_vae.isolation import _holder

    config = TrainConfig(dataset="mnist-sample", train_size=512, batch_size=32, epochs=3,
                         hidden_sizes=(32,), latent_dim=2)  # fmt: skip
    alone = fit(config)
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault("fit", fit(config)))
    thread.start()
    refused = 0
    while thread.is_alive():
        if _holder.acquire(blocking=False):  # the other thread is not inside (yet, or now)
            _holder.release()
            time.sleep(0.001)
            continue
        for call in (lambda: fit(config), lambda: evaluate(alone.vae, alone.test_images[:4])):
            try:
                call()
            except ConcurrentUseError as e:
                assert "another thread of this process is running pyro_vae" in str(e)
                refused += 1
            else:  # only where the other thread had just finished
                assert not thread.is_alive()
    thread.join()
    assert refused >= 2
    for a, b in zip(alone.vae.parameters(), results["fit"].vae.parameters(), strict=True):
        assert torch.equal(a, b)
    # with the other thread done, this one runs again, and may nest its calls
    with isolated():
        assert len(fit(config).history) == 3
