"""The settings: one TrainConfig, its flags generated from the fields, ``--config`` files, and
the defaults that follow other settings (the objective follows the estimator)."""

import dataclasses
import json

import pytest
import torch

from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli import build_parser, main
from pyro_vae.config import (
    TrainConfig,
    config_arguments,
    default_objective,
    given_settings,
    read_config_file,
)
from pyro_vae.data import ImageData
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.estimators import CONTINUOUS_ESTIMATORS
from pyro_vae.objectives import MonteCarloEM, make_elbo
from pyro_vae.train import fit

QUICK = ["--dataset", "mnist-sample", "--train-size", "128", "--batch-size", "64",
         "--hidden-sizes", "16", "--latent-dim", "3", "--epochs", "1", "--eval-particles", "5",
         "--eval-images", "20", "--no-progress", "--no-plots"]  # fmt: skip


def _train_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["train"]


def test_every_setting_is_a_train_flag_with_help():
    actions = {a.dest: a for a in _train_parser()._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in actions, f"TrainConfig.{f.name} has no flag"
        assert actions[f.name].default is None  # so that a resume can tell what was given
        assert actions[f.name].help, f"--{f.name} has no help"
    assert actions["learning_rate"].option_strings == ["--lr", "--learning-rate"]
    assert actions["num_particles"].option_strings == ["-K", "--num-particles"]


def test_the_flags_help_shows_the_fields_defaults():
    shown = {flags[-1]: keywords["help"] for _, flags, keywords in config_arguments()}
    assert shown["--latent-dim"] == "default 20"
    assert "(default 400;" in shown["--hidden-sizes"]
    assert "(default 32 64)" in shown["--conv-channels"]
    assert "{" not in "".join(shown.values())  # every placeholder filled


def test_the_study_takes_no_objective_estimator_or_particles():
    """It takes the latent space (its estimators are compared) and the relaxations'
    temperature, not what it sets for every estimator, nor M2's or the CVAE's settings (it
    studies the VAE)."""
    study = {flags[-1] for _, flags, _ in config_arguments(study=True)}
    everything = {flags[-1] for _, flags, _ in config_arguments()}
    left_out = {"--objective", "--estimator", "--num-particles", "--kl-weight", "--kl-warmup",
                "--mcem-transitions", "--model", "--labels", "--label-seed",
                "--aux-loss", "--condition"}  # fmt: skip
    assert everything - study == left_out


def test_flags_become_the_fields_types():
    args = _train_parser().parse_args(["--image-size", "20", "--hidden-sizes", "8", "4",
                                       "--lr", "0.01", "--jit"])  # fmt: skip
    assert given_settings(args) == {"image_size": (20, 20), "hidden_sizes": (8, 4),
                                    "learning_rate": 0.01, "jit": True}  # fmt: skip


@pytest.mark.parametrize("estimator", CONTINUOUS_ESTIMATORS)
def test_the_objective_follows_the_estimator(estimator):
    config = TrainConfig(estimator=estimator)
    assert config.objective is None
    config.validate()  # "reinforce" alone is a valid run
    expected = "elbo-analytic-kl" if estimator == "reparam" else "elbo"
    assert config.resolved().objective == default_objective(estimator) == expected
    assert config.objective is None  # resolved() makes a new config
    # one given is kept, and refused where it cannot train
    chosen = TrainConfig(estimator=estimator, objective="iwae")
    assert chosen.resolved().objective == "iwae"
    if estimator != "reparam":
        with pytest.raises(ConfigError, match="needs objective 'elbo'"):
            chosen.validate()


def test_a_changed_estimator_changes_the_default_objective():
    config = dataclasses.replace(TrainConfig(), estimator="reinforce-baseline")
    assert config.resolved().objective == "elbo"


def test_the_run_records_the_objective_chosen(tmp_path, capsys):
    assert main(["train", "--estimator", "reinforce", "--out", str(tmp_path / "a"), *QUICK]) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["objective"] == "elbo"
    state = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert state["config"]["objective"] == "elbo"


def test_a_run_repeated_from_its_config_with_one_change(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["train", "--out", str(a), *QUICK]) == 0
    assert main(["train", "--config", str(a / "config.json"), "--seed", "1", "--out", str(b),
                 "--no-progress", "--no-plots", "--eval-particles", "5"]) == 0  # fmt: skip
    first, second = (json.loads((run / "config.json").read_text()) for run in (a, b))
    assert {k for k in first if first[k] != second[k]} == {"seed"}
    # the same file and no change: the same run, bit for bit
    assert main(["train", "--config", str(a / "config.json"), "--out", str(c),
                 "--no-progress", "--no-plots", "--eval-particles", "5"]) == 0  # fmt: skip
    same, other = (load_checkpoint(run / "checkpoint.pt")["model"] for run in (c, b))
    mine = load_checkpoint(a / "checkpoint.pt")["model"]
    assert all(torch.equal(mine[k], same[k]) for k in mine)
    assert not all(torch.equal(mine[k], other[k]) for k in mine)


def test_a_toml_file_and_flags_over_it(tmp_path, capsys):
    path = tmp_path / "settings.toml"
    path.write_text('dataset = "mnist-sample"\nlatent_dim = 2\nhidden_sizes = [16]\n'
                    "train_size = 128\nepochs = 1\nbatch_size = 64\n")  # fmt: skip
    assert read_config_file(path)["hidden_sizes"] == [16]
    argv = [
        "train",
        "--config",
        str(path),
        "--latent-dim",
        "3",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        "--no-plots",
        "--eval-particles",
        "5",
        "--eval-images",
        "20",
    ]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["latent_dim"], saved["hidden_sizes"], saved["train_size"]) == (3, [16], 128)


