import csv
import json
import os
import subprocess
import sys

import matplotlib.image
import pytest
from conftest import cli_fails

from pyro_vae.cli import main

QUICK = [
    "--train-size",
    "512",
    "--batch-size",
    "64",
    "--hidden-sizes",
    "64",
    "--latent-dim",
    "4",
    "--eval-particles",
    "20",
    "--eval-images",
    "50",
    "--no-progress",
]


# a small estimator study: two gradient stages, one epoch of training per estimator
QUICK_STUDY = [
    "--dataset", "mnist-sample", "--train-size", "256", "--batch-size", "32",
    "--hidden-sizes", "16", "--latent-dim", "3", "--epochs", "1", "--gradient-epochs", "0", "1",
    "--num-estimates", "10", "--reference-estimates", "20",
]  # fmt: skip


def run_cli(*args, check=True):
    env = {**os.environ, "PYRO_VAE_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_vae", *map(str, args)], capture_output=True, text=True, env=env
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_png(path, min_height=28, min_width=28):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= min_height and image.shape[1] >= min_width
    assert image[..., :3].std() > 0.05  # not a blank canvas


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli("train", "--dataset", "mnist-sample", "--epochs", "2", "--out", run_dir, *QUICK)
    assert "test ELBO" in proc.stdout
    return run_dir


