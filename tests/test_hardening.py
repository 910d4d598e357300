"""The safety net: every bad input ends in one line and changes nothing; a run folder has one
owner; a damaged checkpoint is never trusted; a kill loses nothing.

The table-driven test runs each bad command line against a trained run folder and checks:
a non-zero exit code, exactly one line on stderr, no traceback, and every file of the run
folder byte for byte as it was (and no new folder where a refused ``train --out`` pointed).
"""

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

from pyro_vae.checkpoint import load_checkpoint, state_checksum
from pyro_vae.cli import main
from pyro_vae.errors import CheckpointError
from pyro_vae.runfolder import LOCK_FILE
from pyro_vae.train import load_run

QUICK = ["--train-size", "512", "--batch-size", "64", "--hidden-sizes", "32", "--latent-dim",
         "4", "--eval-particles", "10", "--eval-images", "40", "--no-progress"]  # fmt: skip


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYRO_VAE_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pyro_vae", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        **kwargs,
    )


def folder_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished two-epoch run on the bundled sample, with its pictures."""
    run_dir = tmp_path_factory.mktemp("hardening") / "run"
    proc = run_cli("train", "--dataset", "mnist-sample", "--epochs", "2", "--out", run_dir, *QUICK)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def damaged_mnist(tmp: Path) -> Path:
    raw = tmp / "damaged" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # fmt: skip
        (raw / name).write_bytes(b"")
    return tmp / "damaged"


# Each case: argv (RUN = the trained run folder, NEW = a folder that must not appear,
# FILE = an existing plain file, DAMAGED = MNIST with zero-byte files), the words of the message.
CASES = [
    # train: settings
    pytest.param(["train", "--seed", "-1"], "seed must be", id="train seed -1"),
    pytest.param(["train", "--seed", str(2**40)], "seed must be", id="train seed 2**40"),
    pytest.param(["train", "--device", "cpux"], "unknown device", id="train device cpux"),
    pytest.param(["train", "--device", "cuda:7"], "CUDA", id="train device cuda:7"),
    pytest.param(
        ["train", "--dataset", "mnist-sample", "--hidden-sizes", "1000000000"],
        "parameters",
        id="train hidden sizes 1e9",
    ),  # fmt: skip
    pytest.param(
        [
            "train",
            "--dataset",
            "mnist-sample",
            "--prior",
            "mixture",
            "--prior-components",
            "1000000000",
        ],
        "fewer --prior-components",
        id="train mixture components 1e9",
    ),  # fmt: skip
    pytest.param(
        ["train", "--jit", "--estimator", "reinforce-baseline", "--objective", "elbo"],
        "drop --jit",
        id="train jit reinforce-baseline",
    ),  # fmt: skip
    pytest.param(
        ["train", "--jit", "--estimator", "reinforce-nn-baseline", "--objective", "elbo"],
        "drop --jit",
        id="train jit reinforce-nn-baseline",
    ),  # fmt: skip
    pytest.param(["train", "--clip-norm", "inf"], "clip norm", id="train clip norm inf"),
    pytest.param(
        ["train", "--dataset", "mnist-sample", "-K", "100000000"], "lower -K", id="train K 1e8"
    ),  # fmt: skip
    pytest.param(["train", "--lr", "nan"], "learning rate", id="train lr nan"),
    pytest.param(
        ["train", "--dataset", "mnist-sample", "--train-size", "4501"],
        "more than the 4500 training images of mnist-sample after the validation split",
        id="train size beyond the images",
    ),  # fmt: skip
    # training into a state that cannot be trained on or loaded: divergence, no checkpoint
    *(
        pytest.param(
            ["train", "--dataset", "mnist-sample", "--epochs", "1", *QUICK, *flags],
            "training diverged",
            id=f"train diverges {name}",
        )  # fmt: skip
        for name, flags in [
            ("lr 1e6", ["--lr", "1e6"]),
            ("weight decay 1e30", ["--weight-decay", "1e30"]),
            ("adagrad weight decay 1e20", ["--optimizer", "adagrad", "--weight-decay", "1e20"]),
            ("adagrad weight decay 1e30", ["--optimizer", "adagrad", "--weight-decay", "1e30"]),
            (
                "lr 1e30 on the last step",
                ["--lr", "1e30", "--train-size", "128", "--batch-size", "128"],
            ),
            ("lr 1e6 wake-sleep", ["--lr", "1e6", "--objective", "wake-sleep"]),
        ]
    ),
    pytest.param(["train", "--latent-dim", "0"], "latent_dim", id="train latent dim 0"),
    pytest.param(["train", "--epochs", "0"], "epochs", id="train epochs 0"),
    pytest.param(["train", "--estimat", "stl"], "unrecognized", id="train abbreviated flag"),
    pytest.param(["train", "--eval-particles", "0"], "--eval-particles", id="train eval K 0"),
    pytest.param(["train", "--eval-images", "-1"], "--eval-images", id="train eval images -1"),
    pytest.param(
        [
            "train",
            "--dataset",
            "mnist-sample",
            "--estimator",
            "reinforce-baseline",
            "--objective",
            "elbo",
            "--train-size",
            "10",
            "--batch-size",
            "64",
        ],
        "fewer training images",
        id="train fewer images than a batch",
    ),  # fmt: skip
    pytest.param(
        ["train", "--dataset", "mnist-sample", "--binarize", "none"],
        "grey levels",
        id="train grey levels for bernoulli",
    ),  # fmt: skip
    pytest.param(
        ["train", "--dataset", "mnist", "--data-dir", "EMPTY"], "not found", id="train missing data"
    ),  # fmt: skip
    pytest.param(["train", "--data-dir", "DAMAGED"], "empty", id="train damaged mnist"),
    pytest.param(
        ["train", "--dataset", "mnist", "--data-dir", "DAMAGED"],
        "empty",
        id="train damaged mnist named",
    ),  # fmt: skip
    # train: output folders
    pytest.param(
        ["train", "--dataset", "mnist-sample", "--out", "/proc/pyro-vae-run"],
        "cannot create",
        id="train out under /proc",
    ),  # fmt: skip
    pytest.param(
        ["train", "--dataset", "mnist-sample", "--out", "FILE/run"],
        "cannot create",
        id="train out below a file",
    ),  # fmt: skip
    pytest.param(
        ["train", "--dataset", "mnist-sample", "--out", "FILE"],
        "a file of that name",
        id="train out is a file",
    ),  # fmt: skip
    pytest.param(
        ["train", "--dataset", "mnist-sample", "--out", "RUN"],
        "already holds a run",
        id="train out holds a run",
    ),  # fmt: skip
    # train: resume
    pytest.param(
        ["train", "--resume", "RUN", "--epochs", "1"],
        "trained 2 epochs already",
        id="resume epochs below done",
    ),  # fmt: skip
    pytest.param(
        ["train", "--resume", "RUN"], "trained 2 epochs already", id="resume a finished run"
    ),  # fmt: skip
    pytest.param(
        ["train", "--resume", "RUN", "--epochs", "3", "--latent-dim", "7"],
        "different config",
        id="resume other latent dim",
    ),  # fmt: skip
    pytest.param(
        ["train", "--resume", "RUN", "--out", "NEW"],
        "give the run folder once",
        id="resume with another out",
    ),  # fmt: skip
    pytest.param(["train", "--resume", "NEW"], "no run folder", id="resume missing folder"),
    # evaluate
    pytest.param(["evaluate", "RUN", "-K", "0"], "-K", id="evaluate K 0"),
    pytest.param(
        ["evaluate", "RUN", "--num-images", "-1"], "--num-images", id="evaluate num images -1"
    ),  # fmt: skip
    pytest.param(
        ["evaluate", "RUN", "--device", "foo"], "unknown device", id="evaluate device foo"
    ),  # fmt: skip
    pytest.param(["evaluate", "RUN", "--device", "cuda"], "CUDA", id="evaluate device cuda"),
    pytest.param(["evaluate", "RUN", "--seed", "-1"], "--seed", id="evaluate seed -1"),
    pytest.param(["evaluate", "NEW"], "no run folder", id="evaluate missing run"),
    pytest.param(["evaluate", "FILE"], "no run folder", id="evaluate a file"),
    # pictures
    pytest.param(["sample", "RUN", "--num", "0"], "--num", id="sample num 0"),
    pytest.param(["sample", "RUN", "--num", "-5"], "--num", id="sample num -5"),
    pytest.param(["sample", "RUN", "--num", "1000000"], "--num", id="sample num 1e6"),
    pytest.param(["sample", "RUN", "--seed", str(2**40)], "--seed", id="sample seed 2**40"),
    pytest.param(
        ["sample", "RUN", "--out", "NEW/x.xyz"],
        "unknown picture format",
        id="sample out unknown format",
    ),  # fmt: skip
    pytest.param(["sample", "RUN", "--out", "RUN"], "is a folder", id="sample out a folder"),
    pytest.param(
        ["sample", "RUN", "--out", "/proc/pyro-vae.png"],
        "cannot write",
        id="sample out under /proc",
    ),  # fmt: skip
    pytest.param(
        ["sample", "RUN", "--out", "/dev/full"], "No space left", id="sample out a full device"
    ),  # fmt: skip
    pytest.param(["reconstruct", "RUN", "--num", "0"], "--num", id="reconstruct num 0"),
    pytest.param(["reconstruct", "RUN", "--num", "-1"], "--num", id="reconstruct num -1"),
    pytest.param(
        ["reconstruct", "RUN", "--num", "5000"], "--num", id="reconstruct more than the test set"
    ),  # fmt: skip
    pytest.param(
        ["plot", "RUN", "--out", "/proc/pyro-vae"], "cannot create", id="plot out under /proc"
    ),  # fmt: skip
    pytest.param(["plot", "RUN", "--out", "FILE"], "a file of that name", id="plot out a file"),
    pytest.param(["plot", "NEW"], "no run folder", id="plot missing run"),
    # posterior
    pytest.param(["posterior", "RUN", "--chains", "0"], "--chains", id="posterior chains 0"),
    pytest.param(
        ["posterior", "RUN", "--index", "99999"], "out of range", id="posterior index out of range"
    ),  # fmt: skip
    pytest.param(["posterior", "RUN", "--seed", "-1"], "--seed", id="posterior seed -1"),
    pytest.param(
        ["posterior", "RUN", "--seed", str(2**32 - 1)],
        "2**32 - 2",
        id="posterior last chain's seed past the range",
    ),  # fmt: skip
    pytest.param(
        ["posterior", "RUN", "--out", "/proc/pyro-vae"],
        "cannot create",
        id="posterior out under /proc",
    ),  # fmt: skip
    # the estimator study
    pytest.param(
        ["compare-estimators", "--gradient-epochs", "5", "--epochs", "1"],
        "outside 0..1",
        id="study gradient epoch past the run",
    ),  # fmt: skip
    pytest.param(
        ["compare-estimators", "--gradient-epochs", "-1"], "outside", id="study gradient epoch -1"
    ),  # fmt: skip
    pytest.param(
        ["compare-estimators", "--objective", "iwae"], "drop --objective", id="study objective iwae"
    ),  # fmt: skip
    pytest.param(["compare-estimators", "-K", "5"], "drop -K", id="study K 5"),
    pytest.param(["compare-estimators", "--no-plots"], "drop --no-plots", id="study no plots"),
    pytest.param(
        ["compare-estimators", "--eval-particles", "5"],
        "drop --eval-particles",
        id="study eval particles",
    ),  # fmt: skip
    pytest.param(
        ["compare-estimators", "--estimator", "stl"], "--estimators", id="study estimator"
    ),  # fmt: skip
    pytest.param(["compare-estimators", "--resume", "RUN"], "cannot resume", id="study resume"),
    pytest.param(
        ["compare-estimators", "--out", "RUN"], "already holds files", id="study into a run folder"
    ),  # fmt: skip
    pytest.param(
        ["compare-estimators", "--num-estimates", "1"], "--num-estimates", id="study one estimate"
    ),  # fmt: skip
    pytest.param(["compare-estimators", "--seed", "-1"], "seed must be", id="study seed -1"),
]


@pytest.mark.parametrize("argv, message", CASES)
def test_bad_input_one_line_nonzero_and_nothing_changed(argv, message, run, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder\n")
    places = {
        "RUN": str(run),
        "NEW": str(tmp_path / "new"),
        "FILE": str(tmp_path / "file"),
        "EMPTY": str(tmp_path / "empty"),
        "DAMAGED": str(damaged_mnist(tmp_path)),
    }
    argv = [places.get(a, a.replace("FILE/", places["FILE"] + "/")) for a in argv]
    if argv[0] in ("train", "compare-estimators") and "--out" not in argv:
        if "--resume" not in argv:
            argv += ["--out", places["NEW"]]
    before = folder_hashes(run)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: a malformed command line
        code = e.code
    err = capsys.readouterr().err
    assert code not in (0, None), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    assert message in err, err
    assert folder_hashes(run) == before
    assert not (tmp_path / "new").exists()
    assert not (run / LOCK_FILE).exists()


def test_bad_input_in_a_fresh_process_is_one_line_too(run, tmp_path):
    # what a user sees: no warnings of Pyro's, PyTorch's or ArviZ's around the message
    diverging = ["train", "--dataset", "mnist-sample", "--lr", "1e30", "--out", tmp_path / "new",
                 *QUICK]  # fmt: skip
    # REINFORCE's NaN scale fails inside torch's sampler, before any loss is NaN
    reinforce = [*diverging, "--estimator", "reinforce", "--objective", "elbo"]
    for argv in (["evaluate", run, "--device", "cuda:0"], ["sample", run, "--num", "0"],
                 ["posterior", run, "--chains", "0"], diverging, reinforce):  # fmt: skip
        proc = run_cli(*argv)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "new").exists()


# -- damaged checkpoints --------------------------------------------------------------------


def _rewrite(path: Path, edit) -> None:
    """Edit a checkpoint's state and store it with a valid checksum: damage a checksum
    cannot see, which the structure and value checks must."""
    state = torch.load(path, weights_only=True)
    edit(state)
    state["checksum"] = state_checksum(state)
    torch.save(state, path)


def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor's stored bytes."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
        assert "/data/" in info.filename and info.compress_type == zipfile.ZIP_STORED
    data = bytearray(path.read_bytes())
    # the local header: 30 bytes, then the name and the extra field, then the data
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x40
    path.write_bytes(bytes(data))


DAMAGE = [
    pytest.param(_flip_tensor_byte, ["evaluate"], "checksum", id="tensor byte flipped"),
    pytest.param(
        lambda p: p.write_bytes(p.read_bytes()[:5000]), ["evaluate"], "corrupt", id="truncated"
    ),  # fmt: skip
    pytest.param(
        lambda p: _rewrite(p, lambda s: s["model"]["decoder.out.weight"].fill_(float("nan"))),
        ["evaluate"],
        "NaN",
        id="nan weights",
    ),  # fmt: skip
    pytest.param(
        lambda p: _rewrite(
            p,
            lambda s: s["optimizer"].clear() or s["model"]["encoder.loc.bias"].fill_(float("inf")),
        ),
        ["sample"],
        "NaN",
        id="infinite weights",
    ),
    pytest.param(
        lambda p: _rewrite(p, lambda s: s["config"].update(dataset="cifar")),
        ["evaluate"],
        "invalid",
        id="config dataset unknown",
    ),  # fmt: skip
    pytest.param(
        lambda p: _rewrite(
            p,
            lambda s: s["config"].update(
                dataset="frey-faces", likelihood="gaussian", binarize="none"
            ),
        ),
        ["reconstruct"],
        "does not fit",
        id="config dataset changed",
    ),  # fmt: skip
    pytest.param(
        lambda p: _rewrite(p, lambda s: s.update(config=None)),
        ["evaluate"],
        "config",
        id="config null",
    ),  # fmt: skip
    pytest.param(
        lambda p: _rewrite(p, lambda s: s["config"].update(latent_dim=2.5)),
        ["sample"],
        "latent_dim",
        id="config latent dim 2.5",
    ),  # fmt: skip
    pytest.param(
        lambda p: _rewrite(p, lambda s: s.update(history={"epoch": 1})),
        ["plot"],
        "history",
        id="history not a list",
    ),  # fmt: skip
    pytest.param(
        lambda p: _rewrite(p, lambda s: s["model"].pop("decoder.out.bias")),
        ["evaluate"],
        "missing: decoder.out.bias",
        id="state dict mismatch",
    ),
    pytest.param(
        lambda p: _rewrite(p, lambda s: s["config"].update(hidden_sizes=[33])),
        ["train", "--resume", "RUN", "--epochs", "3"],
        "shape",
        id="state dict shapes for resume",
    ),  # fmt: skip
]


@pytest.mark.parametrize("damage, argv, message", DAMAGE)
def test_damaged_checkpoint_is_refused_in_one_line(damage, argv, message, run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    damage(copy / "checkpoint.pt")
    before = folder_hashes(copy)
    argv = [a if a != "RUN" else str(copy) for a in argv]
    if argv[0] != "train":
        argv.insert(1, str(copy))
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and message in err, err
    assert folder_hashes(copy) == before


def test_a_flipped_tensor_byte_loads_in_torch_but_not_here(run, tmp_path):
    path = tmp_path / "checkpoint.pt"
    shutil.copy(run / "checkpoint.pt", path)
    good = load_checkpoint(path)
    _flip_tensor_byte(path)
    flipped = torch.load(path, weights_only=True)  # torch itself sees nothing wrong
    changed = [k for k, v in good["model"].items() if not torch.equal(v, flipped["model"][k])]
    assert len(changed) == 1
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_checksum_covers_every_value(run):
    state = load_checkpoint(run / "checkpoint.pt")
    checksum = state_checksum(state)
    for edit in (
        lambda s: s.update(epoch=s["epoch"] + 1),
        lambda s: s["history"][0].update(valid_elbo=s["history"][0]["valid_elbo"] + 1e-9),
        lambda s: s["config"].update(seed=1),
        lambda s: s["rng"].update(torch=s["rng"]["torch"].clone().fill_(0)),
        lambda s: s["model"].update(extra=torch.zeros(0)),
    ):
        edited = torch.load(run / "checkpoint.pt", weights_only=True)
        edit(edited)
        assert state_checksum(edited) != checksum


def test_non_finite_results_are_never_written(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "evaluation.json").unlink()
    state = torch.load(copy / "checkpoint.pt", weights_only=True)
    state["model"]["decoder.out.weight"][0, 0] = 1e38  # finite, but the likelihood overflows
    state["model"]["decoder.body.0.weight"].fill_(1e30)
    state["checksum"] = state_checksum(state)
    torch.save(state, copy / "checkpoint.pt")
    capsys.readouterr()
    assert main(["evaluate", str(copy), "-K", "5", "--num-images", "10"]) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and err.count("\n") == 1, err
    assert not (copy / "evaluation.json").exists()


# -- the run folder's owner -----------------------------------------------------------------


def test_two_runs_into_one_folder_one_is_refused(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "mnist-sample", "--epochs", "3", "--out", out, *QUICK]
    argv[argv.index("512")] = "2048"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pyro_vae", *map(str, argv), "--seed", str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYRO_VAE_OFFLINE": "1"},
        )
        for seed in (11, 22)
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    winner = 11 if results[0][0] == 0 else 22
    loser_err = next(err for code, _, err in results if code == 1)
    assert "in use by another pyro-vae process" in loser_err and loser_err.count("\n") == 1
    # every file of the folder is the winner's
    assert json.loads((out / "config.json").read_text())["seed"] == winner
    assert load_checkpoint(out / "checkpoint.pt")["config"]["seed"] == winner
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert (out / "evaluation.json").exists() and (out / "samples.png").exists()
    assert not (out / LOCK_FILE).exists()


def test_a_held_run_folder_refuses_every_writer(run, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pyro_vae.runfolder import locked_folder
            with locked_folder({str(run)!r}):
                print("held", flush=True)
                sys.stdin.readline()  # until the test lets go
        """)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = folder_hashes(run)
        for argv in (
            ["evaluate", run, "-K", "2"],
            ["plot", run],
            ["sample", run],
            ["posterior", run, "--num-samples", "5", "--warmup", "5"],
            ["train", "--resume", run, "--epochs", "3"],
            ["train", "--dataset", "mnist-sample", "--out", run],
        ):
            proc = run_cli(*argv)
            assert proc.returncode == 1, (argv, proc.stderr)
            assert proc.stderr.count("\n") == 1 and f"(pid {holder.pid})" in proc.stderr
        assert folder_hashes(run) == before
        # reading a run needs no lock: a picture written elsewhere is fine
        assert run_cli("sample", run, "--out", tmp_path / "s.png").returncode == 0
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    assert not (run / LOCK_FILE).exists()


