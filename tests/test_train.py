import json
import math

import pyro
import pytest
import torch

from pyro_vae import (
    CheckpointError,
    ConfigError,
    DataError,
    OutputError,
    TrainConfig,
    fit,
    load_run,
)
from pyro_vae.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.data import load_dataset
from pyro_vae.evaluate import importance_sampled_log_likelihood
from pyro_vae.objectives import make_elbo
from pyro_vae.optim import lr_factor
from pyro_vae.train import CHECKPOINT_FILE, METRICS_FILE, TrainingDiverged

SMALL = dict(
    dataset="mnist-sample", train_size=512, batch_size=64, hidden_sizes=(64,), latent_dim=5
)


def small(**overrides) -> TrainConfig:
    return TrainConfig(**{**SMALL, **overrides})


def elbo_per_image(vae, images, num_particles):
    """The ELBO of each image, averaged over ``num_particles`` samples, ``(N,)``."""
    return importance_sampled_log_likelihood(vae.model, vae.guide, images, num_particles)[1]


@pytest.mark.parametrize(
    "objective, estimator, num_particles, min_gain",
    [
        ("elbo", "reparam", 1, 20.0),
        ("elbo", "reinforce", 1, 0.0),  # score-function gradients: slow, but it must improve
        ("elbo-analytic-kl", "reparam", 1, 20.0),
        ("iwae", "reparam", 5, 20.0),
        ("elbo", "reparam", 3, 20.0),
    ],
    ids=["elbo-reparam", "elbo-reinforce", "analytic-kl", "iwae-k5", "elbo-k3"],
)
def test_short_training_improves_the_test_elbo(objective, estimator, num_particles, min_gain):
    lr, epochs = (3e-3, 3) if estimator == "reparam" else (1e-3, 6)
    settings = dict(
        objective=objective, estimator=estimator, num_particles=num_particles, train_size=2048
    )
    data = load_dataset("mnist-sample")
    result = fit(small(epochs=epochs, learning_rate=lr, **settings), data=data)
    # the same seed's untrained network is the baseline
    untrained = fit(small(epochs=1, learning_rate=1e-12, **settings), data=data)
    before = elbo_per_image(untrained.vae, result.test_images, num_particles=5)
    after = elbo_per_image(result.vae, result.test_images, num_particles=5)
    gain = after - before  # per image, nats
    se = gain.std() / len(gain) ** 0.5
    assert gain.mean() > 5 * se and gain.mean() > min_gain, (gain.mean(), se)
    assert len(result.history) == epochs
    assert all(
        set(row) == {"epoch", "step", "train_elbo", "valid_elbo", "seconds"}
        for row in result.history
    )
    for a, b in zip(untrained.vae.parameters(), result.vae.parameters(), strict=True):
        assert not torch.equal(a, b)


def test_jit_elbo_trains_like_the_plain_one():
    plain = fit(small(epochs=1, objective="elbo"))
    jit = fit(small(epochs=1, objective="elbo", jit=True))
    assert abs(plain.history[0]["valid_elbo"] - jit.history[0]["valid_elbo"]) < 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(latent_dim=0), "latent_dim must be a positive"),
        (dict(learning_rate=0.0), "learning rate must be positive"),
        (dict(learning_rate=-1e-3), "learning rate must be positive"),
        (dict(num_particles=0), "at least 1"),
        (dict(objective="iwae", estimator="reinforce"), "needs objective 'elbo'"),
        (dict(objective="elbo-analytic-kl", estimator="reinforce"), "needs objective 'elbo'"),
        (dict(dataset="imagenet"), "unknown dataset"),
        (dict(likelihood="poisson"), "unknown likelihood"),
        (dict(objective="iwae", jit=True), "no JIT"),
        (dict(epochs=0), "epochs must be"),
    ],
)
def test_bad_settings_are_refused_before_training(overrides, message):
    with pytest.raises(ConfigError, match=message):
        fit(small(**overrides))


def test_grey_levels_refused_for_bernoulli():
    with pytest.raises(DataError, match="grey levels"):
        fit(small(binarize="none"))


def test_grey_level_likelihoods_train():
    for likelihood in ("continuous-bernoulli", "gaussian"):
        result = fit(small(likelihood=likelihood, epochs=2))
        assert result.config.binarize == "none"
        assert result.history[1]["valid_elbo"] > result.history[0]["valid_elbo"]


