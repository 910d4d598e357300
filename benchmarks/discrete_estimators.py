"""The estimator study for discrete latents: the encoder gradient's variance, signal-to-noise
ratio, bias and cost of every estimator, on one model and one minibatch, at initialization and
after training.

The model is the "nonlinear" one of the ARM and DisARM experiments on binarized MNIST: two
dense layers of 200 LeakyReLU(0.3) units either side of the latent code, the encoder's input
centred on the training mean, the decoder's output bias at the data's marginal. The latent is
200 Bernoulli units (``--latent bernoulli``) or 20 groups of 10 classes (``categorical``, Jang
et al.'s). For each estimator, ``--estimates`` independent estimates of the gradient of the
batch-mean ELBO (in nats per image) are drawn at fixed parameters on one batch of 50 images
(:func:`pyro_vae.gradients.gradient_samples`), and summarized by
:func:`pyro_vae.gradients.gradient_statistics`: the total variance (trace of the covariance),
the SNR of the mean gradient vector, the median SNR of the parameters, and the relative error
of the mean against a reference, the mean of ``--reference`` estimates of an unbiased estimator
(DisARM for Bernoulli, leave-one-out REINFORCE with ``K = 2`` for categorical). An unbiased
estimator's relative error is noise, and shrinks with more estimates; the relaxations' is
their bias, and does not: each row gives beside it the error that noise alone would give an
unbiased estimator, ``sqrt(tr S / N + tr S_ref / N_ref) / |reference|``. VIMCO estimates the
gradient of another objective (the ``K``-sample bound), so its error against the ELBO's
gradient is not a bias of the ELBO. The cost is the
time an estimate takes, against REINFORCE's, measured in the same run.

"After training" is the same model after ``--train-epochs`` epochs of ``pyro_vae.fit`` with the
latent's default estimator (DisARM, Gumbel-softmax), the same parameters for every estimator.

    python benchmarks/discrete_estimators.py --data-dir ../shared/data --out DIR
    python benchmarks/discrete_estimators.py --out DIR \
        --from-json benchmarks/results/discrete_estimators.json

writes ``DIR/discrete_estimators.json`` and ``DIR/discrete_estimators.png`` and prints the table
docs/discrete.md shows. ``--quick``: a small network on the bundled ``mnist-sample``, few
estimates (what the test suite runs).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from pyro_vae import TrainConfig, fit
from pyro_vae.build import build_vae
from pyro_vae.data import as_float, binarize_once, mean_image
from pyro_vae.gradients import gradient_samples, gradient_statistics
from pyro_vae.isolation import isolated
from pyro_vae.splits import run_images

ESTIMATORS = {
    "bernoulli": ["reinforce", "reinforce-baseline", "reinforce-nn-baseline", "reinforce-loo",
                  "vimco", "arm", "disarm", "gumbel", "straight-through"],
    "categorical": ["reinforce", "reinforce-baseline", "reinforce-nn-baseline", "reinforce-loo",
                    "vimco", "gumbel", "straight-through"],
}  # fmt: skip
REFERENCE = {"bernoulli": "disarm", "categorical": "reinforce-loo"}
DRAWS = {"reinforce-loo": 2, "vimco": 2}  # K: the leave-one-out estimators' fewest draws


def config_for(latent: str, quick: bool, data_dir: str | None, epochs: int) -> TrainConfig:
    shape = dict(latent_dim=200) if latent == "bernoulli" else dict(latent_dim=20, categories=10)
    if quick:
        shape = dict(latent_dim=8) if latent == "bernoulli" else dict(latent_dim=3, categories=4)
    return TrainConfig(
        dataset="mnist-sample" if quick else "binarized-mnist",
        data_dir=data_dir,
        latent=latent,
        hidden_sizes=(16,) if quick else (200, 200),
        activation="leaky-relu",
        center_input=True,
        batch_size=50,
        learning_rate=1e-4 if not quick else 1e-3,
        epochs=epochs,
        train_size=500 if quick else None,
        **shape,
    )


def study(latent: str, args) -> dict:
    config = config_for(latent, args.quick, args.data_dir, args.train_epochs)
    images = run_images(config)
    with isolated(config.seed):
        vae = build_vae(config, images.data.image_shape)
        vae.init_output_bias(mean_image(images.train))
        perm = torch.randperm(len(images.train), generator=torch.Generator().manual_seed(1))
        x = binarize_once(as_float(images.train[perm[:50]]), 0)  # as a training batch draws it
    started = time.perf_counter()
    trained = fit(config, data=images.data).vae
    train_seconds = time.perf_counter() - started
    stages = {}
    for stage, model in (("init", vae), ("trained", trained)):
        with isolated(args.seed):
            ref = gradient_samples(model, x, REFERENCE[latent], args.reference,
                                   num_particles=DRAWS.get(REFERENCE[latent], 1))  # fmt: skip
        reference = ref.encoder.double().mean(0)
        ref_variance = ref.encoder.double().var(0).sum().item()
        rows = {}
        for estimator in ESTIMATORS[latent]:
            with isolated(args.seed + 1):
                samples = gradient_samples(model, x, estimator, args.estimates, args.warmup,
                                           num_particles=DRAWS.get(estimator, 1))  # fmt: skip
            row = gradient_statistics(samples.encoder, reference)
            row["seconds_per_estimate"] = samples.seconds_per_estimate
            # what an unbiased estimator's relative error would be from noise alone: its mean's
            # and the reference's, sqrt(tr S / N + tr S_ref / N_ref) / |reference|
            noise = row["total_variance"] / args.estimates + ref_variance / args.reference
            row["noise_floor"] = math.sqrt(noise) / reference.norm().item()
            rows[estimator] = row
            note = f"variance {row['total_variance']:.4g}, rel. error {row['relative_error']:.3f}"
            print(f"{latent} {stage} {estimator}: {note}", file=sys.stderr, flush=True)
        base = rows["reinforce"]["seconds_per_estimate"]
        for row in rows.values():
            row["cost_vs_reinforce"] = row["seconds_per_estimate"] / base
        stages[stage] = {"reference_estimates": args.reference,
                         "reference_total_variance": ref_variance, "rows": rows}  # fmt: skip
    return {"config": config.resolved().to_dict(), "train_seconds": train_seconds, "stages": stages}


def table(results: dict) -> str:
    lines = []
    for latent, result in results["latents"].items():
        lines += [f"\n{latent} latent ({result['config']['latent_dim']}"
                  + (f" x {result['config']['categories']}" if result["config"]["categories"]
                     else "") + ")\n",  # fmt: skip
                  "| estimator | variance (init) | SNR (init) | rel. error (init) | variance "
                  "(trained) | SNR (trained) | rel. error (trained) | cost |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        # rel. error: the mean against the reference, and (in brackets) what noise alone
        # would give an unbiased estimator; a bias shows as an error well above it
        init, trained = (result["stages"][s]["rows"] for s in ("init", "trained"))
        for estimator in init:
            a, b = init[estimator], trained[estimator]
            lines.append(
                f"| `{estimator}` | {a['total_variance']:.3g} | {a['snr']:.3f} | "
                f"{a['relative_error']:.2f} ({a['noise_floor']:.2f}) | "
                f"{b['total_variance']:.3g} | {b['snr']:.3f} | "
                f"{b['relative_error']:.2f} ({b['noise_floor']:.2f}) | "
                f"{b['cost_vs_reinforce']:.2f} |"
            )
    return "\n".join(lines)


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    latents = list(results["latents"])
    fig = Figure(figsize=(6 * len(latents), 4.5))
    for i, latent in enumerate(latents):
        ax = fig.add_subplot(1, len(latents), i + 1)
        stages = results["latents"][latent]["stages"]
        names = list(stages["init"]["rows"])
        for j, stage in enumerate(("init", "trained")):
            values = [math.log10(stages[stage]["rows"][n]["total_variance"]) for n in names]
            ax.barh([k + 0.4 * j for k in range(len(names))], values, height=0.4,
                    label="at initialization" if stage == "init" else "after training")  # fmt: skip
        ax.set_yticks([k + 0.2 for k in range(len(names))], names)
        ax.invert_yaxis()
        ax.set_xlabel("log10 total variance of the encoder gradient")
        config = results["latents"][latent]["config"]
        size = f"{config['latent_dim']} x {config['categories']}" if config["categories"] else (
            f"{config['latent_dim']} units")  # fmt: skip
        ax.set_title(f"{latent} latent ({size})")
        ax.legend(loc="lower right", fontsize="small")
    fig.suptitle("variance of the encoder gradient per estimator, one batch of 50 images")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent", choices=["bernoulli", "categorical", "both"], default="both")
    p.add_argument("--estimates", type=int, default=200)
    p.add_argument("--reference", type=int, default=2000)
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--warmup", type=int, default=200, help="steps fitting a baseline first")
    p.add_argument("--seed", type=int, default=0)
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
            args.estimates, args.reference, args.train_epochs, args.warmup = 10, 20, 1, 5
        latents = ["bernoulli", "categorical"] if args.latent == "both" else [args.latent]
        results = {
            "command": " ".join(["python benchmarks/discrete_estimators.py", *sys.argv[1:]]),
            "machine": f"{platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}",  # fmt: skip
            "latents": {latent: study(latent, args) for latent in latents},
        }
        (out / "discrete_estimators.json").write_text(json.dumps(results, indent=1) + "\n")
    figure(results, out / "discrete_estimators.png")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