@pytest.mark.parametrize(
    "name, content, message",
    [
        pytest.param("a.json", '{"latnt_dim": 3}', "unknown settings ['latnt_dim']", id="typo"),
        pytest.param("a.json", "{", "is not valid JSON", id="broken JSON"),
        pytest.param("a.toml", "x = ", "is not valid TOML", id="broken TOML"),
        pytest.param("a.json", "[1, 2]", "must hold a table", id="a list"),
        pytest.param("a.json", '{"epochs": "ten"}', "epochs must be a whole number", id="a word"),
        pytest.param("a.json", b"\x80\x81", "cannot read the config file", id="not text"),
        pytest.param("missing.json", None, "cannot read the config file", id="missing"),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_config_path_that_is_not_a_file_is_one_line(tmp_path, capsys, kind):
    """A named pipe would block the read for ever; a folder is no file either."""
    import os

    path = tmp_path / "settings.json"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the config file" in err, err


def test_a_resume_takes_no_config_file(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--config", "x.json"]) == 1
    assert "keeps its own config" in capsys.readouterr().err


def test_configs_of_earlier_runs_load():
    """A config.json of an earlier version: no mcem_transitions, retired fields."""
    old = {k: v for k, v in TrainConfig().resolved().to_dict().items() if k != "mcem_transitions"}
    old.update(progress=True, data_fallback=None)
    config = TrainConfig.from_dict(old)
    assert config.mcem_transitions == 3 and config.objective == "elbo-analytic-kl"
    with pytest.raises(CheckpointError, match="unknown fields"):
        TrainConfig.from_dict({**old, "latnt_dim": 3})


@pytest.mark.parametrize("value", [0, 1001, 2.5, "3"])
def test_mcem_transitions_out_of_range_are_refused(value):
    with pytest.raises(ConfigError, match="mcem_transitions"):
        TrainConfig(objective="mcem", mcem_transitions=value).validate()


def test_mcem_transitions_reach_the_e_step():
    elbo = make_elbo("mcem", mcem_transitions=7)
    assert isinstance(elbo, MonteCarloEM) and elbo.num_transitions == 7
    images = torch.rand(80, 16, generator=torch.Generator().manual_seed(0))
    data = ImageData("toy", images[:64], None, images[64:], None, (4, 4), "test")
    config = TrainConfig(objective="mcem", latent_dim=2, hidden_sizes=(8,), epochs=1,
                         batch_size=32, valid_fraction=0.0)  # fmt: skip
    weights = {}
    for n in (1, 3):
        result = fit(dataclasses.replace(config, mcem_transitions=n), data=data)
        weights[n] = torch.cat([p.detach().flatten() for p in result.vae.decoder.parameters()])
    default = fit(config, data=data)
    assert torch.equal(torch.cat([p.detach().flatten() for p in default.vae.decoder.parameters()]),
                       weights[3])  # fmt: skip
    assert not torch.equal(weights[1], weights[3])


def test_validate_changes_no_setting_and_remembers_what_passed():
    config = TrainConfig(hidden_sizes=[400], conv_channels=[32, 64])
    assert config.hidden_sizes == (400,) and config.conv_channels == (32, 64)  # on building
    before = config.to_dict()
    assert not config.checked()
    config.validate()
    assert config.to_dict() == before and config.checked() and config.checked(here=True)
    config.latent_dim = 3  # a setting changed afterwards has not been checked
    assert not config.checked()
    config.validate(here=False)
    assert config.checked() and not config.checked(here=True)
    assert not dataclasses.replace(config, seed=1).checked()


def test_a_validated_config_is_not_checked_again(monkeypatch):
    """What is built from a validated config (the VAE, its prior) and what runs every step
    (the guide's distribution) check nothing: validate is the one place."""
    from pyro_vae import build, latents, model

    def checked_again(*args, **kwargs):
        raise AssertionError("a setting checked again")

    images = torch.rand(80, 16, generator=torch.Generator().manual_seed(0))
    data = ImageData("toy", images[:64], None, images[64:], None, (4, 4), "test")
    config = TrainConfig(latent_dim=2, hidden_sizes=(8,), epochs=1, batch_size=32,
                         prior="mixture", estimator="reinforce")  # fmt: skip
    for module, name in ((model, "check_network_settings"), (model, "check_estimator"),
                         (model, "check_prior"), (latents, "check_estimator")):  # fmt: skip
        monkeypatch.setattr(module, name, checked_again)
    monkeypatch.setattr("pyro_vae.priors.check_prior", checked_again)
    monkeypatch.setattr("pyro_vae.objectives.check_objective", checked_again)
    result = fit(config, data=data)
    assert len(result.history) == 1
    # built from a config that has not passed validate, the VAE is checked, once, there
    unchecked = dataclasses.replace(config, latent_dim=-1)
    with pytest.raises(ConfigError, match="latent_dim"):
        build.build_vae(unchecked, (4, 4))
