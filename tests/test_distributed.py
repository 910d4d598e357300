"""Training in two processes with torchrun and gloo, checked against one process.

What is equal, and why: after one epoch, the parameters of a 2-process run with batch size B
equal (to float32 rounding) those of one process that trains on the same global batches of 2B
images, each step summing the gradients of the batch's two halves, where half r draws its noise
from the stream rank r uses (``rank_seed``) and, for REINFORCE's decaying-average baseline,
keeps the averages of rank r's batch positions. Pyro's baseline keeps one average per batch
position, so these are exactly the averages of a single pass over the 2B images. What is not
equal: a plain ``--batch-size 2B`` run of one process draws all 2B images' noise from one
stream, so its parameters differ by the noise (not checked here beyond its being a valid run).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.util import zero_grads

from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.data import BatchLoader, mean_image
from pyro_vae.distributed import rank_seed
from pyro_vae.isolation import get_rng_state, isolated, reseed, set_rng_state
from pyro_vae.labels import run_labels
from pyro_vae.m2 import aux_scale, label_elbo
from pyro_vae.objectives import make_elbo
from pyro_vae.train import TrainConfig, build_vae, make_optimizer, run_images

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or sys.platform != "linux",
    reason="needs torch.distributed with gloo (Linux)",
)

B = 32  # per process
COMMON = ["--dataset", "mnist-sample", "--train-size", "256", "--batch-size", str(B),
          "--seed", "3", "--no-progress", "--no-plots", "--eval-particles", "2",
          "--eval-images", "20", "--hidden-sizes", "64", "--latent-dim", "4"]  # fmt: skip
CASES = {
    "elbo-analytic-kl": ["--objective", "elbo-analytic-kl"],
    "iwae": ["--objective", "iwae", "-K", "3"],
    "reinforce-baseline": ["--objective", "elbo", "--estimator", "reinforce-baseline"],
    # the rest of the objectives and estimators: each trains distributed, none is refused
    "stl": ["--objective", "elbo", "--estimator", "stl"],
    "reinforce-nn-baseline": ["--objective", "elbo", "--estimator", "reinforce-nn-baseline"],
    "jit": ["--objective", "elbo-analytic-kl", "--jit"],
    "wake-sleep": ["--objective", "wake-sleep"],
    "rws": ["--objective", "rws", "-K", "3"],
    "mcem": ["--objective", "mcem"],
    # discrete latents: their estimators' draws (DisARM's uniforms, VIMCO's K codes, the
    # Gumbel noise) come from each rank's stream like the Gaussian ones'
    "disarm": ["--latent", "bernoulli", "--estimator", "disarm"],
    "vimco": ["--latent", "bernoulli", "--estimator", "vimco", "-K", "3"],
    "categorical-gumbel": ["--latent", "categorical", "--categories", "3"],
    # M2: each slice's labels go with its images; the label enumerated, and relaxed
    "m2-enumerate": ["--model", "m2", "--labels", "30", "--aux-loss", "0.5"],
    "m2-gumbel": ["--model", "m2", "--labels", "30", "--estimator", "gumbel"],
    # the CVAE: on the label (each slice's labels its conditions), and completing quadrants
    # (the baseline network's zero-valued term sends its gradient through the processes' sum)
    "cvae-label": ["--model", "cvae", "--condition", "label"],
    "cvae-quadrants": ["--model", "cvae", "--condition", "quadrants-2"],
}


def torchrun(args, cwd, nproc=2, timeout=600, dist_timeout=300, **popen):
    # dist_timeout: how long a process waits at a collective. Generous: on a loaded 2-core
    # machine one process's evaluation or JIT compilation can keep the other waiting for a
    # minute, and a gloo timeout aborts the waiting process.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYRO_VAE_DIST_TIMEOUT": str(dist_timeout)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "pyro_vae", "train", *args]  # fmt: skip
    if popen:
        return subprocess.Popen(command, cwd=cwd, env=env, text=True, **popen)
    return subprocess.run(command, cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=timeout)  # fmt: skip


def reference(config: TrainConfig, world: int = 2) -> dict:
    """One process, one epoch: the gradients of each global batch's ``world`` slices summed,
    slice r with rank r's noise stream and baseline averages, then one Adam step.

    It runs on one thread, as each torchrun process does (``OMP_NUM_THREADS=1`` above): a
    matrix product split over more threads sums in another order, so its rounding would
    differ from the processes' for a reason that has nothing to do with what is compared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference(config, world)
    finally:
        torch.set_num_threads(threads)


