"""Pyro's M2 tutorial table on 2 cores: the semi-supervised VAE's test accuracy with 100, 600,
1000 and 3000 labelled MNIST images, by how the unobserved label is handled, beside the
tutorial's figures, Kingma et al.'s (2014) Table 1 and Jang et al.'s (2017) Table 2.

The setting is the tutorial's (``examples/vae/ss_vae_M2.py``): 50,000 training images and
10,000 for validation (``--valid-fraction 1/6``), a 50-dimensional style ``z``, one hidden
layer of 500 softplus units in each network, batch 200, Adam at learning rate 4.2e-4, the
labelled images drawn class-balanced. Where it differs: Adam's beta1 is 0.9 (the tutorial's
0.95), the images are binarized afresh each batch (the tutorial scores grey levels with a
Bernoulli), and the budget is ``--epochs`` (default 5) rather than 50, the same for every row.
The auxiliary loss is the tutorial's: each labelled image's ``log q(y|x)`` weighted by 46 at
every label count, which is ``--aux-loss`` ``46 N_l / N`` (:func:`pyro_vae.m2.aux_scale`).

Rows: the label sampled (``reinforce``, the tutorial's first row), enumerated (its second), and
enumerated with the auxiliary loss (its third); then, with the auxiliary loss, the label
sampled, sampled with NVIL's baselines (``reinforce-nn-baseline``), and relaxed
(``gumbel``, ``straight-through``, at temperature 0.5); and the classifier alone: the same
784-500-10 network trained on the labelled images only (cross-entropy, Adam at 1e-3, 200 passes
over them, batch ``min(200, N_l)``). Each is run ``--draws`` times, each draw a different
labelled set (``--label-seed``) and seed; the table's figure is the mean test accuracy on all
10,000 test images.

Every run is a ``pyro-vae train`` of its own, in ``OUT/runs/NAME``, ``--jobs`` at once with one
thread each; a finished run is kept, so a stopped table resumes where it was. The report,
``OUT/m2_table.json``, holds every run's test figures and its validation accuracy by epoch,
and the training seconds of a step; the figure, ``OUT/m2_table.png``, the accuracy curves::

    python benchmarks/m2_table.py --data-dir ../shared/data --out DIR --epochs 5 --draws 2
    python benchmarks/m2_table.py --out DIR --from-json benchmarks/results/m2_table.json

``--quick``: one epoch of tiny runs on the bundled ``mnist-sample`` (what the test suite runs).
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

LABELS = [100, 600, 1000, 3000]
TRAIN, VALID = 50_000, 10_000
TUTORIAL_SCALE = 46.0
# (name, estimator, auxiliary loss, what it is)
ROWS = [
    ("sampled", "reinforce", False, "label sampled (score function)"),
    ("enumerated", "enumerate", False, "label summed out"),
    ("enumerated+aux", "enumerate", True, "summed out, auxiliary loss"),
    ("sampled+aux", "reinforce", True, "sampled, auxiliary loss"),
    ("nvil+aux", "reinforce-nn-baseline", True, "sampled with NVIL's baselines, auxiliary loss"),
    ("gumbel+aux", "gumbel", True, "Gumbel-softmax, auxiliary loss"),
    ("straight-through+aux", "straight-through", True, "straight-through, auxiliary loss"),
]
# Pyro's tutorial (pyro.ai/examples/ss-vae.html), test accuracy at 100 / 600 / 1000 / 3000.
TUTORIAL = {
    "sampled": (0.2007, 0.1791, 0.2006, 0.1982),
    "enumerated": (0.2254, 0.6939, 0.7562, 0.8932),
    "enumerated+aux": (0.9319, 0.9437, 0.9487, 0.9582),
    "classifier": (0.7712, 0.8716, 0.8863, 0.9108),
}
# Kingma et al. (2014), Table 1: test error (%) of M2 at 100 / 600 / 1000 / 3000 labels.
KINGMA_M2 = (11.97, 4.94, 3.60, 3.92)
# Jang et al. (2017), Table 2: M2 at 100 labels, test accuracy (%), and speed.
JANG = {"enumerated+aux": 92.6, "gumbel+aux": 92.4, "straight-through+aux": 93.6}


def runs(quick: bool, draws: int, labels: list[int]) -> list[dict]:
    """Every training run of the table, the dearest (enumerated, most labels) first."""
    out = []
    for count in sorted(labels, reverse=True):
        for draw in range(draws):
            for name, estimator, aux, _ in ROWS:
                out.append(dict(name=f"{name}-{count}-{draw}", row=name, labels=count, draw=draw,
                                estimator=estimator, aux=aux))  # fmt: skip
    return sorted(out, key=lambda r: (r["estimator"] != "enumerate", -r["labels"]))


def train_command(run: dict, args, out: Path) -> list[str]:
    train = 1500 if args.quick else TRAIN
    command = [
        sys.executable, "-m", "pyro_vae", "train", "--model", "m2",
        "--labels", str(run["labels"]), "--label-seed", str(run["draw"]),
        "--seed", str(run["draw"]), "--estimator", run["estimator"],
        "--latent-dim", "50", "--hidden-sizes", "500", "--activation", "softplus",
        "--lr", "0.00042", "--batch-size", "200", "--epochs", str(args.epochs),
        "--eval-images", "0", "--eval-particles", "1", "--no-plots", "--no-progress",
        "--out", str(out / "runs" / run["name"]),
    ]  # fmt: skip
    if args.quick:
        command += ["--dataset", "mnist-sample", "--train-size", str(train), "--hidden-sizes",
                    "100", "--latent-dim", "10"]  # fmt: skip
    else:
        command += ["--valid-fraction", str(VALID / (TRAIN + VALID))]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if run["aux"]:
        command += ["--aux-loss", repr(TUTORIAL_SCALE * run["labels"] / train)]
    if run["estimator"] in ("gumbel", "straight-through"):
        command += ["--temperature", "0.5"]
    return command


def _run_one(run: dict, args, out: Path) -> dict:
    folder = out / "runs" / run["name"]
    if not (folder / "evaluation.json").exists():
        if folder.exists():
            shutil.rmtree(folder)  # a run stopped part way starts again
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        started = time.perf_counter()
        done = subprocess.run(train_command(run, args, out), env=env, capture_output=True,
                              text=True)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"run {run['name']} failed: {done.stderr.strip().splitlines()[-1]}")
        print(f"{run['name']}: {time.perf_counter() - started:.0f} s", flush=True)
    evaluation = json.loads((folder / "evaluation.json").read_text())
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = history[-1]["step"]
    return {**run, "test_accuracy": evaluation["accuracy"], "test_elbo": evaluation["test_elbo"],
            "valid_accuracy": [row.get("valid_accuracy") for row in history],
            "ms_per_step": 1000 * history[-1]["seconds"] / steps, "steps": steps}  # fmt: skip


def step_time(row: str, args, out: Path) -> float:
    """Milliseconds of a training step of ``row``'s estimator, measured alone on one thread:
    two epochs of 30 steps (6000 images, batch 200, 100 labels), the second one timed."""
    name, estimator, aux, _ = next(r for r in ROWS if r[0] == row)
    run = dict(name=f"timing-{name}", row=name, labels=100, draw=0, estimator=estimator, aux=aux)
    folder = out / "runs" / run["name"]
    shutil.rmtree(folder, ignore_errors=True)
    command = train_command(run, argparse.Namespace(**{**vars(args), "epochs": 2}), out)
    size = "300" if args.quick else "6000"
    command += ["--train-size", size, "--eval-images", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return 1000 * (rows[1]["seconds"] - rows[0]["seconds"]) / (rows[1]["step"] - rows[0]["step"])


def classifier_alone(count: int, draw: int, args) -> float:
    """Test accuracy of the 784-500-10 classifier trained on the ``count`` labelled images."""
    import torch
    import torch.nn.functional as F

    from pyro_vae import TrainConfig
    from pyro_vae.labels import draw_labelled
    from pyro_vae.networks import Encoder
    from pyro_vae.splits import run_images

    quick = dict(dataset="mnist-sample", train_size=1500) if args.quick else {}
    config = TrainConfig(model="m2", labels=count, label_seed=draw, seed=draw,
                         data_dir=args.data_dir, valid_fraction=VALID / (TRAIN + VALID),
                         **quick)  # fmt: skip
    images = run_images(config, None)
    drawn = draw_labelled(images.train_labels, count, draw, 10)
    x = images.train[drawn >= 0].float() / (255 if images.train.dtype == torch.uint8 else 1)
    y = drawn[drawn >= 0]
    torch.manual_seed(draw)
    net = Encoder(x.shape[1], 10, (500,), "softplus", 0)
    optim = torch.optim.Adam(net.parameters(), lr=1e-3)
    batch = min(200, count)
    generator = torch.Generator().manual_seed(draw)
    for _ in range(20 if args.quick else 200):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            index = order[start : start + batch]
            loss = F.cross_entropy(net(x[index].bernoulli(generator=generator))[0], y[index])
            optim.zero_grad()
            loss.backward()
            optim.step()
    with torch.no_grad():
        test_y = images.data.test_labels
        return (net(images.test)[0].argmax(-1) == test_y).float().mean().item()


def table(results: list[dict], classifier: dict, labels: list[int]) -> str:
    """The markdown table: mean test accuracy (and the draws' range) beside the tutorial's."""
    head = "| label | " + " | ".join(f"{n} labels" for n in labels) + " | tutorial |"
    lines = [head, "|" + "---|" * (len(labels) + 2)]
    for name, _, _, words in [*ROWS, ("classifier", None, None, "classifier alone")]:
        cells = []
        for count in labels:
            if name == "classifier":
                values = classifier.get(str(count), [])
            else:
                values = [r["test_accuracy"] for r in results
                          if r["row"] == name and r["labels"] == count]  # fmt: skip
            cells.append(f"{sum(values) / len(values):.4f}" if values else "")
        theirs = TUTORIAL.get(name)
        tutorial = " / ".join(f"{v:.4f}" for v in theirs) if theirs else ""
        lines.append(f"| {words} | " + " | ".join(cells) + f" | {tutorial} |")
    return "\n".join(lines)


def figure(results: list[dict], path: Path, labels: list[int]) -> None:
    from matplotlib.figure import Figure

    shown = [labels[0], labels[-1]] if len(labels) > 1 else labels
    fig = Figure(figsize=(11, 5))
    for i, count in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1)
        for j, (name, _, _, words) in enumerate(ROWS):
            curves = [r["valid_accuracy"] for r in results
                      if r["row"] == name and r["labels"] == count]  # fmt: skip
            if not curves:
                continue
            mean = [sum(c[e] for c in curves) / len(curves) for e in range(len(curves[0]))]
            ax.plot(range(1, len(mean) + 1), mean, marker="o", color=f"C{j}", label=words)
        ax.set_title(f"{count} labels: validation accuracy (mean of draws)")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    handles, names = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--draws", type=int, default=2)
    p.add_argument("--labels", type=int, nargs="+", default=LABELS)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--from-json", type=Path, help="redraw the table and figure from a report")
    p.add_argument("--no-timing", action="store_true", help="skip the step times measured alone")
    p.add_argument("--retime", action="store_true",
                   help="measure the step times alone again, into OUT/m2_table.json")  # fmt: skip
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json or args.retime:
        report = json.loads((args.from_json or args.out / "m2_table.json").read_text())
        if args.retime:
            report["ms_per_step_alone"] = {
                row[0]: step_time(row[0], args, args.out) for row in ROWS
            }
            (args.out / "m2_table.json").write_text(json.dumps(report, indent=1) + "\n")
    else:
        todo = runs(args.quick, args.draws, args.labels)
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda r: _run_one(r, args, args.out), todo))
        classifier = {str(n): [classifier_alone(n, d, args) for d in range(args.draws)]
                      for n in args.labels}  # fmt: skip
        timing = {} if args.no_timing else {
            row[0]: step_time(row[0], args, args.out) for row in ROWS
        }  # fmt: skip
        report = {"results": results, "classifier": classifier, "epochs": args.epochs,
                  "ms_per_step_alone": timing,
                  "draws": args.draws, "labels": args.labels, "quick": args.quick,
                  "machine": f"{platform.processor() or platform.machine()}, "
                             f"{os.cpu_count()} cores"}  # fmt: skip
        (args.out / "m2_table.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(report["results"], report["classifier"], report["labels"]))
    timing = report.get("ms_per_step_alone") or {}
    for row, ms in timing.items():  # a step's cost, one thread, the runs' own setting
        ratio = ms / timing["enumerated+aux"] if "enumerated+aux" in timing else float("nan")
        print(f"  {row}: {ms:.1f} ms a step alone ({ratio:.2f} x enumerated+aux)")
    figure(report["results"], args.out / "m2_table.png", report["labels"])
    print(f"wrote {args.out / 'm2_table.json'} and {args.out / 'm2_table.png'}")
    return report


if __name__ == "__main__":
    main()
