"""Kingma & Welling (2013), Figures 2 and 3: AEVB against wake-sleep and Monte Carlo EM.

``--figure 2``
    The ELBO per datapoint, on training and test images, against the number of training
    images seen (log scale), AEVB (``elbo-analytic-kl``, the paper's estimator with the KL in
    closed form) against wake-sleep, one panel per latent size: MNIST with latent sizes
    {3, 5, 10, 20, 200} and one hidden layer of 500 tanh units; Frey Face with {2, 5, 10, 20}
    and 200 units (Gaussian likelihood). Minibatches of 100, one sample.
``--figure 3``
    The marginal likelihood, ``log p(x)`` estimated by importance sampling with ``-K``
    samples from the encoder, against the number of training images seen, for a latent size of
    3 and 100 hidden units, training sets of 1,000 and 50,000 MNIST images: AEVB against
    wake-sleep against Monte Carlo EM (``mcem``, on the small set only, as in the paper). MCEM's
    estimate uses the encoder fitted alongside it.

As in the paper: Adagrad (``--optimizer adagrad``) with its step size chosen from
{0.01, 0.02, 0.1} by the training bound of a short run (``--select-images`` images, one pass),
for each method and latent size; weight decay ``M / N`` (``--weight-decay``: minibatch ``M``
of ``N`` training images), the gradient of a ``N(0, I)`` prior on the parameters. What differs,
by budget (docs/aevb.md says where the curves stand): ``--epochs`` passes rather than the
paper's 10^8 training images; the bounds are measured on the first ``--eval-images`` training
and test images (test images binarized once, training images binarized once with a fixed
seed), not on all of them. Every curve is measured at log-spaced numbers of epochs by resuming
one run folder, so a run's curve is the run itself.

Writes ``DIR/aevb_fig{2,3}.json`` and ``DIR/aevb_fig{2,3}.png``::

    python benchmarks/aevb_wake_sleep.py --figure 2 --data-dir ../shared/data --out DIR
    python benchmarks/aevb_wake_sleep.py --figure 3 --data-dir ../shared/data --out DIR

``--quick`` runs tiny networks for a few epochs on the bundled ``mnist-sample`` (what the test
suite checks); ``--from-json DIR/aevb_fig2.json --figure 2`` redraws a figure from a run's JSON
(``benchmarks/results/`` holds the ones in the docs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from matplotlib.figure import Figure
from measure import machine

from pyro_vae import PyroVAEError, TrainConfig, evaluate, fit
from pyro_vae.data import ImageData, as_float, binarize_once, load_dataset
from pyro_vae.train import run_images

LATENTS = {"mnist": (3, 5, 10, 20, 200), "frey-faces": (2, 5, 10, 20)}
HIDDEN = {"mnist": 500, "frey-faces": 200}
METHODS = {"AEVB": "elbo-analytic-kl", "wake-sleep": "wake-sleep", "MCEM": "mcem"}
TRAIN_BINARIZATION_SEED = 4321
STEP_SIZES = (0.01, 0.02, 0.1)  # Adagrad's, as in the paper


def checkpoints(epochs: int) -> list[int]:
    """Log-spaced epoch counts up to ``epochs``: 1, 2, 3, 5, 8, 13, ..., ``epochs``."""
    points, e = [], 1.0
    while round(e) < epochs:
        if round(e) not in points:
            points.append(round(e))
        e *= 1.6
    return [*points, epochs]


def _data(config: TrainConfig, test_images: int) -> ImageData:
    """The data set, loaded once for a whole curve, with its first ``test_images`` test images:
    each epoch's held-out score and the test bound are measured on those."""
    data = load_dataset(config.dataset, config.data_dir)
    labels = data.test_labels[:test_images] if data.test_labels is not None else None
    return dataclasses.replace(data, test_images=data.test_images[:test_images],
                               test_labels=labels)  # fmt: skip


def _train_images(config: TrainConfig, data: ImageData, count: int) -> torch.Tensor:
    """The first ``count`` training images, binarized once (fixed seed) where training
    binarizes them afresh: the images the training bound is measured on."""
    train = as_float(run_images(config, data).train[:count])
    return binarize_once(train, TRAIN_BINARIZATION_SEED) if config.binarize == "dynamic" else train


def select_step_size(config: TrainConfig, images: int, data: ImageData) -> tuple[float, dict]:
    """The step size of :data:`STEP_SIZES` whose one pass over the first ``images`` training
    images ends with the highest training bound (the paper's choice "on a short run")."""
    scores = {}
    for lr in STEP_SIZES:
        size = min(images, config.train_size or images)
        short = replace(config, learning_rate=lr, epochs=1, train_size=size)
        scores[lr] = fit(short, data=data).history[-1]["train_elbo"]
    finite = {lr: v for lr, v in scores.items() if math.isfinite(v)}
    return max(finite, key=finite.get), scores


