"""The estimator study (``compare-estimators``) for discrete latents: its estimators, its
reference gradient, its refusals."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import cli_fails

from pyro_vae.build import build_vae
from pyro_vae.cli import main
from pyro_vae.compare import compare_estimators, compare_gradients
from pyro_vae.config import TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.gradients import gradient_samples
from pyro_vae.isolation import isolated

STUDY = ["compare-estimators", "--dataset", "mnist-sample", "--train-size", "128",
         "--batch-size", "32", "--hidden-sizes", "8", "--epochs", "1", "--num-estimates", "4",
         "--reference-estimates", "4", "--no-progress"]  # fmt: skip


def test_a_bernoulli_study_compares_every_sampling_estimator_against_the_exact_gradient(
    tmp_path, capsys
):
    out = tmp_path / "study"
    assert main([*STUDY, "--latent", "bernoulli", "--latent-dim", "3", "--gradient-epochs", "0",
                 "1", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "/ disarm" in printed and "the exact gradient (enumerate)" in printed
    with open(out / "gradients.csv") as f:
        rows = list(csv.DictReader(f))
    estimators = ["reinforce", "reinforce-baseline", "reinforce-nn-baseline", "reinforce-loo",
                  "vimco", "arm", "disarm", "gumbel", "straight-through"]  # fmt: skip
    assert list(dict.fromkeys(r["estimator"] for r in rows)) == estimators
    assert len(rows) == 2 * len(estimators) * 2  # stages x estimators x networks
    assert {r["reference"] for r in rows} == {"enumerate"}
    for r in rows:
        assert float(r["total_variance"]) > 0 and -1 <= float(r["cosine"]) <= 1
        if r["estimator"] == "disarm":
            assert float(r["variance_ratio_to_disarm"]) == 1.0
    with open(out / "training.csv") as f:
        trained = {r["estimator"] for r in csv.DictReader(f)}
    assert trained == set(estimators)
    # the staged run is the latent's own estimator's; vimco trained its two-draw bound
    assert (out / "runs" / "disarm" / "checkpoint.pt").is_file()
    vimco = json.loads((out / "runs" / "vimco" / "config.json").read_text())
    assert (vimco["objective"], vimco["num_particles"]) == ("iwae", 2)
    assert json.loads((out / "config.json").read_text())["estimator"] == "disarm"


def test_a_large_categorical_code_is_referred_to_many_leave_one_out_estimates(tmp_path, capsys):
    out = tmp_path / "study"
    argv = [*STUDY, "--latent", "categorical", "--latent-dim", "7", "--categories", "4",
            "--estimators", "reinforce", "gumbel", "--temperature", "0.5",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0  # 4^7 = 16384 codes: more than the 4096 that are summed
    assert "the mean of 4 reinforce-loo estimates" in capsys.readouterr().out
    rows = json.loads((out / "gradients.json").read_text())
    assert {r["reference"] for r in rows} == {"reinforce-loo"}
    assert {r["estimator"] for r in rows} == {"reinforce", "gumbel"}
    gumbel = json.loads((out / "runs" / "gumbel" / "config.json").read_text())
    assert gumbel["temperature"] == 0.5
    reinforce = json.loads((out / "runs" / "reinforce" / "config.json").read_text())
    assert reinforce["temperature"] is None


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--latent", "bernoulli", "--estimators", "reparam"], "has no pathwise gradient"),
        (["--latent", "categorical", "--estimators", "arm"], "categorical latent takes"),
        (["--latent", "bernoulli", "--latent-dim", "20", "--estimators", "enumerate"],
         "more than 4096"),
        (["--estimators", "disarm"], "for discrete latents"),
        (["--latent", "bernoulli", "--estimators", "disarm", "--temperature", "0.5"],
         "compares neither"),
        (["--latent", "bernoulli", "-K", "2"], "drop -K"),
    ],
)  # fmt: skip
def test_the_study_refuses_what_the_latent_refuses_in_one_line(argv, match, tmp_path, capsys):
    err = cli_fails([*STUDY, *argv, "--out", str(tmp_path / "study")], capsys)
    assert match in err
    assert not (tmp_path / "study").exists() or not any((tmp_path / "study").iterdir())


def test_the_api_refuses_a_string_for_the_list_of_estimators(tmp_path):
    config = TrainConfig(dataset="mnist-sample", latent="bernoulli", latent_dim=3, epochs=1)
    with pytest.raises(ConfigError, match="list of estimators"):
        compare_estimators(config, tmp_path / "study", estimators="disarm")


def test_the_reference_is_the_exact_gradient_an_unbiased_estimator_agrees_with():
    """Power check of the study's reference: DisARM's mean of 300 estimates lies within noise
    of it (|mean - reference| <= 5 sqrt(tr S / N), a 5-standard-error bound on the norm); the
    exact gradient is computed apart from the study, by enumeration."""
    config = TrainConfig(dataset="mnist-sample", latent="bernoulli", latent_dim=3,
                         hidden_sizes=(8,))  # fmt: skip
    with isolated(0):
        vae = build_vae(config, (1, 28, 28))
        x = torch.bernoulli(torch.full((16, 784), 0.3))
        rows = compare_gradients(vae, x, ["disarm", "reinforce"], num_samples=300,
                                 reference_samples=2)  # fmt: skip
        exact = gradient_samples(vae, x, "enumerate", 2).encoder.double().mean(0)
    encoder = {r["estimator"]: r for r in rows if r["network"] == "encoder"}
    noise = math.sqrt(encoder["disarm"]["total_variance"] / 300)
    error = encoder["disarm"]["relative_error"] * exact.norm().item()
    assert error <= 5 * noise, (error, noise)
    assert encoder["reinforce"]["total_variance"] > 100 * encoder["disarm"]["total_variance"]
    assert {r["reference"] for r in rows} == {"enumerate"}


def test_the_relaxations_train_at_the_temperature_asked_for_and_each_estimator_once(
    tmp_path, capsys
):
    """A Bernoulli study (its own estimator DisARM takes no temperature) hands the temperature
    and its annealing to the relaxed runs; an estimator named twice is compared once."""
    out = tmp_path / "study"
    argv = [*STUDY, "--latent", "bernoulli", "--latent-dim", "3", "--estimators", "gumbel",
            "gumbel", "reinforce", "--temperature", "0.7", "--temperature-anneal", "0.01",
            "--temperature-min", "0.3", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    gumbel = json.loads((out / "runs" / "gumbel" / "config.json").read_text())
    assert (gumbel["temperature"], gumbel["temperature_anneal"]) == (0.7, 0.01)
    assert gumbel["temperature_min"] == 0.3
    rows = json.loads((out / "gradients.json").read_text())
    assert [r["estimator"] for r in rows] == ["gumbel", "reinforce"] * 2  # encoder, decoder
    assert [r["temperature"] for r in rows] == [0.7, None] * 2


def test_a_categorical_studys_own_gumbel_run_takes_the_temperature(tmp_path, capsys):
    out = tmp_path / "study"
    argv = [*STUDY, "--latent", "categorical", "--latent-dim", "2", "--categories", "3",
            "--estimators", "reinforce", "--temperature", "0.5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0  # gumbel, the variances' yardstick, is trained and measured
    assert json.loads((out / "runs" / "gumbel" / "config.json").read_text())["temperature"] == 0.5


def test_a_study_whose_run_would_have_no_batch_is_refused_before_it_starts(tmp_path, capsys):
    out = tmp_path / "study"
    argv = [*STUDY, "--train-size", "16", "--latent", "bernoulli", "--latent-dim", "3",
            "--estimators", "reinforce-baseline", "--out", str(out)]  # fmt: skip
    assert "fewer training images (16) than one batch of 32" in cli_fails(argv, capsys)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("epochs", [None, 0, ["0"], (0.5,)])
def test_the_api_refuses_gradient_epochs_that_are_not_a_list_of_epochs(epochs, tmp_path):
    config = TrainConfig(dataset="mnist-sample", latent="bernoulli", latent_dim=3, epochs=1)
    with pytest.raises(ConfigError, match="gradient epochs"):
        compare_estimators(config, tmp_path / "study", gradient_epochs=epochs)
    assert not (tmp_path / "study").exists()


def test_the_api_takes_its_estimators_from_an_iterator(tmp_path):
    config = TrainConfig(dataset="mnist-sample", train_size=64, batch_size=32, hidden_sizes=(8,),
                         latent="bernoulli", latent_dim=3, epochs=1)  # fmt: skip
    result = compare_estimators(config, tmp_path / "study", iter(["reinforce"]), num_samples=3,
                                reference_samples=3)  # fmt: skip
    assert {r["estimator"] for r in result.gradients} == {"reinforce"}
    assert set(result.training) == {"disarm", "reinforce"}