def test_run_folder_and_checkpoint_round_trip(tmp_path):
    result = fit(small(epochs=2), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["latent_dim"] == 5
    rows = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert rows == result.history
    loaded = load_run(tmp_path)
    assert loaded.config == result.config and loaded.history == result.history
    assert loaded.image_shape == (28, 28)
    for a, b in zip(
        result.vae.state_dict().values(), loaded.vae.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    x = result.test_images[:10]
    assert torch.equal(result.vae.reconstruct(x), loaded.vae.reconstruct(x))


@pytest.mark.parametrize("estimator", ["reparam", "reinforce-baseline", "reinforce-nn-baseline"])
@pytest.mark.numerics
def test_resume_reproduces_an_uninterrupted_run(tmp_path, estimator):
    settings = {"estimator": estimator, **({"objective": "elbo"} if estimator != "reparam" else {})}
    whole = fit(small(epochs=3, **settings), tmp_path / "whole")
    fit(small(epochs=1, **settings), tmp_path / "split")
    resumed = fit(small(epochs=3, **settings), tmp_path / "split", resume=True)
    for key in ("train_elbo", "valid_elbo", "step"):
        assert [r[key] for r in resumed.history] == [r[key] for r in whole.history]
    for a, b in zip(whole.vae.parameters(), resumed.vae.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_a_different_config(tmp_path):
    fit(small(epochs=1), tmp_path)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(CheckpointError, match="different config.*latent_dim: 5 != 6"):
        fit(small(epochs=2, latent_dim=6), tmp_path, resume=True)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before


def test_new_run_refuses_a_folder_that_holds_one(tmp_path):
    fit(small(epochs=1), tmp_path)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        fit(small(epochs=1), tmp_path)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not-a-checkpoint"])
def test_corrupt_checkpoint_is_reported_and_kept(tmp_path, damage):
    fit(small(epochs=1), tmp_path)
    path = tmp_path / CHECKPOINT_FILE
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    damaged = path.read_bytes()
    with pytest.raises(CheckpointError, match="corrupt or truncated|not a pyro_vae checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        fit(small(epochs=2), tmp_path, resume=True)
    assert path.read_bytes() == damaged  # nothing was written over it


def test_real_divergence_is_reported_and_writes_no_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match="diverged at epoch 1"):
        fit(small(epochs=1, learning_rate=1e12), tmp_path)
    assert not (tmp_path / CHECKPOINT_FILE).exists()


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    fit(small(epochs=1), tmp_path)
    good = (tmp_path / CHECKPOINT_FILE).read_bytes()
    step = pyro.infer.SVI.step
    calls = []

    def nan_on_third_step(self, *args, **kwargs):
        calls.append(1)
        return float("nan") if len(calls) == 3 else step(self, *args, **kwargs)

    monkeypatch.setattr(pyro.infer.SVI, "step", nan_on_third_step)
    with pytest.raises(TrainingDiverged, match="epoch 2, step 11.*epoch 1 is kept"):
        fit(small(epochs=2), tmp_path, resume=True)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == good
    assert len((tmp_path / METRICS_FILE).read_text().splitlines()) == 1


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    state = dict(config={}, epoch=1, model={}, optimizer={}, rng={}, history=[])
    save_checkpoint(path, state)
    good = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OutputError, match="disk full"):
        save_checkpoint(path, {**state, "epoch": 2})
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


@pytest.mark.slow
def test_real_mnist_few_hundred_steps(data_dir):
    config = TrainConfig(dataset="mnist", data_dir=str(data_dir), train_size=25600, epochs=1)
    result = fit(config)  # 200 steps of the default 784-400-20 VAE
    elbo = result.history[0]["valid_elbo"]
    # an untrained VAE scores about -545 nats; 200 steps bring it well past -160
    assert -160 < elbo < -100, elbo


def _recording_optimizers(monkeypatch, **joint_adam_options) -> list:
    """Make fit's optimizer with these JointOptimizer options, and keep each one made."""
    import pyro_vae.train as train

    created, make_optimizer = [], train.make_optimizer

    def recording(config):
        optim = make_optimizer(config)
        for name, value in joint_adam_options.items():
            setattr(optim, name, value)
        created.append(optim)
        return optim

    monkeypatch.setattr(train, "make_optimizer", recording)
    return created


@pytest.mark.numerics
def test_joint_adam_is_pyros_adam_bit_for_bit(monkeypatch):
    """The multi-tensor JointOptimizer gives exactly what Pyro's one-Adam-per-tensor gives, with
    clipping and the nn baseline's own learning rate."""
    import pyro_vae.train as train

    config = small(epochs=2, estimator="reinforce-nn-baseline", objective="elbo", clip_norm=5.0,
                   baseline_learning_rate=3e-2)  # fmt: skip
    created = _recording_optimizers(monkeypatch, fused=False)
    joint = fit(config)
    optim = created[0].optim
    assert optim.defaults["foreach"] and not optim.defaults["fused"]
    # the decaying average is a new tensor every step: the optimizer must not grow with it
    assert (
        sum(len(g["params"]) for g in optim.param_groups) == len(list(joint.vae.parameters())) + 1
    )

    def pyros_adam(config):
        def per_parameter(name):
            baseline = name.startswith("baseline.")
            return {"lr": config.baseline_learning_rate if baseline else config.learning_rate}

        return pyro.optim.Adam(per_parameter, {"clip_norm": config.clip_norm})

    monkeypatch.setattr(train, "make_optimizer", pyros_adam)
    reference = fit(config)
    for a, b in zip(joint.vae.parameters(), reference.vae.parameters(), strict=True):
        assert torch.equal(a, b)
    assert joint.history == [
        {**row, "seconds": mine["seconds"]}
        for row, mine in zip(reference.history, joint.history, strict=True)
    ]


def test_fit_steps_with_fused_adam(monkeypatch):
    created = _recording_optimizers(monkeypatch)
    fused = fit(small(epochs=1, train_size=256))
    assert created[0].optim.defaults["fused"]  # the default, where this torch has it
    for p in fused.vae.parameters():
        assert p.grad is None  # set to None after each step, not zeroed


@pytest.mark.numerics
def test_fused_adam_agrees_with_the_multi_tensor_one_to_rounding():
    """The two Adam updates of torch, fed the same gradients for 20 steps (no training: a
    parameter's change would feed back into its next gradient, which no rounding bound
    follows), differ by rounding alone.

    The bound: a step computes ``p - lr m_hat / (sqrt(v_hat) + eps)`` in a few operations, each
    rounded to u = 2^-24 of its size in either implementation, in another order. The
    moments carry their rounding from step to step: m's is at most u / (1 - beta1) = 10 u of
    the largest gradient, v's at most 20 u (20 steps); so the update's error is at most
    lr (10 u max|g| / rms(g) + 10 u + a few u), under 64 u lr for these gradients
    (max / rms < 3 over 20 normal draws, but for 1e-3 odds per element), and the subtraction
    adds u |p|. Summed over the steps: |difference| <= 20 u (|p| + 64 lr). A different
    algorithm (another eps, a bias correction missed) is off by a good part of lr.
    """
    from pyro_vae.isolation import isolated
    from pyro_vae.optim import JointOptimizer

    lr, steps, u = 1e-3, 20, 2.0**-24
    results = []
    for fused in (True, False):
        with isolated(0):
            optim = JointOptimizer(lambda name: lr, fused=fused)
            p = pyro.param("w", torch.randn(64, 50)).unconstrained()
            scales = torch.logspace(-6, 2, 50)  # gradients of very different sizes, by column
            noise = torch.Generator().manual_seed(1)
            for _ in range(steps):
                p.grad = torch.randn(p.shape, generator=noise) * scales
                optim([p])
            assert bool(optim.optim.defaults["fused"]) is fused
            results.append((p.detach().clone(), optim.get_state()["w"]))
    (a, a_state), (b, b_state) = results
    assert ((a - b).abs() <= steps * u * (a.abs() + 64 * lr)).all(), (a - b).abs().max()
    # the moments: 10 u of the largest gradient of a column (m), 20 u of v's size (v)
    biggest = scales * 4.5  # |g| < 4.5 sigma over 20 x 64 draws but for 1e-2 odds in all
    assert ((a_state["exp_avg"] - b_state["exp_avg"]).abs() <= 10 * u * biggest).all()
    v = a_state["exp_avg_sq"]
    assert ((v - b_state["exp_avg_sq"]).abs() <= 20 * u * v + 1e-45).all()


def test_learning_rate_schedule_of_burda_et_al():
    assert lr_factor("constant", 1234) == 1.0
    stage = [round(-7 * math.log10(lr_factor("iwae", epoch))) for epoch in range(3281)]
    # stage i lasts 3^i epochs: 1, 3, 9, ..., 2187 epochs, 3280 in all; then it stays at 7
    assert [stage.count(i) for i in range(8)] == [1, 3, 9, 27, 81, 243, 729, 2187 + 1]
    assert stage == sorted(stage) and stage[3279] == 7
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_factor("cosine", 0)


def test_training_follows_the_schedule_and_eps(monkeypatch):
    created = _recording_optimizers(monkeypatch)
    fit(small(epochs=2, train_size=128, lr_schedule="iwae", adam_eps=1e-4, learning_rate=2e-3))
    group = created[0].optim.param_groups[0]
    assert group["eps"] == 1e-4
    assert group["lr"] == pytest.approx(2e-3 * 10 ** (-1 / 7), rel=1e-12)  # epoch 2: stage 1


def test_particle_plate_only_for_several_particles():
    assert not make_elbo("elbo-analytic-kl").vectorize_particles
    assert not make_elbo("elbo", "reinforce-baseline").vectorize_particles
    assert make_elbo("iwae", num_particles=5).vectorize_particles
    assert make_elbo("elbo", num_particles=3).vectorize_particles
