"""Discrete latents through the whole library: the settings and the defaults that follow them,
every refused pair of latent and estimator in one line, binarized MNIST, training, evaluation,
pictures and a bit-identical resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.data import load_dataset
from pyro_vae.errors import ConfigError, DataError, DataNotFoundError
from pyro_vae.estimators import CONTINUOUS_ESTIMATORS, DISCRETE_ESTIMATORS, ESTIMATORS
from pyro_vae.evaluate import importance_sampled_log_likelihood
from pyro_vae.train import fit


def small(**settings) -> TrainConfig:
    base = dict(dataset="mnist-sample", train_size=256, batch_size=64, hidden_sizes=(16,),
                latent_dim=4, epochs=1)  # fmt: skip
    return TrainConfig(**{**base, **settings})


@pytest.mark.parametrize(
    "settings, resolved",
    [
        ({}, ("gaussian", "normal", "reparam", "elbo-analytic-kl")),
        ({"prior": "hyperspherical"}, ("sphere", "hyperspherical", "reparam", "elbo-analytic-kl")),
        ({"latent": "bernoulli"}, ("bernoulli", "bernoulli", "disarm", "elbo")),
        ({"latent": "categorical"}, ("categorical", "uniform", "gumbel", "elbo")),
        ({"latent": "bernoulli", "estimator": "vimco"},
         ("bernoulli", "bernoulli", "vimco", "iwae")),
        ({"prior": "categorical"}, ("categorical", "categorical", "gumbel", "elbo")),
        ({"latent": "bernoulli", "objective": "rws"}, ("bernoulli", "bernoulli", "reparam", "rws")),
    ],
)  # fmt: skip
def test_the_defaults_follow_the_latent_space(settings, resolved):
    config = TrainConfig(**settings).resolved()
    assert (config.latent, config.prior, config.estimator, config.objective) == resolved
    assert config.categories == (10 if config.latent == "categorical" else None)


def _refusal(latent: str, estimator: str) -> str | None:
    settings = dict(latent=latent, estimator=estimator, latent_dim=3)
    if estimator in ("reinforce-loo", "vimco"):
        settings["num_particles"] = 2
    try:
        TrainConfig(**settings).validate(here=False)
    except ConfigError as e:
        return str(e)
    return None


@pytest.mark.parametrize("latent", ["gaussian", "sphere", "bernoulli", "categorical"])
def test_every_pair_of_latent_and_estimator_trains_or_is_refused_in_one_line(latent):
    takes = {
        "gaussian": CONTINUOUS_ESTIMATORS,
        "sphere": CONTINUOUS_ESTIMATORS,
        "bernoulli": DISCRETE_ESTIMATORS,
        "categorical": tuple(e for e in DISCRETE_ESTIMATORS if e not in ("arm", "disarm")),
    }[latent]
    for estimator in ESTIMATORS:
        refusal = _refusal(latent, estimator)
        if estimator in takes:
            assert refusal is None, (latent, estimator, refusal)
        else:
            assert refusal is not None and "\n" not in refusal, (latent, estimator)
            assert repr(estimator) in refusal and "takes" in refusal


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(latent="bernoulli", estimator="vimco"), "needs K >= 2 draws"),
        (dict(latent="bernoulli", estimator="reinforce-loo"), "needs K >= 2 draws"),
        (dict(latent="bernoulli", estimator="disarm", num_particles=2), "takes K = 1"),
        (dict(latent="bernoulli", estimator="vimco", num_particles=2, objective="elbo"),
         "needs objective 'iwae'"),
        (dict(latent="bernoulli", estimator="disarm", objective="iwae"), "needs objective 'elbo'"),
        (dict(latent="bernoulli", estimator="enumerate", latent_dim=13), "2\\^13, more than 4096"),
        (dict(latent="categorical", estimator="enumerate", latent_dim=4), "10\\^4, more than"),
        (dict(latent="bernoulli", estimator="reinforce", temperature=0.5), "a temperature is for"),
        (dict(latent="bernoulli", estimator="gumbel", temperature=0.0), "positive number"),
        (dict(latent="bernoulli", estimator="gumbel", temperature=float("nan")), "positive"),
        (dict(latent="bernoulli", prior="normal"), "not a distribution on a bernoulli latent"),
        (dict(latent="gaussian", prior="uniform"), "not a distribution on a gaussian latent"),
        (dict(prior="uniform"), "needs a discrete latent"),
        (dict(latent="bernoulli", categories=4), "categories are for a categorical latent"),
        (dict(latent="categorical", categories=1), "at least 2 categories"),
        (dict(latent="bernoulli", objective="mcem"), "a bernoulli latent is discrete"),
        (dict(latent="bernoulli", estimator="disarm", kl_weight=0.5), "--kl-weight other than 1"),
        (dict(latent="bernoulli", estimator="reinforce-loo", num_particles=2, jit=True),
         "no JIT-compiled form"),
        (dict(latent="spherical"), "unknown latent 'spherical'"),
    ],
)  # fmt: skip
def test_refused_settings_say_why_in_one_line(settings, match):
    with pytest.raises(ConfigError, match=match) as info:
        TrainConfig(**settings).validate(here=False)
    assert "\n" not in str(info.value)


def test_a_relaxed_estimator_takes_a_kl_weight():
    TrainConfig(latent="bernoulli", estimator="gumbel", kl_weight=0.5).validate(here=False)


def test_binarized_mnist_is_the_fixed_binarization_with_its_own_split():
    data = load_dataset("binarized-mnist")
    assert (len(data.train_images), len(data.valid_images), len(data.test_images)) == (
        50_000, 10_000, 10_000)  # fmt: skip
    # the data README's pixel means
    assert data.train_images.mean().item() == pytest.approx(0.130562, abs=1e-6)
    assert data.valid_images.mean().item() == pytest.approx(0.131127, abs=1e-6)
    assert data.test_images.mean().item() == pytest.approx(0.132512, abs=1e-6)
    # the file's test images come sorted by digit (its second thousand is mostly ones, mean
    # grey level 0.08): shuffled on load, any thousand of them is near the mean
    for block in data.test_images.split(1000):
        assert block.mean().item() == pytest.approx(0.1325, abs=0.006)
    assert data.train_labels is None and data.test_labels is None  # the file's do not match


def _write_binarized(root, **arrays):
    folder = root / "BinarizedMNIST"
    folder.mkdir(parents=True)
    full = {"x_train": np.zeros((50_000, 784), np.uint8),
            "x_valid": np.ones((10_000, 784), np.uint8),
            "x_test": np.zeros((10_000, 784), np.uint8)}  # fmt: skip
    full.update(arrays)
    np.savez(folder / "binarized_mnist.npz", **{k: v for k, v in full.items() if v is not None})
    return folder / "binarized_mnist.npz"


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(x_valid=None), "has no x_valid"),
        (dict(x_test=np.zeros((10_000, 783), np.uint8)), "x_test has shape \\(10000, 783\\)"),
        (dict(x_train=np.full((50_000, 784), 2, np.uint8)), "values other than 0 and 1"),
    ],
)
def test_a_damaged_binarized_mnist_is_one_line(tmp_path, arrays, match):
    _write_binarized(tmp_path, **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_dataset("binarized-mnist", tmp_path)
    assert "\n" not in str(info.value)


def test_binarized_mnist_missing_or_not_an_npz_is_one_line(tmp_path):
    with pytest.raises(DataNotFoundError, match="not downloaded \\(pyro_vae has no source"):
        load_dataset("binarized-mnist", tmp_path)
    (tmp_path / "BinarizedMNIST").mkdir()
    (tmp_path / "BinarizedMNIST" / "binarized_mnist.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz file"):
        load_dataset("binarized-mnist", tmp_path)


def test_binarized_mnist_validates_on_its_own_validation_set():
    from pyro_vae.splits import run_images

    images = run_images(TrainConfig(dataset="binarized-mnist"))
    assert (len(images.train), len(images.valid)) == (50_000, 10_000)
    assert images.valid.mean().item() == pytest.approx(0.131127, abs=1e-6)
    none = run_images(TrainConfig(dataset="binarized-mnist", valid_fraction=0.0))
    assert (len(none.train), len(none.valid)) == (50_000, 0)


@pytest.mark.numerics
@pytest.mark.parametrize(
    "settings",
    [
        dict(latent="bernoulli"),  # disarm
        dict(latent="bernoulli", estimator="vimco", num_particles=3),
        dict(latent="categorical", latent_dim=3, categories=4, estimator="enumerate"),
        dict(latent="categorical", latent_dim=3, categories=4, estimator="straight-through",
             prior="categorical"),
    ],
    ids=["disarm", "vimco", "categorical-enumerate", "categorical-st"],
)  # fmt: skip
def test_a_discrete_run_trains_evaluates_and_resumes_bit_for_bit(tmp_path, settings):
    whole = fit(small(epochs=2, **settings), tmp_path / "whole")
    fit(small(epochs=1, **settings), tmp_path / "split")
    resumed = fit(small(epochs=2, **settings), tmp_path / "split", resume=True)
    assert [r["train_elbo"] for r in resumed.history] == [r["train_elbo"] for r in whole.history]
    for a, b in zip(whole.vae.parameters(), resumed.vae.parameters(), strict=True):
        assert torch.equal(a, b)
    recorded = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert recorded["latent"] == settings["latent"] and recorded["estimator"] is not None
    # the evaluation scores the discrete guide: log p(x) >= the ELBO, both finite
    log_px, elbo = importance_sampled_log_likelihood(
        whole.vae.model, whole.vae.guide, whole.test_images[:20], num_particles=50)  # fmt: skip
    assert torch.isfinite(log_px).all() and (log_px.mean() >= elbo.mean())


def test_the_cli_trains_a_bernoulli_latent_and_draws_its_pictures(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "mnist-sample", "--latent", "bernoulli", "--latent-dim",
                 "8", "--train-size", "256", "--batch-size", "64", "--hidden-sizes", "16",
                 "--epochs", "1", "--eval-particles", "5", "--eval-images", "20", "--no-progress",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    for picture in ("samples.png", "reconstructions.png", "latent_scatter.png",
                    "interpolation.png", "codes.png"):  # fmt: skip
        assert (out / picture).stat().st_size > 1000
    assert not (out / "manifold.png").exists()
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["active_units"] <= 8
    # no NUTS in a discrete space: one line, and nothing printed before it
    capsys.readouterr()
    assert main(["posterior", str(out)]) != 0
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.count("\n") == 1 and "bernoulli latent is discrete" in printed.err


def test_a_categorical_latent_counts_its_groups_as_units():
    result = fit(small(latent="categorical", latent_dim=3, categories=4, epochs=2,
                       estimator="enumerate"))  # fmt: skip
    from pyro_vae.evaluate import evaluate

    scores = evaluate(result.vae, result.test_images[:200], num_particles=5)
    assert 0 <= scores.active_units <= 3
    per_entry = torch.tensor([0, 0.02, 0, 0, 0, 0, 0.5, 0.5, 0, 0, 0, 0], dtype=torch.float64)
    assert result.vae.latent.units(per_entry).tolist() == [0.02, 0.5, 0.0]


def test_the_published_models_settings(tmp_path):
    """DisARM's "linear" model (no hidden layer) and "nonlinear" one (LeakyReLU(0.3)), with the
    encoder's input centred on the training images' mean, saved and loaded with the run."""
    from pyro_vae.data import as_float
    from pyro_vae.networks import CenteredInput
    from pyro_vae.runfolder import load_run
    from pyro_vae.splits import run_images

    linear = small(latent="bernoulli", hidden_sizes=(), center_input=True)
    result = fit(linear, tmp_path / "linear")
    encoder = result.vae.encoder
    assert isinstance(encoder, CenteredInput)
    assert [type(m).__name__ for m in encoder.net.modules()] == ["Encoder", "Sequential",
                                                                 "Linear"]  # fmt: skip
    train = as_float(run_images(result.config).train)  # uint8 grey levels as stored, to [0, 1]
    torch.testing.assert_close(encoder.mean, train.mean(0), rtol=1e-5, atol=1e-6)
    loaded = load_run(tmp_path / "linear")
    torch.testing.assert_close(loaded.vae.encoder.mean, encoder.mean, rtol=0, atol=0)
    x = result.test_images[:5]
    assert torch.equal(loaded.vae.encode(x)[0], result.vae.encode(x)[0])
    nonlinear = fit(small(latent="bernoulli", hidden_sizes=(8, 8), activation="leaky-relu"))
    slopes = [m.negative_slope for m in nonlinear.vae.modules()
              if isinstance(m, torch.nn.LeakyReLU)]  # fmt: skip
    assert slopes == [0.3] * 4  # two layers in the encoder, two in the decoder


def test_hidden_sizes_may_be_none_from_the_command_line():
    from pyro_vae.cli import build_parser
    from pyro_vae.config import given_settings

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    args = sub.choices["train"].parse_args(["--hidden-sizes", "--center-input"])
    assert given_settings(args) == {"hidden_sizes": (), "center_input": True}


def test_the_temperature_anneals_on_jang_et_als_schedule(monkeypatch):
    from pyro_vae.discrete import RelaxedELBO, temperature_at

    assert temperature_at(1.0, None, 0.5, 10**6) == 1.0
    assert temperature_at(1.0, 1e-5, 0.5, 1000) == pytest.approx(math.exp(-0.01))
    assert temperature_at(1.0, 1e-5, 0.5, 10**6) == 0.5
    seen = []
    original = RelaxedELBO._relaxed

    def recording(self, fn):
        seen.append(self.temperature)
        return original(self, fn)

    monkeypatch.setattr(RelaxedELBO, "_relaxed", recording)
    fit(small(latent="bernoulli", estimator="gumbel", temperature_anneal=0.2,
              temperature_min=0.6, epochs=2))  # fmt: skip
    steps = 2 * 256 // 64  # train_size 256 in batches of 64, two epochs
    assert seen == [temperature_at(1.0, 0.2, 0.6, s) for s in range(1, len(seen) + 1)]
    assert len(seen) == steps and seen[-1] == 0.6 and seen[0] < 1.0


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(estimator="disarm", temperature_anneal=1e-5), "an annealing rate is for"),
        (dict(estimator="gumbel", temperature_anneal=-1.0), "annealing rate must be a positive"),
        (dict(estimator="gumbel", temperature_min=0), "floor must be a positive"),
        (
            dict(estimator="gumbel", temperature=0.3, temperature_anneal=1e-5),
            "starts at 0.3, not above its floor 0.5",
        ),
        (
            dict(estimator="gumbel", temperature_anneal=1e-5, temperature_min=1.0),
            "starts at 1, not above its floor 1",
        ),
        (dict(center_input="yes"), "center_input must be True or False"),
    ],
)
def test_refused_annealing_and_centring(settings, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(latent="bernoulli", **settings).validate(here=False)


def test_the_codes_picture_holds_each_classs_rows():
    import matplotlib

    matplotlib.use("Agg")
    from pyro_vae.plots import codes_figure

    result = fit(small(latent="categorical", latent_dim=3, categories=4))
    labels = torch.arange(30) % 3  # three classes, ten images of each
    fig = codes_figure(result.vae, result.test_images[:30], labels, ("a", "b", "c"), per_class=4)
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape == (12, 12)  # four of each class; 3 groups x 4 classes of columns
    names = [text.get_text() for text in fig.axes[0].texts]
    assert names == ["a", "b", "c"]
    probs = result.vae.latent.point(result.vae.encode(result.test_images[:30][labels == 1][:4])[0])
    torch.testing.assert_close(torch.as_tensor(shown[4:8]), probs)


def test_the_interpolation_of_a_discrete_latent_says_it_is_between_probabilities():
    """The points between two codes' probabilities are not codes: the title says so."""
    import matplotlib

    matplotlib.use("Agg")
    from pyro_vae.model import VAE
    from pyro_vae.plots import interpolation_figure

    x = torch.rand(2, 16)
    titles = {}
    for latent in ("bernoulli", "gaussian"):
        vae = VAE(16, latent_dim=3, hidden_sizes=(4,), latent=latent)
        fig = interpolation_figure(vae, x.reshape(1, 2, 16), (4, 4), steps=3)
        titles[latent] = fig.axes[0].get_title()
    assert titles["bernoulli"].startswith("interpolation between the guide's probabilities")
    assert titles["gaussian"].startswith("interpolation in latent space")