# -- kills, temporaries, debris, modes ------------------------------------------------------

KILLED_WRITER = """
import os, sys, time, torch
from pyro_vae import TrainConfig, fit

real_save, calls = torch.save, []

def slow_save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) < 2:
        return real_save(obj, f, *args, **kwargs)
    f.write(b"PK half a checkpoint")
    f.flush()
    open(sys.argv[2], "w").close()  # the signal: killed mid-write from here on
    time.sleep(600)

torch.save = slow_save
config = TrainConfig(dataset="mnist-sample", train_size=256, batch_size=64, hidden_sizes=(16,),
                     latent_dim=2, epochs=2)
fit(config, sys.argv[1])
"""


def test_a_kill_during_the_checkpoint_write_loses_nothing(tmp_path, capsys):
    run_dir, ready = tmp_path / "run", tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(run_dir), str(ready)],
        env={**os.environ, "PYRO_VAE_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 300
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), "the writer never reached its second checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    temporaries = list(run_dir.glob(".checkpoint.pt.*.tmp"))
    assert len(temporaries) == 1
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1  # the last good one
    # the next run to take the folder clears the temporary, and resumes where it was
    argv = ["train", "--resume", str(run_dir), "--epochs", "2", "--eval-particles", "5",
            "--eval-images", "20", "--no-plots", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert not list(run_dir.glob(".*.tmp"))
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 2


def test_a_failed_new_run_leaves_no_debris(tmp_path, capsys):
    out = tmp_path / "deep" / "run"
    # diverges in its first epoch: a learning rate no network survives
    argv = ["train", "--dataset", "mnist-sample", "--lr", "1e30", "--epochs", "2",
            "--out", str(out), *QUICK]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "diverged" in err and err.count("\n") == 1, err
    assert not out.exists()
    # into an existing folder: what the run wrote goes, what was there stays
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine\n")
    assert main(argv) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_files_honour_the_umask(umask, mode, tmp_path, capsys):
    old = os.umask(umask)
    try:
        argv = ["train", "--dataset", "mnist-sample", "--epochs", "1", "--out",
                str(tmp_path / "run"), *QUICK]  # fmt: skip
        assert main(argv) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert modes and all(m == mode for m in modes.values()), modes


def test_a_closed_stdout_does_not_stop_the_run(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", "train", "--dataset", "mnist-sample", "--epochs", "1",
         "--out", str(out), *QUICK],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYRO_VAE_OFFLINE": "1"},
    )  # fmt: skip
    first = proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 0, err
    assert first.startswith(b"training in") and err == ""
    assert (out / "evaluation.json").exists() and (out / "samples.png").exists()


