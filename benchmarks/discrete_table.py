"""The published table of discrete-latent VAEs on binarized MNIST, at a budget of about two hours
on 2 cores, beside the papers' figures.

The data is the fixed binarization of Salakhutdinov & Murray (2008), ``--dataset
binarized-mnist``: train on its 50,000 training images, score every epoch on its 10,000
validation images, and test on its 10,000 test images. The models are those of the ARM and
DisARM experiments (Yin & Zhou 2019; Dong et al. 2020), with 200 Bernoulli units:

- ``linear``: 784 -> 200 -> 784, a linear encoder and decoder (``--hidden-sizes`` with no values);
- ``nonlinear``: two dense layers of 200 LeakyReLU(0.3) units either side of the code;

the encoder's input centred on the training mean, the decoder's output bias at the data's
marginal, batch 50, Adam with learning rate 1e-4. Each estimator trains each model from the same
seed for the same number of epochs (1,000 steps each); ``reinforce-loo`` and ``vimco`` take
``K = 2`` draws an image, as many decoder evaluations as the ARM pair. Gumbel-softmax and
straight-through anneal the temperature as Jang et al. (2017): ``max(0.5, exp(-1e-5 step))``.
Jang et al.'s categorical latent, 20 groups of 10 classes, trains on the linear model (their
VAE is 784-200-784 for the Bernoulli latent, a linear encoder and decoder) with their three
estimators.

Every run is a ``pyro-vae train`` of its own, in ``OUT/runs/NAME``, ``--jobs`` of them at once
with one thread each; a run that was stopped resumes from its checkpoint, a finished one is kept.
At the end each run is scored by ``pyro-vae train``'s own evaluation (or ``pyro-vae
evaluate``, for a run scored otherwise before): the test ELBO and the importance-sampled
``log p(x)`` with ``K = --eval-particles`` (100) draws of the guide an image, on all 10,000
test images. The report, ``OUT/discrete_table.json``, holds every run's curve
(training and validation ELBO against steps and seconds) and its test figures; the figure,
``OUT/discrete_table.png``, the curves against steps and against time.

The runs' own clocks are shared: two runs at once, and whatever else the machine does. So the
time axis is each run's steps times its step's cost measured alone: after the training, each
configuration trains 2 x 200 more steps by itself, one at a time, one thread
(``--no-timing`` skips this), and its milliseconds a step is the second epoch's training time
(``metrics.jsonl``'s ``seconds``, which leaves out the validation) over 200::

    python benchmarks/discrete_table.py --data-dir ../shared/data --out DIR --epochs 100
    python benchmarks/discrete_table.py --out DIR \
        --from-json benchmarks/results/discrete_table.json

``--quick``: two epochs of tiny runs on the bundled ``mnist-sample`` (what the test suite runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ESTIMATORS = ["reinforce", "reinforce-nn-baseline", "reinforce-loo", "vimco", "arm", "disarm",
              "gumbel", "straight-through"]  # fmt: skip
CATEGORICAL_ESTIMATORS = ["reinforce", "gumbel", "straight-through"]
MODELS = {"linear": [], "nonlinear": ["200", "200"]}
DRAWS = {"reinforce-loo": "2", "vimco": "2"}
ANNEAL = ["--temperature", "1", "--temperature-anneal", "1e-5", "--temperature-min", "0.5"]

# What the papers report, in nats (lower is better), on the static binarization.
# Yin & Zhou (2019), Table 2: test -log p(x), collected from the earlier papers, linear / nonlinear.
YIN_ZHOU = {"reinforce": (164.0, 114.6), "reinforce-nn-baseline": (113.1, 102.2),
            "gumbel": (107.3, 99.6), "arm": (107.2, 98.4)}  # fmt: skip
YIN_ZHOU_REBAR = (107.7, 101.4)
# Jang et al. (2017), Table 1: test negative variational bound (their text: evaluated with a
# 1000-sample bound), the VAE 784-200-784 with 200 Bernoulli units, and with 20 x 10 categorical.
JANG = {"reinforce": (112.2, 110.6), "straight-through": (116.0, 110.9), "gumbel": (105.0, 101.5)}


def runs(quick: bool) -> list[dict]:
    """Every run of the table: its name and the flags of its ``pyro-vae train``."""
    out = []  # the dearest first, so that two jobs end together
    for latent, model in (("bernoulli", "nonlinear"), ("categorical", "linear"),
                          ("bernoulli", "linear")):  # fmt: skip
        for estimator in ESTIMATORS if latent == "bernoulli" else CATEGORICAL_ESTIMATORS:
            out.append(dict(name=f"{latent}-{model}-{estimator}", latent=latent, model=model,
                            estimator=estimator, hidden=MODELS[model]))  # fmt: skip
    for run in out:
        flags = ["--latent", run["latent"], "--estimator", run["estimator"],
                 "--hidden-sizes", *(["16"] if quick and run["hidden"] else run["hidden"]),
                 "--activation", "leaky-relu", "--center-input", "--batch-size", "50"]  # fmt: skip
        if run["latent"] == "bernoulli":
            flags += ["--latent-dim", "8" if quick else "200"]
        else:
            groups, classes = ("3", "4") if quick else ("20", "10")
            flags += ["--latent-dim", groups, "--categories", classes]
        if run["estimator"] in DRAWS:
            flags += ["-K", DRAWS[run["estimator"]]]
        if run["estimator"] in ("gumbel", "straight-through"):
            flags += ANNEAL
        if quick:
            flags += ["--dataset", "mnist-sample", "--train-size", "500", "--lr", "1e-3"]
        else:
            flags += ["--dataset", "binarized-mnist", "--lr", "1e-4"]
        run["flags"] = flags
    return out


def _run(command: list[str], args, log: Path, name: str) -> None:
    """``pyro-vae COMMAND`` in a process of its own, one thread, its output into ``log``."""
    command = [sys.executable, "-m", "pyro_vae", *command]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "a") as out:
        started = time.perf_counter()
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}); see {log}")
    seconds = time.perf_counter() - started
    print(f"{name}: {command[3]} {seconds:.0f} s", file=sys.stderr, flush=True)


def train(run: dict, args, folder: Path, test_images: int) -> dict:
    """Train (or resume, or keep) one run, and score it on every test image; its record."""
    run_dir, log = folder / run["name"], folder / f"{run['name']}.log"
    done = run_dir / "evaluation.json"
    if not done.exists():
        where = ["--resume", str(run_dir)] if (run_dir / "checkpoint.pt").exists() else [
            "--out", str(run_dir)]  # fmt: skip
        _run(["train", *run["flags"], *where, "--epochs", str(args.epochs), "--eval-particles",
              str(args.eval_particles), "--eval-images", "0", "--no-plots", "--no-progress"],
             args, log, run["name"])  # fmt: skip
    scored = json.loads(done.read_text())
    if (scored["num_images"], scored["num_particles"]) != (test_images, args.eval_particles):
        _run(["evaluate", str(run_dir), "-K", str(args.eval_particles), "--num-images", "0"],
             args, log, run["name"])  # fmt: skip
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluation = json.loads(done.read_text())
    keep = ("num_images", "num_particles", "test_elbo", "test_elbo_stderr", "log_likelihood",
            "log_likelihood_stderr", "active_units")  # fmt: skip
    return {key: run[key] for key in ("name", "latent", "model", "estimator", "flags")} | {
        "history": [{k: h[k] for k in ("step", "train_elbo", "valid_elbo", "seconds")}
                    for h in history],
        "test": {k: evaluation[k] for k in keep},
    }  # fmt: skip


def step_cost(run: dict, args, folder: Path) -> float:
    """Milliseconds a training step of ``run``'s configuration takes alone: two epochs of 200
    steps in a process of its own, one thread; the second epoch's training time over 200."""
    run_dir = folder / f"timing-{run['name']}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    images = 200 * 50 if not args.quick else 500
    command = [sys.executable, "-m", "pyro_vae", "train", *run["flags"], "--out", str(run_dir),
               "--epochs", "2", "--train-size", str(images), "--eval-images", "10",
               "--eval-particles", "1", "--no-plots", "--no-progress"]  # fmt: skip
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run(command, check=True, capture_output=True, env=env)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(run_dir)
    steps = history[1]["step"] - history[0]["step"]
    return 1000 * (history[1]["seconds"] - history[0]["seconds"]) / steps


