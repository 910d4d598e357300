"""The IWAE paper's MNIST setting (Burda, Grosse & Salakhutdinov 2015, Table 1), for pyro_vae and a
hand-written PyTorch reference trained identically.

Dynamically binarized MNIST; encoder 784-200-200-50 and decoder 50-200-200-784, tanh; Adam
(beta1 0.9, beta2 0.999, eps 1e-4), batch 20, learning rate 1e-3 * 10^(-i/7) for 3^i passes,
i = 0..7 (3280 passes in all; ``--passes`` runs the schedule's first passes); the VAE (k = 1,
analytic-KL ELBO) and IWAE (k = 5 and 50, the importance-weighted bound).

pyro_vae trains with ``fit`` (``SVI``, ``TraceMeanField_ELBO`` or ``RenyiELBO(alpha=0)``); the
reference starts from the same initial weights (the same networks, built the same seeded way),
sees the same batches (``BatchLoader``) and steps ``torch.optim.Adam`` on the bound written out
by hand. Both are scored by the same evaluator: NLL = -(test mean of the K = 5000
importance-sampled log-likelihood), the test ELBO from the same samples, and active units
(Cov_x E_q[z_u] > 0.01)::

    python benchmarks/iwae_mnist.py --data-dir ../shared/data --passes 13
"""

import argparse
import json
import math
import sys
import time

import pyro
import torch
import torch.nn.functional as F
from reference_vae import log_weights

from pyro_vae import TrainConfig, evaluate, fit
from pyro_vae.data import BatchLoader, load_dataset, mean_image, prepare_images
from pyro_vae.evaluate import kl_per_dimension
from pyro_vae.model import VAE
from pyro_vae.optim import lr_factor
from pyro_vae.train import build_vae

# Burda et al. (2015), Table 1, MNIST, one stochastic layer: test NLL and active units.
PAPER = {1: (86.76, 19), 5: (85.54, 22), 50: (84.78, 25)}
FULL_SCHEDULE = sum(3**i for i in range(8))  # 3280 passes


def paper_config(k: int, passes: int, seed: int, device: str, train_size=None) -> TrainConfig:
    return TrainConfig(
        dataset="mnist",
        binarize="dynamic",
        valid_fraction=0.0,  # Burda et al. train on all 60,000 images
        train_size=train_size,
        latent_dim=50,
        hidden_sizes=(200, 200),
        activation="tanh",
        objective="elbo-analytic-kl" if k == 1 else "iwae",
        num_particles=k,
        learning_rate=1e-3,
        lr_schedule="iwae",
        adam_eps=1e-4,
        batch_size=20,
        epochs=passes,
        seed=seed,
        device=device,
    )


def initial_vae(config: TrainConfig, train: torch.Tensor) -> VAE:
    """The VAE as ``fit`` starts it: seeded, built, output bias at the data's marginal."""
    pyro.set_rng_seed(config.seed)
    vae = build_vae(config, train.shape[1]).to(config.device)
    vae.init_output_bias(mean_image(train))
    return vae


def hand_written_bound(vae: VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """Per image, ``(B,)``: the analytic-KL ELBO for ``k = 1``, else the IWAE bound."""
    if k == 1:
        loc, scale = vae.encoder(x)  # (B, Z) each
        z = loc + scale * torch.randn_like(loc)
        logits = vae.decoder(z)[0]  # (B, D)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        return log_px_z - kl_per_dimension(loc, scale).sum(-1)
    loc, scale = vae.encoder(x)
    eps = torch.randn(k, *loc.shape, device=x.device, dtype=loc.dtype)
    return torch.logsumexp(log_weights(vae, x, (loc, scale), eps), dim=0) - math.log(k)


def train_reference(config: TrainConfig, train: torch.Tensor) -> tuple[VAE, float]:
    """The hand-written loop: same start, same batches, same Adam and schedule."""
    vae = initial_vae(config, train)
    optim = torch.optim.Adam(vae.parameters(), lr=config.learning_rate, eps=config.adam_eps)
    loader = BatchLoader(train, config.batch_size, config.binarize, config.seed)
    started = time.perf_counter()
    for epoch in range(config.epochs):
        for group in optim.param_groups:
            group["lr"] = config.learning_rate * lr_factor(config.lr_schedule, epoch)
        for x in loader.epoch(epoch):
            loss = -hand_written_bound(vae, x, config.num_particles).sum()
            optim.zero_grad()
            loss.backward()
            optim.step()
    return vae.eval(), time.perf_counter() - started


def score(vae: VAE, test: torch.Tensor, num_particles: int) -> dict:
    started = time.perf_counter()
    with pyro.validation_enabled(False):  # the test images were checked when they were made
        scores = evaluate(vae, test, num_particles=num_particles)
    return {
        "nll": scores.nll,
        "nll_stderr": scores.log_likelihood_stderr,
        "test_elbo": scores.test_elbo,
        "active_units": scores.active_units,
        "eval_seconds": time.perf_counter() - started,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--passes", type=int, default=13, help=f"of {FULL_SCHEDULE}")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 50])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-particles", type=int, default=5000)
    parser.add_argument("--eval-images", type=int, default=10_000)
    parser.add_argument("--train-size", type=int, help="first N training images (quick runs)")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)

    data = load_dataset("mnist", args.data_dir)
    train, test = prepare_images(data, "dynamic", "bernoulli", seed=args.seed)
    train = train[: args.train_size].to(args.device)
    test = test[: args.eval_images].to(args.device)
    rows = []
    for k in args.ks:
        config = paper_config(k, args.passes, args.seed, args.device, args.train_size)
        sides = ["pyro_vae"] + ([] if args.no_reference else ["hand-written PyTorch"])
        for side in sides:
            if side == "pyro_vae":
                result = fit(config, data=data)
                vae, seconds = result.vae, result.history[-1]["seconds"]
            else:
                vae, seconds = train_reference(config, train)
            torch.manual_seed(args.seed + 1)  # the same evaluation draws for both
            row = {"k": k, "model": side, "passes": args.passes, "train_seconds": seconds}
            rows.append({**row, **score(vae, test, args.eval_particles)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    print_table(rows, args)
    return rows


def print_table(rows: list[dict], args) -> None:
    print(
        f"\n{args.passes} of {FULL_SCHEDULE} passes, seed {args.seed}; NLL and test ELBO in nats "
        f"over {args.eval_images} test images, K = {args.eval_particles}\n"
    )
    print("| model | k | trained by | NLL | test ELBO | active units | train s | eval s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        name = "VAE" if row["k"] == 1 else "IWAE"
        print(
            f"| {name} | {row['k']} | {row['model']} | {row['nll']:.2f} ± {row['nll_stderr']:.2f} "
            f"| {row['test_elbo']:.2f} | {row['active_units']} | {row['train_seconds']:.0f} | "
            f"{row['eval_seconds']:.0f} |"
        )
    for k in args.ks:
        nll, units = PAPER[k] if k in PAPER else (float("nan"), "")
        name = "VAE" if k == 1 else "IWAE"
        print(f"| {name} | {k} | Burda et al., 3280 passes | {nll:.2f} | | {units} | | |")


if __name__ == "__main__":
    main()