def test_a_file_size_limit_is_found_before_training(tmp_path):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    out = tmp_path / "run"
    proc = run_cli("train", "--dataset", "mnist-sample", "--epochs", "1", "--out", out, *QUICK,
                   preexec_fn=limit)  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "ulimit -f" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_late_write_failure_still_shows_the_result(run, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    import pyro_vae.checkpoint

    real = pyro_vae.checkpoint.atomic_write_bytes

    def full(path, data):
        if Path(path).name == "evaluation.json":
            raise pyro_vae.checkpoint.OutputError(f"cannot write {path}: No space left on device")
        real(path, data)

    monkeypatch.setattr(pyro_vae.checkpoint, "atomic_write_bytes", full)
    before = folder_hashes(copy)
    capsys.readouterr()
    assert main(["evaluate", str(copy), "-K", "5", "--num-images", "10"]) == 1
    out, err = capsys.readouterr()
    assert "test ELBO" in out and "log p(x)" in out  # the figures were printed
    assert "No space left" in err and "not saved" in err and err.count("\n") == 1
    assert folder_hashes(copy) == before


def test_io_stream_guard_is_quiet_once_closed():
    from pyro_vae.cli import _Guarded

    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError

        def fileno(self):
            raise io.UnsupportedOperation

    guarded = _Guarded(Closed())
    assert guarded.write("x") == 1 and guarded.gone
    guarded.flush()


# -- the Python API -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(run):
    from pyro_vae import load_run

    return load_run(run)


API_IMAGES = [
    pytest.param(lambda x: x.clone().fill_(float("nan")), "NaN", id="nan images"),
    pytest.param(lambda x: x * 0.5, "grey levels", id="grey images for bernoulli"),
    pytest.param(lambda x: x[:0], "none to evaluate", id="zero images"),
    pytest.param(lambda x: x.reshape(-1, 28, 28), "flatten", id="unflattened images"),
    pytest.param(lambda x: x[:, :100], r"shape \(N, 784\)", id="wrong width"),
    pytest.param(lambda x: x.to(torch.uint8), "floating point", id="uint8 images"),
    pytest.param(lambda x: x.numpy(), "torch.Tensor", id="numpy images"),
    pytest.param(lambda x: x.tolist(), "torch.Tensor", id="list of images"),
    pytest.param(lambda x: x * 2, "grey levels", id="values above one"),
]


@pytest.mark.parametrize("make, message", API_IMAGES)
def test_evaluate_refuses_bad_images(make, message, loaded):
    from pyro_vae import DataError, evaluate

    x = torch.bernoulli(torch.full((10, 784), 0.3), generator=torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match=message):
        evaluate(loaded.vae, make(x), num_particles=3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"num_particles": 0}, "at least 1", id="K 0"),
        pytest.param({"num_particles": 2.5}, "whole number", id="K 2.5"),
        pytest.param({"batch_size": 0}, "batch size", id="batch 0"),
        pytest.param({"seed": -1}, "seed", id="seed -1"),
        pytest.param({"seed": 2**40}, "seed", id="seed 2**40"),
    ],
)
def test_evaluate_refuses_bad_settings(kwargs, message, loaded):
    from pyro_vae import ConfigError, evaluate

    x = torch.bernoulli(torch.full((4, 784), 0.3), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=message):
        evaluate(loaded.vae, x, **kwargs)


