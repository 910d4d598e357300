"""The optional TensorBoard log: what it records, that it changes nothing of the run."""

import os
import sys

import pytest
import torch

from pyro_vae import ConfigError, OutputError, TrainConfig, fit

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

SMALL = dict(dataset="mnist-sample", train_size=320, batch_size=64, hidden_sizes=(16,),
             latent_dim=2, epochs=2)  # fmt: skip


def _events(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    return events.Reload()


def test_the_log_holds_every_step_every_epoch_and_the_pictures(tmp_path):
    result = fit(TrainConfig(**SMALL), tmp_path / "run", tensorboard=tmp_path / "tb")
    events = _events(tmp_path / "tb")
    train = events.Scalars("elbo/train")
    assert [e.step for e in train] == list(range(1, result.history[-1]["step"] + 1))
    valid = events.Scalars("elbo/validation")
    assert [e.step for e in valid] == [row["step"] for row in result.history]
    for event, row in zip(valid, result.history, strict=True):
        assert event.value == pytest.approx(row["valid_elbo"], rel=1e-6)
    # an epoch's mean training ELBO is the image-weighted mean of its steps' ELBOs
    first = [e.value for e in train[: result.history[0]["step"]]]
    assert sum(first) / len(first) == pytest.approx(result.history[0]["train_elbo"], rel=1e-5)
    for tag in ("samples", "reconstructions"):
        assert len(events.Images(tag)) == len(result.history), tag


def test_a_run_with_a_log_trains_exactly_as_one_without(tmp_path):
    plain = fit(TrainConfig(**SMALL))
    logged = fit(TrainConfig(**SMALL), tensorboard=tmp_path / "tb")
    assert [r["valid_elbo"] for r in plain.history] == [r["valid_elbo"] for r in logged.history]
    for a, b in zip(plain.vae.parameters(), logged.vae.parameters(), strict=True):
        assert torch.equal(a, b)


def test_without_the_package_the_log_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install \"pyro-vae\[tensorboard\]\""):
        fit(TrainConfig(**SMALL), tmp_path / "run", tensorboard=tmp_path / "tb")
    assert not (tmp_path / "run").exists()  # the failed new run left nothing behind


def test_an_unwritable_log_folder_is_an_output_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OutputError, match="TensorBoard log"):
        fit(TrainConfig(**SMALL), tensorboard=tmp_path / "a-file" / "tb")


def test_an_existing_folder_that_cannot_be_written_is_an_output_error(tmp_path, monkeypatch):
    """A folder that exists and refuses new files (read-only; sysfs refuses them even to
    root): tensorboard opens its event file on the first write, in a thread of its own, whose
    failure came as that thread's traceback and then the run's."""
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("needs Linux's /sys")
    import threading

    threads_failed = []  # what Python would print as "Exception in thread ...", 30 lines
    monkeypatch.setattr(threading, "excepthook", threads_failed.append)
    out = tmp_path / "run"
    with pytest.raises(OutputError, match="cannot write the TensorBoard log in /sys/kernel"):
        fit(TrainConfig(**SMALL), out, tensorboard="/sys/kernel")
    assert not threads_failed
    assert not out.exists()  # the new run's folder went with it


def test_the_cli_logs_into_the_run_folder(tmp_path, capsys):
    from pyro_vae.cli import main

    run = tmp_path / "run"
    argv = ["train", "--dataset", "mnist-sample", "--train-size", "320", "--hidden-sizes", "16",
            "--latent-dim", "2", "--epochs", "1", "--eval-particles", "5", "--eval-images",
            "20", "--no-plots", "--no-progress", "--tensorboard", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert len(_events(run / "tensorboard").Scalars("elbo/validation")) == 1