def minutes(run: dict, h: dict) -> float:
    """The time ``h``'s steps take alone (the step's cost measured alone), or the run's own
    clock where the cost was not measured."""
    ms = run.get("step_ms")
    return h["step"] * ms / 60000 if ms else h["seconds"] / 60


def elbo_at(run: dict, key: str, at_minutes: float) -> float:
    """The ``key`` ELBO of the last epoch ended by ``at_minutes``."""
    before = [h[key] for h in run["history"] if minutes(run, h) <= at_minutes * (1 + 1e-9)]
    return before[-1] if before else float("nan")


def published(run: dict) -> str:
    linear = run["model"] == "linear"
    if run["latent"] == "categorical":
        return f"{JANG[run['estimator']][1]} (J)" if run["estimator"] in JANG else ""
    cells = []
    if run["estimator"] in YIN_ZHOU:
        cells.append(f"{YIN_ZHOU[run['estimator']][0 if linear else 1]} (YZ)")
    if run["estimator"] in JANG and linear:
        cells.append(f"{JANG[run['estimator']][0]} (J)")
    return ", ".join(cells)


def _groups(results: dict) -> dict[tuple, list]:
    groups: dict[tuple, list] = {}
    for run in results["runs"]:
        groups.setdefault((run["latent"], run["model"]), []).append(run)
    return groups