def test_train_writes_a_complete_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    expected = {"config.json", "checkpoint.pt", "metrics.jsonl", "evaluation.json", "samples.png",
                "reconstructions.png", "latent_scatter.png", "interpolation.png",
                "training_curves.png"}  # fmt: skip
    assert expected <= names
    assert len((trained_run / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((trained_run / "config.json").read_text())["dataset"] == "mnist-sample"
    for name in expected:
        if name.endswith(".png"):
            assert_png(trained_run / name)
    assert not (trained_run / "manifold.png").exists()  # a 4-D latent space has no manifold plot


def test_evaluate_sample_reconstruct(trained_run, tmp_path):
    own = json.loads((trained_run / "evaluation.json").read_text())  # train's, K = 20 on 50
    assert (own["epochs"], own["processes"], own["batch_size"]) == (2, 1, 64)  # provenance
    proc = run_cli("evaluate", trained_run, "-K", "30", "--num-images", "40")
    assert "log p(x)" in proc.stdout
    # what it replaced is said, not done silently
    assert "replacing the evaluation of K = 20 on 50 images" in proc.stdout
    result = json.loads((trained_run / "evaluation.json").read_text())
    assert result["num_images"] == 40 and result["num_particles"] == 30
    assert result["test_elbo"] < 0 and result["nll"] > 0
    assert result["log_likelihood"] == -result["nll"]
    # logmeanexp of the same log weights is never below their mean (Jensen)
    assert result["log_likelihood"] >= result["test_elbo"]
    assert 0 <= result["active_units"] <= 4 and len(result["kl_per_dim"]) == 4

    run_cli("sample", trained_run, "--num", "16", "--out", tmp_path / "s.png")
    assert_png(tmp_path / "s.png")
    proc = run_cli("sample", trained_run, "--num", "16", "--out", tmp_path / "s.png")
    assert "replacing the picture that was there" in proc.stdout
    # more images asked for than the test set has: all of them, and said so
    proc = run_cli("evaluate", trained_run, "-K", "2", "--num-images", "5000")
    assert "1000 images (the test set has 1000, not the 5000 of --num-images)" in proc.stdout
    assert json.loads((trained_run / "evaluation.json").read_text())["num_images"] == 1000
    run_cli("reconstruct", trained_run, "--num", "8", "--out", tmp_path / "r.png")
    assert_png(tmp_path / "r.png")


def test_help_on_every_command(capsys):
    for command in ([], ["train"], ["evaluate"], ["sample"], ["reconstruct"]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--help"])
        assert info.value.code == 0
        assert "usage: pyro-vae" in capsys.readouterr().out


def test_resume_continues_the_run(tmp_path):
    run_dir = tmp_path / "run"
    assert (
        main(["train", "--dataset", "mnist-sample", "--epochs", "1", "--out", str(run_dir), *QUICK])
        == 0
    )
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", *QUICK[-5:]]) == 0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_default_mnist_falls_back_to_the_bundled_sample_loudly(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            "--data-dir",
            str(tmp_path / "empty"),
            "--epochs",
            "1",
            "--out",
            str(run_dir),
            *QUICK,
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "mnist-sample" in err and "--data-dir" in err
    config = json.loads((run_dir / "config.json").read_text())
    assert "MNIST was not found" in err
    # the config records the data used; the fallback's note is a warning, not a setting
    assert config["dataset"] == "mnist-sample" and "data_fallback" not in config


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["train", "--dataset", "cifar"], 2, "invalid choice: 'cifar'"),
        (["train", "--likelihood", "poisson"], 2, "invalid choice: 'poisson'"),
        (["train", "--epochs", "ten"], 2, "invalid int value"),
        (["train", "--latent-dim", "0"], 1, "latent_dim must be a positive integer"),
        (["train", "--lr", "0"], 1, "learning rate must be positive"),
        (["train", "-K", "0"], 1, "at least 1"),
        (["train", "--lr-schedule", "cosine"], 2, "invalid choice: 'cosine'"),
        (["train", "--adam-eps", "0"], 1, "adam eps must be positive"),
        (["train", "--eval-particles", "0", "--dataset", "mnist-sample"], 1, "at least 1"),
        (["train", "--dataset", "mnist-sample", "--binarize", "none"], 1, "grey levels"),
        (["train", "--estimator", "reinforce", "--objective", "iwae"], 1, "needs objective"),
        (["train", "--device", "cuda:7"], 1, "CUDA is not available"),
        (["evaluate", "/nonexistent/run"], 1, "no run folder"),
        (["bogus"], 2, "invalid choice"),
        (["compare-estimators", "--estimator", "stl"], 1, "takes --estimators"),
        (["compare-estimators", "--estimators", "magic"], 2, "invalid choice: 'magic'"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(argv, code, message, capsys, tmp_path):
    argv = [*argv, "--out", str(tmp_path / "r")] if argv[0] == "train" else argv
    err = cli_fails(argv, capsys, code)
    assert message in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_missing_data_folder(tmp_path, capsys):
    err = cli_fails(
        ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere")], capsys
    )
    assert "mnist not found under" in err and "nowhere" in err and "PYRO_VAE_DATA_DIR" in err


def test_damaged_runs_are_reported_and_left_alone(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert (
        main(["train", "--dataset", "mnist-sample", "--epochs", "1", "--out", str(run_dir), *QUICK])
        == 0
    )
    capsys.readouterr()
    checkpoint = run_dir / "checkpoint.pt"
    good = checkpoint.read_bytes()

    err = cli_fails(["train", "--resume", str(run_dir), "--latent-dim", "7"], capsys)
    assert "different config" in err and "latent_dim: 4 != 7" in err
    err = cli_fails(["train", "--dataset", "mnist-sample", "--out", str(run_dir)], capsys)
    assert "already holds a run" in err
    assert checkpoint.read_bytes() == good

    checkpoint.write_bytes(good[: len(good) // 3])
    for argv in (
        ["evaluate", str(run_dir)],
        ["sample", str(run_dir)],
        ["train", "--resume", str(run_dir), "--epochs", "2"],
    ):
        assert "corrupt or truncated" in cli_fails(argv, capsys)
    assert checkpoint.read_bytes() == good[: len(good) // 3]


def test_compare_estimators_end_to_end(tmp_path):
    out = tmp_path / "study"
    proc = run_cli("compare-estimators", *QUICK_STUDY, "--out", out)
    assert "reinforce-nn-baseline" in proc.stdout
    with open(out / "gradients.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 5 * 2  # stages x estimators x networks
    assert {r["stage"] for r in rows} == {"init", "epoch 1"}
    for r in rows:
        assert float(r["total_variance"]) > 0 and -1 <= float(r["cosine"]) <= 1
        if r["estimator"] == "reparam":
            assert float(r["variance_ratio_to_reparam"]) == 1.0
    with open(out / "training.csv") as f:
        training = list(csv.DictReader(f))
    assert {r["estimator"] for r in training} == {
        "reparam", "reinforce", "reinforce-baseline", "reinforce-nn-baseline", "stl"
    }  # fmt: skip
    assert_png(out / "variance.png", 100, 100)
    assert_png(out / "training_curves.png", 100, 100)
    again = run_cli("compare-estimators", "--dataset", "mnist-sample", "--out", out, check=False)
    assert again.returncode == 1 and "already holds files" in again.stderr


def test_plot_command_and_the_2d_manifold(tmp_path, capsys):
    run_dir = tmp_path / "run2d"
    quick = [a if a != "4" else "2" for a in QUICK]  # --latent-dim 2
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist-sample",
                "--epochs",
                "1",
                "--out",
                str(run_dir),
                "--no-plots",
                *quick,
            ]
        )
        == 0
    )
    assert not (run_dir / "samples.png").exists()
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "pictures")]) == 0
    names = {p.name for p in (tmp_path / "pictures").iterdir()}
    assert names == {
        "samples.png",
        "reconstructions.png",
        "latent_scatter.png",
        "interpolation.png",
        "training_curves.png",
        "manifold.png",
    }
    for name in names:
        assert_png(tmp_path / "pictures" / name)


def test_posterior_command(trained_run, tmp_path, capsys):
    out = tmp_path / "post"
    argv = ["posterior", str(trained_run), "--index", "0", "3", "--num-samples", "60",
            "--warmup", "60", "-K", "200", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    checks = json.loads((out / "posterior.json").read_text())
    assert [c["index"] for c in checks] == [0, 3]
    for c in checks:
        assert c["gap"] == pytest.approx(c["log_likelihood"] - c["elbo"])
        assert len(c["nuts_mean"]) == len(c["guide_mean"]) == 4
        assert_png(out / f"posterior_{c['index']}.png", 100, 100)
    assert "R-hat" in capsys.readouterr().out
    err = cli_fails(["posterior", str(trained_run), "--index", "5000"], capsys)
    assert "out of range" in err


def test_into_a_pipe_a_line_an_epoch_and_no_bar(tmp_path):
    """Output to a file or a pipe (CI logs, nohup, SLURM): no progress bar, whose redraws a
    log would keep, but a plain line as each epoch (or stage) ends."""
    quick = [a for a in QUICK if a != "--no-progress"]
    proc = run_cli("train", "--dataset", "mnist-sample", "--epochs", "3", "--no-plots",
                   "--out", tmp_path / "run", *quick)  # fmt: skip
    lines = proc.stderr.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr
    proc = run_cli("compare-estimators", *QUICK_STUDY, "--estimators", "reinforce",
                   "--out", tmp_path / "study")  # fmt: skip
    stages = [line for line in proc.stderr.splitlines() if line.startswith("compare-estimators:")]
    assert [s.split(":")[1].split()[0] for s in stages] == ["gradients", "training", "gradients",
                                                           "training"], stages  # fmt: skip
    assert "\r" not in proc.stderr
    proc = run_cli("train", "--dataset", "mnist-sample", "--epochs", "1", "--no-plots",
                   "--out", tmp_path / "quiet", *QUICK)  # fmt: skip
    assert proc.stderr == ""  # --no-progress: nothing