def curve(config: TrainConfig, data: ImageData, run_dir: Path, args, figure: int) -> list[dict]:
    """Train ``config`` to each of :func:`checkpoints`, measuring the bounds at each."""
    train_images = _train_images(config, data, args.eval_images)
    points, started = [], time.perf_counter()
    for epochs in checkpoints(config.epochs):
        result = fit(replace(config, epochs=epochs), run_dir, data, resume=run_dir.exists())
        images_seen = result.history[-1]["step"] * config.batch_size
        test_images = result.test_images[: args.eval_images]
        K = args.num_particles if figure == 3 else 1
        train = evaluate(result.vae, train_images, K, seed=args.seed)
        test = evaluate(result.vae, test_images, K, seed=args.seed)
        point = {"epochs": epochs, "images_seen": images_seen,
                 "train_elbo": train.test_elbo, "test_elbo": test.test_elbo,
                 "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
        if figure == 3:
            point |= {"train_log_px": train.log_likelihood, "test_log_px": test.log_likelihood}
        points.append(point)
    return points


def _runs(args) -> list[dict]:
    base = dict(data_dir=args.data_dir, batch_size=100, activation="tanh", epochs=args.epochs,
                optimizer="adagrad", seed=args.seed, valid_fraction=0.0)  # fmt: skip
    runs = []
    if args.figure == 2:
        for dataset in args.datasets:
            likelihood = "gaussian" if dataset == "frey-faces" else "bernoulli"
            for d in args.latents or LATENTS[dataset]:
                for method in ("AEVB", "wake-sleep"):
                    config = TrainConfig(dataset=dataset, latent_dim=d, likelihood=likelihood,
                                         hidden_sizes=(args.hidden or HIDDEN[dataset],),
                                         objective=METHODS[method], **base)  # fmt: skip
                    runs.append({"dataset": dataset, "latent_dim": d, "method": method,
                                 "config": config})  # fmt: skip
        return runs
    for train_size in args.train_sizes:
        methods = ("AEVB", "wake-sleep", "MCEM") if train_size <= 1000 else ("AEVB", "wake-sleep")
        for method in methods:
            epochs = max(1, round(args.epochs * args.train_sizes[-1] / train_size))
            config = TrainConfig(dataset=args.datasets[0], latent_dim=3, train_size=train_size,
                                 hidden_sizes=(args.hidden or 100,), objective=METHODS[method],
                                 **{**base, "epochs": epochs})  # fmt: skip
            runs.append({"dataset": config.dataset, "train_size": train_size, "method": method,
                         "config": config})  # fmt: skip
    return runs


COLOURS = {"AEVB": "tab:red", "wake-sleep": "tab:blue", "MCEM": "tab:green"}


def _panels(count: int) -> tuple[Figure, list, int]:
    """A figure of ``count`` panels in rows of at most three (readable on a page)."""
    columns = min(3, count)
    lines = math.ceil(count / columns)
    fig = Figure(figsize=(4.2 * columns, 3.4 * lines), layout="constrained")
    grid = fig.subplots(lines, columns, squeeze=False).ravel()
    for ax in grid[count:]:
        ax.set_visible(False)
    return fig, list(grid), columns


def _curves(ax, rows: list[dict], train_key: str, test_key: str, title: str) -> None:
    """Each row's training (solid) and test (dashed) curve against the images seen."""
    for row in rows:
        x = [p["images_seen"] for p in row["points"]]
        colour = COLOURS[row["method"]]
        for key, style, which in ((train_key, "-", "train"), (test_key, "--", "test")):
            ax.plot(x, [p[key] for p in row["points"]], style, color=colour,
                    label=f"{row['method']} ({which})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel("training images seen")
    ax.grid(alpha=0.3)


def _figure2(rows: list[dict]) -> Figure:
    panels = [(r["dataset"], r["latent_dim"]) for r in rows if r["method"] == "AEVB"]
    fig, grid, columns = _panels(len(panels))
    for ax, (dataset, d) in zip(grid, panels, strict=False):
        mine = [r for r in rows if (r["dataset"], r["latent_dim"]) == (dataset, d)]
        name = "Frey Face" if dataset == "frey-faces" else "MNIST"
        _curves(ax, mine, "train_elbo", "test_elbo", f"{name}, $N_z$ = {d}")
    for ax in grid[::columns]:
        ax.set_ylabel("ELBO (nats per image)")
    grid[0].legend(fontsize="small")
    return fig


def _figure3(rows: list[dict]) -> Figure:
    sizes = sorted({r["train_size"] for r in rows})
    fig, grid, _ = _panels(len(sizes))
    for ax, size in zip(grid, sizes, strict=False):
        mine = [r for r in rows if r["train_size"] == size]
        _curves(ax, mine, "train_log_px", "test_log_px", f"$N_{{train}}$ = {size:,}")
    grid[0].set_ylabel("marginal log-likelihood (nats per image)")
    grid[0].legend(fontsize="small")
    return fig


def _redraw(path: Path, figure: int, out: Path) -> int:
    try:
        rows = json.loads(path.read_text())["rows"]
        out.mkdir(parents=True, exist_ok=True)
        drawn = _figure2(rows) if figure == 2 else _figure3(rows)
        drawn.savefig(out / f"aevb_fig{figure}.png", dpi=110)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"aevb_wake_sleep: cannot redraw {path}: {e}", file=sys.stderr)
        return 1
    print(f"written to {out / f'aevb_fig{figure}.png'}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--figure", type=int, choices=(2, 3), default=2)
    p.add_argument("--data-dir", help="the folder holding MNIST/ and FreyFace/")
    p.add_argument("--out", type=Path, help="where the JSON and PNG go (default: a temp folder)")
    p.add_argument("--datasets", nargs="+", choices=tuple(LATENTS), help="figure 2: both")
    p.add_argument("--latents", nargs="+", type=int, help="figure 2: the paper's sizes")
    p.add_argument("--train-sizes", nargs="+", type=int, default=[1000, 50000])
    p.add_argument("--hidden", type=int, help="hidden units (the paper's by default)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the largest set (3)")
    p.add_argument("--select-images", type=int, default=10000,
                   help="images of the short run that picks the step size (10000)")  # fmt: skip
    p.add_argument("-K", "--num-particles", type=int, default=500, help="figure 3's K (500)")
    p.add_argument("--eval-images", type=int, default=1000, help="images per bound (1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="seconds, on the bundled sample")
    p.add_argument("--from-json", type=Path, metavar="JSON",
                   help="redraw an earlier run's figure into --out; train nothing")  # fmt: skip
    args = p.parse_args(argv)
    if args.from_json is not None:
        return _redraw(args.from_json, args.figure, args.out or args.from_json.parent)
    if args.quick:
        args.datasets, args.latents, args.hidden, args.epochs = ["mnist-sample"], [2], 16, 3
        args.train_sizes, args.num_particles, args.eval_images = [100, 400], 10, 50
        args.select_images = 200
    args.datasets = args.datasets or (["mnist", "frey-faces"] if args.figure == 2 else ["mnist"])
    out = args.out or Path(tempfile.mkdtemp(prefix="aevb-"))
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="aevb-runs-") as scratch:
            for i, run in enumerate(_runs(args)):
                config = run.pop("config")
                data = _data(config, args.eval_images)
                train_images = run_images(config, data).train.shape[0]
                config = replace(config, weight_decay=config.batch_size / train_images)
                lr, scores = select_step_size(config, args.select_images, data)
                config = replace(config, learning_rate=lr)
                run["points"] = curve(config, data, Path(scratch) / str(i), args, args.figure)
                run |= {"epochs": config.epochs, "hidden": config.hidden_sizes[0],
                        "step_size": lr, "step_size_scores": scores,
                        "weight_decay": config.weight_decay}  # fmt: skip
                rows.append(run)
                last = run["points"][-1]
                what = "log p(x)" if args.figure == 3 else "ELBO"
                key = "test_log_px" if args.figure == 3 else "test_elbo"
                label = {
                    k: v
                    for k, v in run.items()
                    if k in ("dataset", "latent_dim", "train_size", "method")
                }
                print(f"{label}: test {what} {last[key]:.2f} after {last['images_seen']:,} "
                      f"images ({last['seconds']:.0f} s)", flush=True)  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        name = f"aevb_fig{args.figure}"
        (out / f"{name}.json").write_text(json.dumps({"machine": machine(), "rows": rows},
                                                     indent=1))  # fmt: skip
        figure = _figure2(rows) if args.figure == 2 else _figure3(rows)
        figure.savefig(out / f"{name}.png", dpi=110)
    except (PyroVAEError, OSError) as e:
        print(f"aevb_wake_sleep: {e}", file=sys.stderr)
        return 1
    print(f"written to {out / name}.json and .png")
    return 0 if all(math.isfinite(p["test_elbo"]) for r in rows for p in r["points"]) else 1


if __name__ == "__main__":
    sys.exit(main())