def table(results: dict) -> str:
    """One row a run, in nats per image, lower is better: the step's cost, the negative ELBOs
    at the end and at the group's common time, the test figures, and the published ones."""
    lines = []
    for (latent, model), group in _groups(results).items():
        common = min(minutes(run, run["history"][-1]) for run in group)
        steps = group[0]["history"][-1]["step"]
        k = group[0]["test"]["num_particles"]
        lines += [f"\n{latent} latent, {model} model, {steps} steps\n",
                  f"| estimator | ms a step | minutes | train -ELBO | valid. -ELBO | valid. "
                  f"-ELBO at {common:.0f} min | test -ELBO | test -log p(x), K = {k} | active "
                  "units | published |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for run in group:
            last, test = run["history"][-1], run["test"]
            bound = " (K = 2 bound)" if run["estimator"] == "vimco" else ""
            ms = f"{run['step_ms']:.2f}" if run.get("step_ms") else "-"
            lines.append(
                f"| `{run['estimator']}` | {ms} | {minutes(run, last):.1f} | "
                f"{-last['train_elbo']:.2f}{bound} | {-last['valid_elbo']:.2f} | "
                f"{-elbo_at(run, 'valid_elbo', common):.2f} | "
                f"{-test['test_elbo']:.2f} ± {test['test_elbo_stderr']:.2f} | "
                f"{-test['log_likelihood']:.2f} ± {test['log_likelihood_stderr']:.2f} | "
                f"{test['active_units']} | {published(run)} |"
            )
    return "\n".join(lines)


def summary(results: dict) -> str:
    """The budget of the whole table, and where each curve was at a quarter, half, three
    quarters and the end of its steps (validation -ELBO)."""
    alone = [run["step_ms"] * run["history"][-1]["step"] / 60000 for run in results["runs"]
             if run.get("step_ms")]  # fmt: skip
    own = sum(run["history"][-1]["seconds"] for run in results["runs"]) / 60
    budget = (f"\nbudget: {sum(alone):.0f} minutes of one core at the step costs measured alone "
              f"({len(alone)} runs), {sum(alone) / 2:.0f} on two; the runs' own clocks add up "
              f"to {own:.0f} minutes")  # fmt: skip
    lines = [budget, "validation -ELBO at 1/4, 1/2, 3/4 and all of the steps:"]
    for run in results["runs"]:
        history = run["history"]
        marks = [history[max(0, len(history) * k // 4 - 1)] for k in (1, 2, 3, 4)]
        points = ", ".join(f"{-h['valid_elbo']:.2f} ({h['step']})" for h in marks)
        lines.append(f"  {run['name']}: {points}")
    return "\n".join(lines)


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    groups = _groups(results)
    fig = Figure(figsize=(11, 3.6 * len(groups)))
    colors = {e: f"C{i}" for i, e in enumerate(ESTIMATORS)}
    for row, ((latent, model), group) in enumerate(groups.items()):
        best = min(-run["history"][-1]["valid_elbo"] for run in group)
        for col, label in enumerate(("steps", "minutes")):
            ax = fig.add_subplot(len(groups), 2, 2 * row + col + 1)
            for run in group:
                xs = [h["step"] if col == 0 else minutes(run, h) for h in run["history"]]
                ax.plot(xs, [-h["valid_elbo"] for h in run["history"]], label=run["estimator"],
                        color=colors[run["estimator"]])  # fmt: skip
            ax.set_ylim(best - 3, best + 40)  # REINFORCE's curve is far above the others
            ax.set_xlabel(label + (" (steps x the step's cost alone)" if col else ""))
            ax.set_ylabel("validation -ELBO (nats)")
            ax.set_title(f"{latent} latent, {model} model, against {label}", fontsize="medium")
            ax.grid(alpha=0.3)
            if col == 1:
                ax.legend(fontsize="x-small", loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=100, help="1,000 steps each (default 100)")
    p.add_argument("--eval-particles", type=int, default=100)
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    p.add_argument("--only", nargs="*", help="the runs of these names only")
    p.add_argument("--no-timing", action="store_true", help="no step costs measured alone")
    p.add_argument("--data-dir")
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--from-json")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        if args.quick:
            args.epochs, args.eval_particles = 2, 10
        todo = [r for r in runs(args.quick) if not args.only or r["name"] in args.only]
        folder = out / "runs"
        folder.mkdir(exist_ok=True)
        started = time.perf_counter()
        from pyro_vae import load_dataset

        dataset = "mnist-sample" if args.quick else "binarized-mnist"
        test_images = len(load_dataset(dataset, args.data_dir).test_images)
        with ThreadPoolExecutor(args.jobs) as pool:
            records = list(pool.map(lambda r: train(r, args, folder, test_images), todo))
        for run, record in zip(todo, records, strict=True):  # one at a time: nothing else runs
            if not args.no_timing:
                record["step_ms"] = step_cost(run, args, folder)
                print(f"{run['name']}: {record['step_ms']:.2f} ms a step", file=sys.stderr)
        import torch

        results = {
            "command": " ".join(["python benchmarks/discrete_table.py", *sys.argv[1:]]),
            "machine": f"{platform.processor() or platform.machine()}, {args.jobs} runs at once "
            f"with one thread each, torch {torch.__version__}",
            "wall_seconds": time.perf_counter() - started,
            "runs": records,
        }  # fmt: skip
        (out / "discrete_table.json").write_text(json.dumps(results, indent=1) + "\n")
    figure(results, out / "discrete_table.png")
    print(table(results))
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