def test_evaluate_is_seeded_and_leaves_the_global_rng_alone(loaded):
    import pyro

    from pyro_vae import evaluate

    x = torch.bernoulli(torch.full((20, 784), 0.2), generator=torch.Generator().manual_seed(1))
    pyro.get_param_store()["mine"] = torch.ones(2)
    rng, params = torch.get_rng_state(), dict(pyro.get_param_store().items())
    a, b = evaluate(loaded.vae, x, 50, seed=3), evaluate(loaded.vae, x, 50, seed=3)
    c = evaluate(loaded.vae, x, 50, seed=4)
    assert a == b and a.log_likelihood != c.log_likelihood
    assert torch.equal(torch.get_rng_state(), rng)
    assert dict(pyro.get_param_store().items()) == params


@pytest.mark.parametrize(
    "overrides, message",
    [
        pytest.param({"latent_dim": 2.5}, "latent_dim must be a whole number", id="latent 2.5"),
        pytest.param({"latent_dim": "20"}, "latent_dim must be a whole number", id="latent str"),
        pytest.param({"epochs": True}, "epochs must be a whole number", id="epochs True"),
        pytest.param({"hidden_sizes": (400.5,)}, "hidden_sizes", id="hidden 400.5"),
        pytest.param({"hidden_sizes": 400}, "hidden_sizes", id="hidden not a list"),
        pytest.param({"learning_rate": "fast"}, "learning_rate must be a number", id="lr str"),
        pytest.param({"clip_norm": float("inf")}, "clip norm", id="clip inf"),
        pytest.param({"seed": -1}, "seed", id="seed -1"),
        pytest.param({"device": "cpux"}, "unknown device", id="device cpux"),
        pytest.param({"dataset": 5}, "unknown dataset", id="dataset int"),
        pytest.param({"jit": "yes"}, "jit must be True or False", id="jit str"),
        pytest.param({"estimator": 7}, "estimator", id="estimator 7"),
        pytest.param({"train_size": 0.5}, "train_size", id="train size 0.5"),
    ],
)
def test_config_of_the_wrong_type_is_a_config_error(overrides, message, tmp_path):
    from pyro_vae import ConfigError, TrainConfig, fit

    with pytest.raises(ConfigError, match=message):
        fit(TrainConfig(**{"dataset": "mnist-sample", **overrides}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_fit_leaves_the_caller_as_it_found_it(tmp_path):
    import pyro

    from pyro_vae import TrainConfig, fit

    pyro.get_param_store()["mine"] = torch.ones(3)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    config = TrainConfig(dataset="mnist-sample", train_size=128, batch_size=64,
                         hidden_sizes=(8,), latent_dim=2, epochs=1)  # fmt: skip
    fit(config, tmp_path / "run")
    assert torch.equal(torch.get_rng_state(), rng)
    assert list(pyro.get_param_store().keys()) == ["mine"]


def test_load_run_on_damage_is_a_checkpoint_error(run, tmp_path):
    from pyro_vae import load_run

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _flip_tensor_byte(copy / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="checksum"):
        load_run(copy)


def _ctrl_c_as_in_a_terminal() -> None:
    """For a child's ``preexec_fn``: SIGINT as a terminal's foreground process has it. A test
    run started in the background of a script (``pytest &``) has SIGINT ignored, which its
    children inherit, and Python leaves an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_when(proc: subprocess.Popen, ready, sent=None, running=True) -> tuple[int, str]:
    """Ctrl-C to ``proc`` once ``ready()`` (while it still runs, unless ``running`` is false);
    then ``sent()``, if given, tells it so."""
    deadline = time.monotonic() + 300
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running or proc.poll() is None, "it ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    if sent is not None:
        sent()
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def test_ctrl_c_is_one_line_at_any_moment(tmp_path):
    env = {**os.environ, "PYRO_VAE_OFFLINE": "1"}
    # while PyTorch loads
    proc = subprocess.Popen([sys.executable, "-m", "pyro_vae", "train", "--help"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal)  # fmt: skip
    started = time.monotonic()
    code, err = _interrupt_when(proc, lambda: time.monotonic() - started > 0.3, running=False)
    assert code in (0, 130) and "Traceback" not in err and err.count("\n") <= 1, err
    # in the second epoch: the first epoch's checkpoint stays, and resumes
    out = tmp_path / "run"
    # (500 epochs: a loaded machine that is slow to look must still find it training)
    argv = ["train", "--dataset", "mnist-sample", "--epochs", "500", "--out", str(out), *QUICK]
    proc = subprocess.Popen([sys.executable, "-m", "pyro_vae", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal)  # fmt: skip
    code, err = _interrupt_when(proc, lambda: (out / "checkpoint.pt").exists())
    assert code == 130 and err == "pyro-vae train: interrupted\n", err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_FILE).exists()


def test_a_closed_stdout_before_the_start(run, tmp_path):
    proc = run_cli("sample", run, "--out", tmp_path / "s.png", preexec_fn=lambda: os.close(1))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert (tmp_path / "s.png").exists()


def test_unverifiable_old_format_checkpoints_are_refused(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state = torch.load(copy / "checkpoint.pt", weights_only=True)
    del state["checksum"]
    state["format"] = "pyro_vae.checkpoint/1"
    for value in state["model"].values():
        value.fill_(0.5)  # an edit no check can see without a checksum
    torch.save(state, copy / "checkpoint.pt")
    before = folder_hashes(copy)
    for argv in (["evaluate", str(copy)], ["train", "--resume", str(copy), "--epochs", "3"]):
        capsys.readouterr()
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "no checksum" in err and err.count("\n") == 1, err
    assert folder_hashes(copy) == before
    # read when asked, with the other checks
    assert load_checkpoint(copy / "checkpoint.pt", allow_unverified=True)["epoch"] == 2
    state["rng"] = {"python": []}
    torch.save(state, copy / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="RNG state"):
        load_checkpoint(copy / "checkpoint.pt", allow_unverified=True)


# -- found by an adversarial pass -----------------------------------------------------------


def test_a_failed_new_run_puts_back_what_it_found(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}\n")  # a killed run's, or the user's
    (out / "metrics.jsonl").write_text("notes\n")
    before = folder_hashes(out)
    argv = ["train", "--dataset", "mnist-sample", "--lr", "1e30", "--out", str(out), *QUICK]
    assert main(argv) == 1
    assert folder_hashes(out) == before


def test_a_failed_resume_leaves_config_and_metrics_alone(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = folder_hashes(copy)
    # the resumed epochs diverge: nothing of the run may change
    _rewrite(copy / "checkpoint.pt", lambda s: s["config"].update(learning_rate=1e30))
    json_config = json.loads((copy / "config.json").read_text())
    argv = ["train", "--resume", str(copy), "--epochs", "5", *QUICK[-5:]]
    assert main(argv) == 1
    assert "diverged" in capsys.readouterr().err
    assert json.loads((copy / "config.json").read_text()) == json_config
    assert (copy / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    assert set(folder_hashes(copy)) == set(before)


def test_a_symlinked_lock_file_is_refused(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (copy / LOCK_FILE).symlink_to(outside)
    capsys.readouterr()
    assert main(["evaluate", str(copy), "-K", "2", "--num-images", "5"]) == 1
    assert "symbolic link" in capsys.readouterr().err
    assert outside.read_text() == "precious\n"


def test_only_pyro_vae_temporaries_are_cleared(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / ".notes.abcdefgh.tmp").write_text("mine\n")
    (copy / ".checkpoint.pt.abcdefgh.tmp").write_bytes(b"half")
    assert main(["evaluate", str(copy), "-K", "2", "--num-images", "5"]) == 0
    assert (copy / ".notes.abcdefgh.tmp").exists()
    assert not (copy / ".checkpoint.pt.abcdefgh.tmp").exists()


def test_a_picture_into_a_folder_a_run_holds_is_refused(run, tmp_path, capsys):
    from pyro_vae.runfolder import locked_folder

    held = tmp_path / "training"
    with locked_folder(held, create=True):
        proc = run_cli("sample", run, "--out", held / "s.png")
    assert proc.returncode == 1 and "in use" in proc.stderr
    assert not held.exists()


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["plot", "RUN", "--out", "OTHER"], id="plot"),
        pytest.param(
            [
                "posterior",
                "RUN",
                "--out",
                "OTHER",
                "--num-samples",
                "5",
                "--warmup",
                "5",
                "-K",
                "5",
            ],
            id="posterior",
        ),  # fmt: skip
        pytest.param(["sample", "RUN", "--out", "OTHER/samples.png"], id="sample"),
        pytest.param(["reconstruct", "RUN", "--out", "OTHER/r.png"], id="reconstruct"),
    ],
)
def test_outputs_into_another_runs_folder_are_refused(argv, run, tmp_path, capsys):
    """A run's pictures and tables do not go into a folder that holds another run (they
    replaced its pictures and posterior.json, exit 0)."""
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / "note.txt").write_text("the other run's\n")
    before, ours = folder_hashes(other), folder_hashes(run)
    argv = [str(run) if a == "RUN" else a.replace("OTHER", str(other)) for a in argv]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{other} holds another run" in err, err
    assert folder_hashes(other) == before and folder_hashes(run) == ours


def test_a_study_into_a_folder_with_files_is_refused_from_python_too(run, tmp_path):
    from pyro_vae import OutputError, TrainConfig
    from pyro_vae.compare import compare_estimators

    before = folder_hashes(run)
    with pytest.raises(OutputError, match="already holds files"):
        compare_estimators(TrainConfig(dataset="mnist-sample", objective="elbo", epochs=1), run)
    assert folder_hashes(run) == before


def test_sigterm_is_one_line_and_cleans_up(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "mnist-sample", "--epochs", "50", "--out", str(out), *QUICK]
    proc = subprocess.Popen([sys.executable, "-m", "pyro_vae", *argv],
                            env={**os.environ, "PYRO_VAE_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.terminate()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143 and err == "pyro-vae train: terminated\n", err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1
    assert not (out / LOCK_FILE).exists() and not list(out.glob(".*.tmp"))


def test_stdout_on_a_full_disk_does_not_stop_the_run(run, tmp_path):
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "pyro_vae", "sample", run, "--out", tmp_path / "s.png"],
            stdout=full, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYRO_VAE_OFFLINE": "1"},
        )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert (tmp_path / "s.png").exists()


def test_load_run_leaves_the_rng_alone(run):
    from pyro_vae import load_run

    rng = torch.get_rng_state()
    load_run(run)
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize(
    "x",
    [
        pytest.param(lambda x: x.numpy(), id="numpy image"),
        pytest.param(lambda x: x[:100], id="wrong width"),
        pytest.param(lambda x: x.repeat(2, 1), id="two images"),
        pytest.param(lambda x: x * 0.5, id="grey image"),
        pytest.param(lambda x: x.to(torch.uint8), id="uint8 image"),
    ],
)
def test_posterior_check_refuses_bad_images(x, loaded):
    from pyro_vae import DataError
    from pyro_vae.posterior import check_posterior

    image = torch.bernoulli(torch.full((784,), 0.3), generator=torch.Generator().manual_seed(0))
    with pytest.raises(DataError):
        check_posterior(loaded.vae, x(image), num_samples=5, warmup_steps=5)


def test_a_run_that_diverges_in_a_later_epoch_keeps_the_last_good_checkpoint(tmp_path, capsys):
    """REINFORCE at a learning rate of 10: finite objectives, and an Adam second moment that
    overflows in epoch 2. The run stops there, its folder at epoch 1 and loadable."""
    from pyro_vae import load_run

    out = tmp_path / "run"
    argv = ["train", "--dataset", "mnist-sample", "--train-size", "512", "--epochs", "3",
            "--lr", "10", "--estimator", "reinforce", "--objective", "elbo", "--no-plots",
            "--no-progress", "--out", str(out)]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training diverged in epoch 2" in err, err
    assert "the checkpoint of epoch 1 is kept" in err
    assert len(load_run(out).history) == 1  # loads: no damage was written
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_evaluate_of_weights_too_large_is_one_line(run, tmp_path, capsys):
    """Finite weights, every one times 1e30: the encoder's outputs overflow, which Pyro's
    distributions refuse with a ValueError of a hundred lines."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state = torch.load(copy / "checkpoint.pt", weights_only=True)
    for value in state["model"].values():
        value.mul_(1e30)
    state["checksum"] = state_checksum(state)
    torch.save(state, copy / "checkpoint.pt")
    before = folder_hashes(copy)
    capsys.readouterr()
    assert main(["evaluate", str(copy), "-K", "5", "--num-images", "10"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN or infinite outputs" in err, err
    assert folder_hashes(copy) == before


def test_evaluate_with_nan_parameters_is_a_numerical_error(run):
    from pyro_vae import NumericalError, evaluate, load_run

    vae = load_run(run).vae
    with torch.no_grad():
        vae.decoder.out.bias.fill_(float("nan"))
    x = torch.bernoulli(torch.full((4, 784), 0.3), generator=torch.Generator().manual_seed(0))
    with pytest.raises(NumericalError):
        evaluate(vae, x, 3)


def test_fit_takes_float64_images():
    from pyro_vae import TrainConfig, fit
    from pyro_vae.data import load_dataset

    data = load_dataset("mnist-sample")
    import dataclasses

    # 8-bit pixels as float64 in [0, 1], as a user's array might hold them
    data = dataclasses.replace(data, train_images=data.train_images.double() / 255,
                               test_images=data.test_images.double() / 255)  # fmt: skip
    config = TrainConfig(dataset="mnist-sample", train_size=128, batch_size=64,
                         hidden_sizes=(8,), latent_dim=2, epochs=1)  # fmt: skip
    assert fit(config, data=data).history[0]["valid_elbo"] < 0


INTERRUPTED_WRITER = """
import os, sys, time, torch
from pyro_vae.cli import main

real_save, calls = torch.save, []

def slow_save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        open(sys.argv[2], "w").close()  # the signal: interrupt me now
        try:  # until the test says it has (on a loaded machine that can take seconds)
            for _ in range(600):
                if os.path.exists(sys.argv[2] + ".sent"):
                    break
                time.sleep(0.1)
        except KeyboardInterrupt:  # what torch's C++ writer makes of one
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None
    return real_save(obj, f, *args, **kwargs)

torch.save = slow_save
sys.exit(main(["train", "--dataset", "mnist-sample", "--train-size", "256", "--batch-size", "64",
               "--hidden-sizes", "16", "--latent-dim", "2", "--epochs", "5", "--no-progress",
               "--out", sys.argv[1]]))
"""


def test_ctrl_c_during_the_checkpoint_write_waits_for_it(tmp_path):
    run_dir, ready = tmp_path / "run", tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_WRITER, str(run_dir), str(ready)],
        env={**os.environ, "PYRO_VAE_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    sent = tmp_path / "ready.sent"
    code, err = _interrupt_when(proc, ready.exists, sent.touch)
    assert code == 130 and err == "pyro-vae train: interrupted\n", err
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 2  # the write finished
    assert not list(run_dir.glob(".*.tmp"))
    # and the files beside it are of the same epoch: the folder is one state
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("when", ["reading the arguments", "reporting an error"])
def test_a_sigterm_at_either_end_of_a_command(tmp_path, monkeypatch, capsys, when):
    """A SIGTERM (the launcher of a distributed run stopping the rest, once one process has
    failed) that comes while the arguments are read, or while an error is being reported,
    ends the command with one line, not a traceback."""
    from pyro_vae import cli

    def then_sigterm(function):
        def wrapped(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return function(*args, **kwargs)

        return wrapped

    if when == "reading the arguments":
        monkeypatch.setattr(cli, "build_parser", then_sigterm(cli.build_parser))
        expected = "pyro-vae: terminated\n"
    else:
        monkeypatch.setattr(cli, "_one_line", then_sigterm(cli._one_line))
        expected = "pyro-vae evaluate: terminated\n"
    handler = signal.getsignal(signal.SIGTERM)
    try:
        status = main(["evaluate", str(tmp_path / "none")])
    except KeyboardInterrupt as e:  # what SIGTERM raises in main (uncaught, pytest would stop)
        pytest.fail(f"{type(e).__name__} escaped main")
    assert status == 143
    assert capsys.readouterr().err == expected
    assert signal.getsignal(signal.SIGTERM) == handler


@pytest.mark.parametrize("command", ["evaluate", "plot"])
def test_records_left_behind_by_a_kill_catch_up_with_the_checkpoint(run, tmp_path, capsys,
                                                                    command):  # fmt: skip
    """A ``kill -9`` between the checkpoint of epoch 2 and the files beside it leaves the
    metrics (and, a moment earlier, the config) of epoch 1; the next command that holds the
    folder writes them again from the checkpoint, which holds the whole history."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    metrics, config = (copy / "metrics.jsonl").read_text(), (copy / "config.json").read_text()
    assert len(metrics.splitlines()) == 2
    (copy / "metrics.jsonl").write_text(metrics.splitlines(keepends=True)[0])
    (copy / "config.json").write_text(config.replace('"epochs": 2', '"epochs": 1'))
    load_run(copy)  # from Python, without holding the folder: a reader only
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 1
    options = ["-K", "2", "--num-images", "5"] if command == "evaluate" else []
    argv = [command, str(copy), *options]
    assert main(argv) == 0, capsys.readouterr().err
    assert (copy / "metrics.jsonl").read_text() == metrics
    assert (copy / "config.json").read_text() == config


def test_metrics_that_are_not_the_checkpoints_stay(run, tmp_path, capsys):
    """A ``metrics.jsonl`` that is not a beginning of the checkpoint's history (the user's
    own notes) is not a record left behind: nothing overwrites it."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "metrics.jsonl").write_text("my notes\n")
    assert main(["evaluate", str(copy), "-K", "2", "--num-images", "5"]) == 0
    assert (copy / "metrics.jsonl").read_text() == "my notes\n"