def _reference(config: TrainConfig, world: int) -> tuple[dict, dict]:
    config = config.resolved()  # as fit resolves it
    with isolated(config.seed) as store:
        images = run_images(config)
        labels, classes = run_labels(config, images)  # M2's; None for the VAE
        vae = build_vae(config, images.data.image_shape, classes)
        if config.model == "m2":
            vae.aux_scale = aux_scale(config.aux_loss, len(images.train), config.labels)
        vae.init_output_bias(mean_image(images.train))
        streams, baselines = [get_rng_state()], [{} for _ in range(world)]
        for rank in range(1, world):
            reseed(rank_seed(config.seed, rank))
            streams.append(get_rng_state())
        optim = make_optimizer(config)
        # one ELBO per slice, as each process has its own: a JIT ELBO compiles (and draws)
        # on its first call
        elbos = [label_elbo(config.estimator, config.temperature) if config.model == "m2" else
                 make_elbo(config.objective, config.estimator, config.num_particles, config.jit)
                 for _ in range(world)]  # fmt: skip
        loader = BatchLoader(images.train, B * world, config.binarize, config.seed, True, True,
                             labels)  # fmt: skip
        for batch in loader.epoch(0):
            x, *ys = batch if isinstance(batch, tuple) else (batch,)
            with poutine.trace(param_only=True) as capture:
                for rank in range(world):
                    set_rng_state(streams[rank])
                    # each rank's running state: baseline averages, MCEM's step size
                    for name in [k for k in store.keys() if k.startswith("__")]:
                        del store[name]
                    for name, value in baselines[rank].items():
                        store[name] = value
                    mine = slice(rank * B, (rank + 1) * B)
                    elbos[rank].loss_and_grads(
                        vae.model, vae.guide, x[mine], *[y[mine] for y in ys]
                    )
                    streams[rank] = get_rng_state()
                    baselines[rank] = {k: store[k] for k in store.keys() if k.startswith("__")}
            params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
            optim(params)
            zero_grads(params)
        model = {k: v.detach().clone() for k, v in vae.state_dict().items()}
        return model, optim.get_state()


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """One epoch of each case in two processes; the folder of each run."""
    root = tmp_path_factory.mktemp("ddp")
    runs = {}
    for name, flags in CASES.items():
        out = root / name
        done = torchrun([*COMMON, *flags, "--epochs", "1", "--out", str(out)], cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = (out, done)
    return runs


# The float32 tolerance of the comparisons below. Both sides run the same kernels on the same
# slices on one thread, and the sum of two processes' gradients is the same sum either way
# (a + b is b + a in IEEE arithmetic): on one machine they agree bit for bit. What can differ on
# another machine is the order in which a kernel reduces (the instruction set it picked, its
# blocking): a reordered sum of n float32 terms moves by at most n u sum|terms| (Higham 2002,
# eq. 3.5; u = 2^-24), here n <= 784 pixels, 4.7e-5; doubled for the four steps an epoch takes.
# Compared normwise, as that bound is: an element that is the difference of large terms carries
# their rounding, not a share of its own size (Adam's exp_avg of a weight whose gradient nearly
# cancels over the batch was seen 3e-6 off at 5e-7 in size, its tensor 1.5e-6 off normwise, the
# worst update 4.4e-6 off, with the reference on 16 threads: another order of summation).
# A process that averaged where the sum is due, or drew another slice's noise, is off by O(1).
NORMWISE = 1e-4


def assert_close_normwise(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    error = (got.double() - want.double()).norm().item()
    assert error <= NORMWISE * want.double().norm().item(), (what, error, want.norm().item())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.numerics
def test_two_processes_equal_one_on_the_global_batch(two_process_runs, case):
    out, _ = two_process_runs[case]
    state = load_checkpoint(out / "checkpoint.pt")
    config = TrainConfig.from_dict(state["config"])
    expected, moments = reference(config)
    with isolated(config.seed):  # the weights training starts from
        images = run_images(config)
        vae = build_vae(config, images.data.image_shape, run_labels(config, images)[1])
        vae.init_output_bias(mean_image(images.train))
        initial = vae.state_dict()
    assert state["model"].keys() == expected.keys() == initial.keys()
    for name, value in expected.items():  # what the epoch's steps moved, against the reference
        assert_close_normwise(state["model"][name] - initial[name], value - initial[name], name)
    # Adam's moments too: its step is nearly blind to the gradients' scale, they are not (an
    # average over processes where the sum is due shows here)
    networks = sorted(k for k in moments if not k.startswith("__baseline"))
    assert sorted(k for k in state["optimizer"] if not k.startswith("__baseline")) == networks
    for name in networks:
        for key in ("exp_avg", "exp_avg_sq"):
            got, want = state["optimizer"][name][key], moments[name][key]
            assert_close_normwise(got, want, f"{name} {key}")
    # and the parameters did move: the comparison is not of two untrained networks
    moved = max((state["model"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3
    assert len(state["ranks"]) == 2  # both processes' streams are in the checkpoint
    assert not torch.equal(state["ranks"][0]["rng"]["torch"], state["ranks"][1]["rng"]["torch"])


@pytest.mark.numerics
def test_two_machines_are_one_run(two_process_runs, tmp_path):
    """The docs' several-machines route: two launchers (here, on one machine) of one process
    each, meeting at a c10d rendezvous, train the run two processes of one launcher train."""
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    case = "elbo-analytic-kl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYRO_VAE_DIST_TIMEOUT": "300"}
    flags = [*COMMON, *CASES[case], "--epochs", "1", "--out", "run"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv-id=test", "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}",
               "-m", "pyro_vae", "train", *flags]  # fmt: skip
    nodes = [subprocess.Popen(command, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]  # fmt: skip
    try:
        outputs = [node.communicate(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    assert [node.returncode for node in nodes] == [0, 0], [err[-3000:] for _, err in outputs]
    assert sum(out.count("training in") for out, _ in outputs) == 1  # rank 0's machine only
    ours = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    theirs = load_checkpoint(two_process_runs[case][0] / "checkpoint.pt")
    for name, value in theirs["model"].items():
        assert torch.equal(ours["model"][name], value), name


def test_only_rank_0_writes_and_reports(two_process_runs):
    out, done = two_process_runs["elbo-analytic-kl"]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(CASES)  # nothing else
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "checkpoint.pt", "metrics.jsonl", "evaluation.json"} <= names
    assert not [n for n in names if n.startswith(".") and n != ".lock"], names  # no leftovers
    assert done.stdout.count("training in") == 1
    assert done.stdout.count("test ELBO") == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 256 // (2 * B)  # steps of the global batch
    # how many processes trained it: batch_size alone does not give the global batch
    assert rows[0]["processes"] == 2
    assert json.loads((out / "evaluation.json").read_text())["processes"] == 2


@pytest.mark.numerics
def test_resume_with_the_same_processes_is_bit_identical(two_process_runs, tmp_path):
    first, _ = two_process_runs["reinforce-baseline"]  # baselines and streams of both ranks
    resumed = tmp_path / "resumed"
    shutil.copytree(first, resumed)
    flags = [*COMMON, *CASES["reinforce-baseline"], "--epochs", "2"]
    done = torchrun([*flags, "--resume", str(resumed)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    straight = torchrun([*flags, "--out", str(tmp_path / "straight")], cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = load_checkpoint(resumed / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    for name in b["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert [r["train_elbo"] for r in a["history"]] == [r["train_elbo"] for r in b["history"]]


def test_resume_on_another_number_of_processes(two_process_runs, tmp_path):
    from pyro_vae.cli import main

    resumed = tmp_path / "one"
    shutil.copytree(two_process_runs["iwae"][0], resumed)
    code = main(["train", "--resume", str(resumed), "--epochs", "2", "--no-progress",
                 "--no-plots", "--eval-particles", "2", "--eval-images", "10"])  # fmt: skip
    assert code == 0
    state = load_checkpoint(resumed / "checkpoint.pt")
    assert state["epoch"] == 2 and "ranks" not in state  # one process now
    assert state["history"][1]["step"] == 256 // (2 * B) + 256 // B


def test_a_killed_process_ends_the_job_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    job = torchrun([*COMMON, "--epochs", "500", "--out", str(out)], cwd=tmp_path,
                   dist_timeout=60, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        _wait_for_a_checkpoint(job, out)
        victim = _worker(job.pid, rank=1)
        os.kill(victim, signal.SIGKILL)
        _, err = job.communicate(timeout=120)  # no hang
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode != 0
    # the surviving process said why in one line of its own: its partner's loss, or
    # torchrun's SIGTERM if that came first
    ours = [line for line in err.splitlines() if line.startswith("pyro-vae train:")]
    assert len(ours) == 1, err[-3000:]
    assert "another process of the run failed" in ours[0] or "terminated" in ours[0], ours
    assert "[rank0]: Traceback" not in err, err[-3000:]
    state = load_checkpoint(out / "checkpoint.pt")  # the last good checkpoint is whole
    assert state["epoch"] >= 1


def _wait_for_a_checkpoint(job: subprocess.Popen, out: Path) -> None:
    """Until the running ``job`` has written its first checkpoint into ``out``."""
    deadline = time.monotonic() + 180
    while not (out / "checkpoint.pt").exists():
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint in 180 s"
        time.sleep(0.2)


def _worker(launcher: int, rank: int) -> int:
    """The pid of the torchrun worker of ``rank`` under the launcher process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} under {launcher}")


def test_other_commands_refuse_torchrun(tmp_path, capsys, monkeypatch):
    from conftest import cli_fails

    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost",
                        "MASTER_PORT": "29999"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    err = cli_fails(["evaluate", str(tmp_path)], capsys)
    assert "only train runs in several processes" in err


def _our_lines(stderr: str) -> list[str]:
    """The processes' own lines (torchrun adds a report of its own when a process fails)."""
    assert "]: Traceback" not in stderr, stderr[-3000:]  # no process printed a traceback
    return [line for line in stderr.splitlines() if line.startswith("pyro-vae train")]


def test_divergence_stops_every_process_with_one_line(tmp_path):
    out = tmp_path / "deep" / "run"
    done = torchrun([*COMMON, "--lr", "1e30", "--epochs", "2", "--out", str(out)], cwd=tmp_path)
    assert done.returncode != 0
    lines = _our_lines(done.stderr)
    assert len(lines) == 1 and "diverged" in lines[0], lines  # once, from rank 0
    assert not out.exists()  # the new run's folder went with it


def test_a_busy_run_folder_stops_every_process(tmp_path):
    from pyro_vae.runfolder import locked_folder

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    with locked_folder(out):
        done = torchrun([*COMMON, "--epochs", "1", "--out", str(out)], cwd=tmp_path)
        assert sorted(p.name for p in out.iterdir()) == [".pyro_vae.lock", "notes.txt"]
    assert done.returncode != 0
    lines = _our_lines(done.stderr)
    assert len(lines) == 1 and "in use by another pyro-vae process" in lines[0], lines


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.update(ranks="junk"),
        lambda s: s["ranks"][1].update(rng={"torch": 1}),
        lambda s: s["ranks"][0].update(baseline_state={"__baseline": "x"}),
    ],  # fmt: skip
    ids=["not a list", "rank 1 rng", "rank 0 baseline"],
)
def test_damaged_process_states_are_refused(two_process_runs, tmp_path, damage):
    from test_hardening import _rewrite

    from pyro_vae.errors import CheckpointError

    path = tmp_path / "checkpoint.pt"
    shutil.copy(two_process_runs["reinforce-baseline"][0] / "checkpoint.pt", path)
    _rewrite(path, damage)
    with pytest.raises(CheckpointError, match="processes' RNG states and baselines"):
        load_checkpoint(path)


def test_fit_from_a_script_under_torchrun(tmp_path):
    """The docs' Python route: a script makes the process group, fit trains distributed."""
    script = tmp_path / "script.py"
    script.write_text(
        "import sys, torch.distributed as dist, pyro_vae\n"
        "dist.init_process_group('gloo')\n"
        "config = pyro_vae.TrainConfig(dataset='mnist-sample', train_size=128, batch_size=32,\n"
        "                              epochs=1, hidden_sizes=(32,), latent_dim=2)\n"
        "result = pyro_vae.fit(config, run_dir=sys.argv[1])\n"
        "row = result.history[-1]\n"
        "print('RESULT', dist.get_rank(), row['step'], row['train_elbo'], row['valid_elbo'])\n"
        "dist.destroy_process_group()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYRO_VAE_DIST_TIMEOUT": "300"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(tmp_path / "run")],
        cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = sorted(line.split()[1:] for line in done.stdout.splitlines() if "RESULT" in line)
    assert [r[0] for r in rows] == ["0", "1"]
    assert rows[0][1:] == rows[1][1:]  # the same steps and the same summed ELBOs in both
    assert rows[0][1] == str(128 // 64)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


# -- pyro-vae train --processes: torchrun's launch, started by pyro-vae ----------------------


def processes(args, cwd, nproc=2, timeout=600, **popen):
    """``pyro-vae train --processes nproc ARGS`` (the console script's module)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYRO_VAE_DIST_TIMEOUT": "300"}
    command = [sys.executable, "-m", "pyro_vae", "train", "--processes", str(nproc), *args]
    if popen:
        return subprocess.Popen(command, cwd=cwd, env=env, text=True, **popen)
    return subprocess.run(command, cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=timeout)  # fmt: skip


def _clean(stderr: str) -> list[str]:
    """stderr's lines, none of them torchrun's log or a traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.splitlines()
    assert not [line for line in lines if line[:1] in "WEI" and "torch/" in line], lines
    return lines


def test_processes_is_the_torchrun_run(two_process_runs, tmp_path):
    case = "elbo-analytic-kl"
    done = processes([*COMMON, *CASES[case], "--epochs", "1", "--out", "run"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _clean(done.stderr) == []
    assert done.stdout.count("training in") == 1 and done.stdout.count("test ELBO") == 1
    ours = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    theirs = load_checkpoint(two_process_runs[case][0] / "checkpoint.pt")
    assert len(ours["ranks"]) == 2
    for name, value in theirs["model"].items():
        assert torch.equal(ours["model"][name], value), name


def test_processes_report_a_shared_error_once(tmp_path):
    out = tmp_path / "run"
    done = processes([*COMMON, "--lr", "1e30", "--epochs", "2", "--out", str(out)], cwd=tmp_path)
    assert done.returncode == 1
    lines = _clean(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("pyro-vae train: error: training diverged")
    assert not out.exists()
    done = processes([*COMMON, "--train-size", "40", "--out", str(out)], cwd=tmp_path)
    assert done.returncode == 1
    assert _clean(done.stderr) == [
        "pyro-vae train: error: fewer training images than one batch of 64 (2 processes of 32)"
    ]


def test_processes_name_a_process_a_signal_ended(tmp_path):
    out = tmp_path / "run"
    job = processes([*COMMON, "--epochs", "500", "--out", str(out)], cwd=tmp_path,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        _wait_for_a_checkpoint(job, out)
        os.kill(_worker(job.pid, rank=1), signal.SIGKILL)
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 128 + signal.SIGKILL
    lines = _clean(err)
    assert "pyro-vae train: error: process 1 of 2 was ended by SIGKILL" in lines[-1], lines
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1


@pytest.mark.parametrize(
    "sig, group, status, line",
    [
        pytest.param(signal.SIGINT, True, 130, "pyro-vae train: interrupted", id="ctrl-c"),
        pytest.param(signal.SIGTERM, False, 143, "pyro-vae train: terminated", id="sigterm"),
    ],
)
def test_processes_stopped_by_a_signal_say_it_once(tmp_path, sig, group, status, line):
    """Ctrl-C in a terminal (SIGINT to the launcher and its processes alike) or a SIGTERM to
    the launcher: one line for the run, not one a process."""
    out = tmp_path / "run"

    def as_in_a_terminal():  # SIGINT not ignored, as a test run in the background has it
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    job = processes([*COMMON, "--epochs", "500", "--out", str(out)], cwd=tmp_path,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    preexec_fn=as_in_a_terminal)  # fmt: skip
    try:
        _wait_for_a_checkpoint(job, out)
        if group:
            os.killpg(job.pid, sig)
        else:
            os.kill(job.pid, sig)
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == status, err[-3000:]
    assert _clean(err) == [line]
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1


def test_processes_checked_before_any_start(tmp_path, capsys, monkeypatch):
    from conftest import cli_fails

    run = ["train", "--dataset", "mnist-sample", "--out", str(tmp_path / "run")]
    assert "--processes must be at least 1, got 0" in cli_fails([*run, "--processes", "0"], capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    err = cli_fails([*run, "--processes", "2", "--device", "cuda"], capsys)
    assert "--processes 2 with --device cuda needs a GPU each; this machine has 1" in err
    for value in ("soon", "0.000001"):  # 1e-6 s: a screen of C++ frames from each process
        monkeypatch.setenv("PYRO_VAE_DIST_TIMEOUT", value)
        err = cli_fails([*run, "--processes", "2"], capsys)
        assert "PYRO_VAE_DIST_TIMEOUT must be a number of seconds, at least 1" in err
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost",
                        "MASTER_PORT": "29999"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    err = cli_fails([*run, "--processes", "3"], capsys)
    assert "--processes 3 under torchrun, which started 2" in err
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PYRO_VAE_DIST_TIMEOUT"):
        monkeypatch.delenv(name)
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    err = cli_fails([*run, "--processes", "2"], capsys)
    assert "this PyTorch build has no torch.distributed" in err
    assert not (tmp_path / "run").exists()


def test_start_processes_leaves_the_caller_as_it_was(tmp_path, monkeypatch, capfd):
    """The launcher, called in this process: its status, and this process's environment,
    logging and signal handlers as they were."""
    import logging

    from pyro_vae.distributed import start_processes

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.chdir(tmp_path)
    env, handlers = dict(os.environ), {s: signal.getsignal(s) for s in signal.Signals}
    run = ["train", *COMMON, "--epochs", "1", "--out", "run"]
    assert start_processes(2, [*run, "--lr", "-1"]) == 1
    assert dict(os.environ) == env
    assert logging.root.manager.disable == logging.NOTSET
    assert {s: signal.getsignal(s) for s in signal.Signals} == handlers
    # one line, the launcher's, from whichever process failed first (the other may have been
    # stopped by then); never a traceback
    lines = capfd.readouterr().err.splitlines()
    said = [f"pyro-vae train{who}: error: learning rate must be positive and finite, got -1.0"
            for who in ("", " (rank 1)")]  # fmt: skip
    assert len(lines) == 1 and lines[0] in said, lines
    assert start_processes(2, run) == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


def test_torchrun_report_names_the_error(tmp_path):
    done = torchrun([*COMMON, "--lr", "-1", "--out", str(tmp_path / "run")], cwd=tmp_path)
    assert done.returncode != 0
    # torchrun's own report of the failed processes: the cause, not a pointer to a traceback
    # (once, in a full CI run, the report was missing: its stderr is shown if it happens again)
    assert "Root Cause" in done.stderr, done.stderr[-4000:]
    report = done.stderr[done.stderr.index("Root Cause") :]
    assert "traceback : error: learning rate must be positive and finite" in report, report


def test_processes_whose_parameters_drift_apart_stop(tmp_path):
    """A process whose parameters stop being the others' (here rank 1 nudges a weight after
    each step, as a parameter no step sums would drift) ends the run at the epoch's end."""
    script = tmp_path / "script.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist, pyro_vae\n"
        "from pyro_vae.distributed import DistributedStep\n"
        "dist.init_process_group('gloo')\n"
        "step = DistributedStep.__call__\n"
        "def nudged(self, x):\n"
        "    loss = step(self, x)\n"
        "    if dist.get_rank() == 1:\n"
        "        with torch.no_grad():\n"
        "            next(self.vae.decoder.parameters()).view(-1)[0] += float(sys.argv[2])\n"
        "    return loss\n"
        "DistributedStep.__call__ = nudged\n"
        "config = pyro_vae.TrainConfig(dataset='mnist-sample', train_size=128, batch_size=32,\n"
        "                              epochs=2, hidden_sizes=(32,), latent_dim=2)\n"
        "try:\n"
        "    pyro_vae.fit(config, run_dir=sys.argv[1])\n"
        "    said = f'TRAINED {dist.get_rank()}'\n"
        "except pyro_vae.PyroVAEError as e:\n"
        "    said = f'ERROR {dist.get_rank()} {e}'\n"
        "open(f'{sys.argv[1]}.{dist.get_rank()}.said', 'w').write(said)\n"  # no shared stream
        "dist.destroy_process_group()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYRO_VAE_DIST_TIMEOUT": "300"}
    for nudge in ("0.0", "1e-6"):
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(script), str(tmp_path / nudge), nudge],
            cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        lines = [(tmp_path / f"{nudge}.{rank}.said").read_text() for rank in (0, 1)]
        if nudge == "0.0":  # adding zero changes nothing: the check does not cry wolf
            assert lines == ["TRAINED 0", "TRAINED 1"], done.stdout
            continue
        assert len(lines) == 2 and all(line.startswith("ERROR") for line in lines), lines
        assert (
            "after epoch 1, the parameters of process 1 differ from those of process 0"
            in (lines[0])
        )
        assert "no checkpoint was written" in lines[0]
        assert not (tmp_path / nudge).exists()


@pytest.mark.parametrize("closed", [1, 2])
def test_processes_with_a_closed_stream(tmp_path, closed):
    """``pyro-vae train --processes 2 >&-`` (or ``2>&-``): the run is trained and written."""
    out = tmp_path / "run"
    job = processes([*COMMON, "--epochs", "1", "--out", str(out)], cwd=tmp_path,
                    preexec_fn=lambda: os.close(closed))  # fmt: skip
    assert job.wait(timeout=600) == 0
    assert (out / "evaluation.json").exists()


def test_processes_end_with_their_launcher(tmp_path):
    """A launcher killed outright (SIGKILL: it cannot stop its processes) takes them with it;
    they release the run folder and leave its last checkpoint."""
    out = tmp_path / "run"
    job = processes([*COMMON, "--epochs", "500", "--out", str(out)], cwd=tmp_path,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        _wait_for_a_checkpoint(job, out)
        workers = [_worker(job.pid, rank) for rank in (0, 1)]
        job.kill()
        _, err = job.communicate(timeout=60)  # the pipe closes when the workers are gone
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    for pid in workers:  # gone, or a zombie its new parent has yet to reap
        with contextlib.suppress(FileNotFoundError):
            assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    # with the launcher gone, rank 0 says it (its partner's SIGTERM is a consequence)
    assert _clean(err) == ["pyro-vae train: terminated"]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint.pt", "config.json", "metrics.jsonl"]  # and no lock
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1


def test_start_processes_names_a_signal_only_where_no_process_said_why(tmp_path, monkeypatch,
                                                                      capsys):  # fmt: skip
    """The launcher's line for a process a signal ended, from torchrun's record of the failed
    processes: none where another process stopped with an error of its own (the launcher then
    ended the rest), one where the others only lost their partner or were stopped."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from pyro_vae.distributed import start_processes

    def failure(rank, exitcode, what=None, cause=True, line=None):
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.json"  # a process's error file
        if what is not None:
            info = {"timestamp": str(rank), "cause": cause}
            if line is not None:  # what pyro-vae's processes report: the line to print
                info["line"] = line
            path.write_text(json.dumps({"message": {"message": what, "extraInfo": info}}))
        return ProcessFailure(local_rank=rank, pid=1 + rank, exitcode=exitcode,
                              error_file=str(path))  # fmt: skip

    killed = "pyro-vae train: error: process 1 of 2 was ended by SIGKILL; the run folder keeps"
    cases = [
        ({0: failure(0, 1, "error: no room"), 1: failure(1, -15)}, 1, []),
        ({0: failure(0, 1), 1: failure(1, -15)}, 1, []),  # a traceback: it said why itself
        ({0: failure(0, 143, "terminated", False), 1: failure(1, -9)}, 143, [killed]),
        ({0: failure(0, 1, "error: another process ...", False), 1: failure(1, -9)}, 1, [killed]),
        ({1: failure(1, -9)}, 137, [killed]),
        # the processes' own lines: the first cause by rank, else the signal, else the first
        # consequence; one line in every case
        ({0: failure(0, 143, "terminated", False, "pyro-vae train: terminated"),
          1: failure(1, 1, "error: no room", True, "pyro-vae train (rank 1): error: no room")},
         143, ["pyro-vae train (rank 1): error: no room"]),
        ({0: failure(0, 1, "error: nan", True, "pyro-vae train: error: nan"),
          1: failure(1, 1, "error: nan", True, "pyro-vae train: error: nan")},
         1, ["pyro-vae train: error: nan"]),
        ({0: failure(0, 1, "error: lost", False, "pyro-vae train: error: lost"),
          1: failure(1, -9)}, 1, [killed]),
        ({0: failure(0, 130, "interrupted", False, "pyro-vae train: interrupted"),
          1: failure(1, 130, "interrupted", False, "pyro-vae train (rank 1): interrupted")},
         130, ["pyro-vae train: interrupted"]),
    ]  # fmt: skip
    for failures, status, lines in cases:

        def run(args, failures=failures):
            raise ChildFailedError("pyro_vae", failures)

        monkeypatch.setattr(torchrun, "run", run)
        assert start_processes(2, ["train"]) == status
        said = capsys.readouterr().err.splitlines()
        assert [line[: len(killed)] for line in said] == lines, (failures, said)


def test_processes_of_a_launcher_that_is_process_1(tmp_path):
    """A launcher that is its PID namespace's first process (torchrun as a container's entry
    point; here ``unshare --pid``): its processes' parent is process 1, and they train."""
    if (
        shutil.which("unshare") is None
        or subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True
        ).returncode
    ):
        pytest.skip("cannot make a PID namespace here (unshare, privileges)")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYRO_VAE_DIST_TIMEOUT": "300"}
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "pyro_vae", "train",
         "--processes", "2", *COMMON, "--epochs", "1", "--out", str(out)],
        cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
