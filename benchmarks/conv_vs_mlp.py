"""Conv VAE against the MLP VAE at an equal wall-clock training budget.

For each data set (MNIST and Fashion-MNIST, dynamically binarized, Bernoulli likelihood: the
library defaults) and each network, pyro_vae's default settings otherwise (20 latents,
analytic-KL ELBO, Adam 1e-3, batch 128, 10% of the training images held out for validation):

- ``mlp``: 784-400-20 encoder and 20-400-784 decoder, ReLU;
- ``conv``: two 4x4 stride-2 convolutions (32, 64 channels; 28x28 -> 14x14 -> 7x7), a dense
  layer of 400, the 20 latents, and the mirror image with transposed convolutions.

Each trains epoch by epoch in one run folder (``fit`` with ``epochs=1``, then ``resume=True``
with one epoch more, which continues the run exactly as one call would) until its training
time (the history's ``seconds``: training steps only, not the per-epoch validation score or
the checkpoints) reaches ``--budget`` seconds. The last epoch may overshoot, so the table
gives the seconds actually spent. Then all test images are scored with K importance samples
each: the test ELBO and log p(x), in nats per image with their standard errors over images,
and the active units (Burda et al. 2015: Cov_x E_q[z_u] > 0.01)::

    python benchmarks/conv_vs_mlp.py --data-dir ../shared/data --budget 600

That takes hours on two CPU cores, most of it the conv net's evaluation: measured on a shared
2-core machine, a conv epoch took 330 s (MLP 80 s) and 200 test images at K = 1000 took 108 s
(MLP 11 s), so about 45 min of training and 3.3 h of evaluation in all; ``--test-images`` and
``--num-particles`` cut the second. ``--quick`` runs both networks, made small, on the bundled
``mnist-sample`` for about a second each (what the test suite checks).

Published figures
-----------------
Test NLL = -log p(x) in nats per image, lower is better (this benchmark prints log p(x):
compare its negative). K: importance samples per image; "<=" is an ELBO bound, not an
importance-sampled estimate. Only figures read in the papers' tables are given:

| ref | model | data | NLL | K |
|---|---|---|---|---|
| [1] | VAE (k = 1), MLP 784-200-200-50, tanh | dyn. MNIST | 86.76 | 5000 |
| [2] | ResNet conv VAE, 32 latents, diagonal Gaussian q | dyn. MNIST | 81.08 ± 0.08 | 128 |
| [2] | the same with a deep IAF posterior (depth 8, width 1920) | dyn. MNIST | 79.10 ± 0.07 | 128 |
| [3] | conv VAE + Hamiltonian variational inference | dyn. MNIST | 81.94 | ? |
| [4] | "Convolutional VAE" | static MNIST | <= 87.41 | - |
| [4] | Gated PixelVAE without upsampling (PixelCNN decoder) | static MNIST | 79.02 | 1000 |

[1] Burda, Grosse & Salakhutdinov (2015), Importance weighted autoencoders, Table 1: 3280
    passes, batch 20 (``benchmarks/iwae_mnist.py`` runs this setting).
[2] Kingma et al. (2016), Improving variational inference with inverse autoregressive flow,
    Table 1 (ELBOs -84.08 and -80.80; ± is a standard deviation over 5 runs) and Appendix B:
    three stride-2 ResNet blocks (3x3, 16/32/32 maps), a dense layer of 450, ELU, weight
    normalization, mirrored with transposed convolutions. Training length not stated there.
[3] Salimans, Kingma & Welling (2015), Markov chain Monte Carlo and variational inference:
    bridging the gap. As quoted in [2] Table 1 (ELBO -83.49) and Chen et al. (2017), Variational
    lossy autoencoder, Table 2; Salimans et al.'s own table (its K, its training) was not read.
[4] Gulrajani et al. (2017), PixelVAE, Table 1 and Sec. 4.1: statically binarized MNIST
    (Salakhutdinov & Murray 2008), not dynamic; 79.02 is importance-sampled with K = 1000, its
    bound is <= 79.66. Architecture of the plain conv VAE and training length not stated there.

Not found: Tomczak & Welling (2018), VAE with a VampPrior, Table 2 (convHVAE with the standard
prior): its numbers could not be read in any source available here. Their code
(github.com/jmtomczak/vae_vampprior, ``experiment.py``) estimates log p(x) with K = 5000 and
trains up to 2000 epochs (early stopping after 50, 100 epochs of KL warm-up, Adam 5e-4, batch
100). No published importance-sampled NLL of a conv (or MLP) VAE on binarized Fashion-MNIST was
found either. None of these papers trains to a wall-clock budget: they train to convergence,
hundreds to thousands of epochs.
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pyro
import torch
from measure import machine

from pyro_vae import TrainConfig, TrainResult, evaluate, fit, load_dataset

ARCHS = ("mlp", "conv")
# Settings that --quick changes; a flag given on the command line wins over either.
FULL = {
    "datasets": ["mnist", "fashion-mnist"],
    "budget": 600.0,
    "num_particles": 1000,
    "test_images": None,  # all 10,000
    "train_size": None,  # all 54,000 left after the validation split
    "conv_channels": [32, 64],
    "hidden_sizes": [400],
}
QUICK = {
    "datasets": ["mnist-sample"],
    "budget": 1.0,
    "num_particles": 10,
    "test_images": 100,
    "train_size": 512,
    "conv_channels": [8, 16],
    "hidden_sizes": [32],
}


def train_for(config: TrainConfig, budget: float, run_dir: Path, data) -> TrainResult:
    """Train one epoch at a time, resuming ``run_dir``, until the run's training seconds reach
    ``budget``. Returns the last ``TrainResult`` (its history holds every epoch)."""
    result = fit(replace(config, epochs=1), run_dir, data=data)
    while result.history[-1]["seconds"] < budget:
        epochs = len(result.history) + 1
        result = fit(replace(config, epochs=epochs), run_dir, data=data, resume=True)
    return result


def run_one(config: TrainConfig, args, data) -> dict:
    """Train ``config`` for the budget, then score the test images; one row of the table."""
    with tempfile.TemporaryDirectory(prefix="conv_vs_mlp_") as tmp:
        result = train_for(config, args.budget, Path(tmp) / "run", data)
    last = result.history[-1]
    test = result.test_images[: args.test_images]  # (N, 784) or (N, 1, 28, 28), binarized once
    started = time.perf_counter()
    with pyro.validation_enabled(False):  # the test images were checked when they were made
        scores = evaluate(result.vae, test, num_particles=args.num_particles, seed=args.seed)
    return {
        "dataset": config.dataset,
        "arch": config.arch,
        "parameters": sum(p.numel() for p in result.vae.parameters()),
        "epochs": len(result.history),
        "train_seconds": last["seconds"],
        "seconds_per_epoch": last["seconds"] / len(result.history),
        "valid_elbo": last["valid_elbo"],
        "test_elbo": scores.test_elbo,
        "test_elbo_stderr": scores.test_elbo_stderr,
        "log_likelihood": scores.log_likelihood,
        "log_likelihood_stderr": scores.log_likelihood_stderr,
        "active_units": scores.active_units,
        "num_images": scores.num_images,
        "num_particles": scores.num_particles,
        "eval_seconds": time.perf_counter() - started,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--datasets", nargs="+", help="default mnist fashion-mnist")
    parser.add_argument("--budget", type=float, help="training seconds per network (600)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-particles", type=int, help="K for the test scores (1000)")
    parser.add_argument("--test-images", type=int, help="first N test images (default all)")
    parser.add_argument("--train-size", type=int, help="first N training images (quick runs)")
    parser.add_argument("--conv-channels", type=int, nargs="+", help="default 32 64")
    parser.add_argument("--hidden-sizes", type=int, nargs="+", help="default 400")
    parser.add_argument("--quick", action="store_true", help="seconds, on the bundled sample")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    print(machine(), flush=True)
    # The first Adam of a process imports torch._dynamo (2 s here): not on the first clock
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    rows = []
    for name in args.datasets:
        data = load_dataset(name, args.data_dir)
        for arch in ARCHS:
            config = TrainConfig(
                dataset=name,
                data_dir=args.data_dir,
                arch=arch,
                conv_channels=tuple(args.conv_channels),
                hidden_sizes=tuple(args.hidden_sizes),
                train_size=args.train_size,
                seed=args.seed,
                device=args.device,
            )
            rows.append(run_one(config, args, data))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine(), "args": vars(args), "rows": rows}, f, indent=2)
    print_table(rows, args)
    return rows


def _pm(value: float, stderr: float | None) -> str:
    return f"{value:.2f} ± {stderr:.2f}" if stderr is not None else f"{value:.2f}"


def print_table(rows: list[dict], args) -> None:
    images = sorted({row["num_images"] for row in rows})
    print(
        f"\nBudget {args.budget:g} s of training per network, seed {args.seed}; nats per image "
        f"over {'/'.join(map(str, images))} test images, K = {args.num_particles} (± standard "
        "error over images)\n"
    )
    print(
        "| data set | network | parameters | epochs | train s | s/epoch | valid ELBO "
        "| test ELBO | log p(x) | active units | eval s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['dataset']} | {row['arch']} | {row['parameters']:,} | {row['epochs']} | "
            f"{row['train_seconds']:.0f} | {row['seconds_per_epoch']:.1f} | "
            f"{row['valid_elbo']:.2f} | {_pm(row['test_elbo'], row['test_elbo_stderr'])} | "
            f"{_pm(row['log_likelihood'], row['log_likelihood_stderr'])} | "
            f"{row['active_units']} | {row['eval_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
