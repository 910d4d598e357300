"""Pyro's CVAE table on 2 cores: the negative conditional log-likelihood of the hidden
quadrants of MNIST test digits given the visible ones (1, 2 or 3 quadrants), for the
deterministic baseline network and the conditional VAE, beside Pyro's figures
(``examples/cvae``) and the importance-sampled figure of each CVAE.

The setting is Pyro's: a 200-dimensional ``z``, two hidden layers of 500 ReLU units in every
network (the baseline 784-500-500-784), batch 128, Adam at learning rate 1e-3. Where it
differs (``docs/labels.md`` says why):

- the baseline trains beside the CVAE, in the same run, on its own cross-entropy (Pyro trains
  it first, then the CVAE on top of it);
- the KL is taken in closed form (``elbo-analytic-kl``, the default): with Pyro's sampled KL
  in 200 dimensions our runs left ``z`` unused;
- the images are binarized afresh each batch and the test images once (Pyro scores grey levels
  with a Bernoulli). The cross-entropy is linear in the target, so a prediction's cross-entropy
  on grey levels is its expected cross-entropy on their binarizations: the figures compare;
- the budget is ``--epochs`` (default 20) with a validation split of 1/10, rather than up to
  101 epochs with early stopping on the test set.

Figures, nats per test image (all 10,000; lower is better): the baseline's cross-entropy of the
hidden pixels (Pyro's ``MaskedBCELoss``); the CVAE's negative ELBO, which is what Pyro's table
estimates (``Trace_ELBO(num_particles=10)``, here the mean of ``K`` log weights); and ``-log
p(x_hidden | x_visible)``, importance-sampled with ``K`` draws, the honest figure.

Every run is a ``pyro-vae train`` in ``OUT/runs/NAME`` (its ``samples.png``: the completions),
one at a time; a finished run is kept, so a stopped table resumes where it was. Also a CVAE
on the label (``--condition label``, the default 784-400-20 networks), whose ``samples.png``
draws each class. The report is ``OUT/cvae_table.json``::

    python benchmarks/cvae_table.py --data-dir ../shared/data --out DIR --epochs 20
    python benchmarks/cvae_table.py --out DIR --from-json benchmarks/results/cvae_table.json

``--quick``: one epoch of tiny runs on the bundled ``mnist-sample`` (what the test suite runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

# Pyro's examples/cvae results (pyro.ai/examples/cvae.html), 1 / 2 / 3 visible quadrants
PYRO = {"baseline": (100.4, 61.9, 25.4), "cvae": (71.8, 51.0, 24.2)}
PYRO_SETTINGS = ["--latent-dim", "200", "--hidden-sizes", "500", "500", "--activation", "relu",
                 "--learning-rate", "1e-3", "--batch-size", "128"]  # fmt: skip
QUICK = ["--dataset", "mnist-sample", "--train-size", "300", "--latent-dim", "2",
         "--hidden-sizes", "16"]  # fmt: skip


def runs() -> list[dict]:
    out = [{"name": f"quadrants-{q}", "condition": f"quadrants-{q}", "quadrants": q}
           for q in (1, 2, 3)]  # fmt: skip
    return [*out, {"name": "label", "condition": "label", "quadrants": None}]


def train_command(run: dict, args, out: Path) -> list[str]:
    settings = QUICK if args.quick else (PYRO_SETTINGS if run["quadrants"] else [])
    command = [sys.executable, "-m", "pyro_vae", "train", "--model", "cvae", "--condition",
               run["condition"], *settings, "--epochs", str(1 if args.quick else args.epochs),
               "--eval-particles", str(2 if args.quick else args.particles), "--no-progress",
               "--out", str(out / "runs" / run["name"])]  # fmt: skip
    command += ["--eval-images", str(20 if args.quick else 10_000)]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    return command


def _run_one(run: dict, args, out: Path) -> dict:
    folder = out / "runs" / run["name"]
    if not (folder / "evaluation.json").exists():  # a finished run is kept
        if folder.exists():
            subprocess.run(["rm", "-rf", str(folder)], check=True)
        done = subprocess.run(train_command(run, args, out), capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{run['name']} failed: {done.stderr.strip()}")
    scores = json.loads((folder / "evaluation.json").read_text())
    wanted = (10_000, args.particles)
    if not args.quick and (scores["num_images"], scores["num_particles"]) != wanted:
        # a run evaluated otherwise (on fewer images): all 10,000 test images, K particles
        command = [sys.executable, "-m", "pyro_vae", "evaluate", str(folder), "-K",
                   str(args.particles)]  # fmt: skip
        command += ["--data-dir", args.data_dir] if args.data_dir else []
        subprocess.run(command, capture_output=True, text=True, check=True)
        scores = json.loads((folder / "evaluation.json").read_text())
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {
        **run,
        "negative_elbo": -scores["test_elbo"],
        "nll": scores["nll"],
        "nll_stderr": scores["log_likelihood_stderr"],
        "kl": scores["kl"],
        "baseline_nll": scores["baseline_nll"],
        "num_images": scores["num_images"],
        "num_particles": scores["num_particles"],
        "valid_elbo": [row["valid_elbo"] for row in history],
        "seconds": history[-1]["seconds"],
    }


def table(results: list[dict]) -> str:
    """The markdown table, Pyro's figures beside ours."""
    quadrants = [r for r in results if r["quadrants"]]
    head = "| nats per test image | " + " | ".join(
        f"{r['quadrants']} quadrant{'s' if r['quadrants'] > 1 else ''}" for r in quadrants
    )
    lines = [head + " |", "|" + "---|" * (len(quadrants) + 1)]
    rows = [
        ("baseline network (cross-entropy)", "baseline_nll", None),
        ("CVAE, negative ELBO (Pyro's figure)", "negative_elbo", None),
        ("CVAE, -log p(hidden \N{DIVIDES} visible), importance-sampled", "nll", None),
        ("Pyro: baseline network", None, "baseline"),
        ("Pyro: CVAE (negative ELBO)", None, "cvae"),
    ]
    for words, key, pyro in rows:
        if key:
            cells = [f"{r[key]:.1f}" for r in quadrants]
        else:
            cells = [f"{PYRO[pyro][r['quadrants'] - 1]:.1f}" for r in quadrants]
        lines.append(f"| {words} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("-K", "--particles", type=int, default=1000)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--from-json", type=Path, help="print the table from a report")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
    else:
        results = [_run_one(run, args, args.out) for run in runs()]
        report = {"results": results, "epochs": args.epochs, "quick": args.quick,
                  "machine": f"{platform.processor() or platform.machine()}, "
                             f"{os.cpu_count()} cores"}  # fmt: skip
        (args.out / "cvae_table.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(report["results"]))
    for r in report["results"]:
        print(f"  {r['name']}: {r['seconds']:.0f} s of training, KL {r['kl']:.2f} nats")
    return report


if __name__ == "__main__":
    main()
