"""The importance-sampled log-likelihood at K = 5000 on the MNIST test set: pyro_vae's estimator
(Pyro traces of the model and guide) against a plain batched PyTorch loop.

Both score the same trained VAE (a run folder, or the default 784-400-20 VAE trained for
``--epochs`` here) on the same binarized test images, 100 images at a time with the particles
in vectorized chunks; they are run alternately, batch by batch, and their per-image estimates
are compared (different random draws: they agree to Monte Carlo error). The plain loop writes
``log p(x|z) + log p(z) - log q(z|x)`` out with ``binary_cross_entropy_with_logits``; a second
plain loop uses pyro_vae's Bernoulli density (``bernoulli_log_density``) instead, the same
arithmetic as pyro_vae's, so the ratio against it is what Pyro's traces cost. Also timed
on the first ``--old-images`` images: pyro_vae's estimator with its previous chunking (65,536
rows a chunk). Peak memory is measured per implementation in a fresh process, on 200 images
with the same network shapes::

    python benchmarks/log_likelihood.py --data-dir ../shared/data --run runs/mnist

Pyro's validation is off for the timing (the images were checked when they were made);
``--validation`` leaves it on, as ``pyro-vae evaluate`` and ``evaluate()`` run.
"""

import argparse
import json
import math
import sys
import time

import pyro
import torch
from measure import machine, peak_memory, peak_mib_in_fresh_process, synchronize
from reference_vae import log_weights

from pyro_vae import TrainConfig, fit, load_run
from pyro_vae.data import load_dataset, prepare_images
from pyro_vae.evaluate import GUIDE_CHUNKS, MAX_ROWS, importance_sampled_log_likelihood
from pyro_vae.model import VAE, bernoulli_log_density

OLD_MAX_ROWS = 2**16


def same_density(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """pyro_vae's Bernoulli log density, summed over the pixels."""
    return bernoulli_log_density(logits, x, 1)


IMPLEMENTATIONS = (
    "pyro_vae",
    "plain PyTorch",
    "plain PyTorch, same arithmetic",
    "pyro_vae, 65,536-row chunks",
)
OLD = IMPLEMENTATIONS[3]


@torch.no_grad()
def plain_log_likelihood(
    vae: VAE, x: torch.Tensor, num_particles: int, max_rows: int, density=None
):
    """``log 1/K sum_k p(x, z_k) / q(z_k|x)`` for a batch ``x`` (B, D), Bernoulli likelihood.
    As pyro_vae's: the encoder once per batch, the noise drawn for ``GUIDE_CHUNKS`` chunks at a
    time, the particles decoded in chunks of at most ``max_rows`` particle-image rows.
    ``density``: see :func:`reference_vae.log_weights`."""
    chunk = max(1, min(num_particles, max_rows // len(x)))
    drawn_at_once = min(num_particles, chunk * GUIDE_CHUNKS)
    loc, scale = vae.encoder(x)  # (B, Z) each
    parts = []
    for first in range(0, num_particles, drawn_at_once):
        drawn = min(drawn_at_once, num_particles - first)
        eps = torch.randn(drawn, *loc.shape, device=x.device, dtype=loc.dtype)
        for e in eps.split(chunk):
            parts.append(torch.logsumexp(log_weights(vae, x, (loc, scale), e, density).double(), 0))
    return torch.logsumexp(torch.stack(parts), dim=0) - math.log(num_particles)  # (B,)


def estimator(name: str, vae: VAE, num_particles: int, device: str):
    rows = MAX_ROWS["cuda" if device.startswith("cuda") else "cpu"]
    if name == "plain PyTorch":
        return lambda x: plain_log_likelihood(vae, x, num_particles, rows)
    if name == "plain PyTorch, same arithmetic":
        return lambda x: plain_log_likelihood(vae, x, num_particles, rows, same_density)
    if name == OLD:
        rows = OLD_MAX_ROWS
    return lambda x: importance_sampled_log_likelihood(
        vae.model, vae.guide, x, num_particles, batch_size=len(x), max_rows=rows
    )[0]


def load_vae(args, train: bool = True) -> tuple[VAE, torch.Tensor]:
    """The run's VAE, else the default one trained here (untrained if not ``train``)."""
    data = load_dataset("mnist", args.data_dir)
    _, test = prepare_images(data, "dynamic", "bernoulli", seed=0)
    pyro.set_rng_seed(args.seed)
    if args.run:
        vae = load_run(args.run).vae
    elif train:
        vae = fit(TrainConfig(epochs=args.epochs), data=data).vae
    else:
        vae = VAE(data.data_dim)
    return vae.to(args.device).eval(), test[: args.num_images].to(args.device)


def memory_in_fresh_process(args, name: str) -> float:
    command = [__file__, "--memory", name, "-K", str(args.num_particles), "--device", args.device]
    command += ["--data-dir", args.data_dir] if args.data_dir else []
    command += ["--run", args.run] if args.run else []
    return peak_mib_in_fresh_process(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--run", help="a pyro-vae run folder; else train the default VAE here")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs without --run")
    parser.add_argument("-K", "--num-particles", type=int, default=5000)
    parser.add_argument("--num-images", type=int, default=10_000)
    parser.add_argument("--old-images", type=int, default=500, help="images for the old chunks")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--validation",
        action="store_true",
        help="leave Pyro's validation on, as pyro-vae evaluate and evaluate() run",
    )
    parser.add_argument("--memory", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args()

    vae, test = load_vae(args, train=not args.memory)
    if args.memory:  # a child process: 200 images, one JSON line (memory needs no training)
        run = estimator(args.memory, vae, args.num_particles, args.device)
        with peak_memory(args.device) as peak, pyro.validation_enabled(False):
            for x in test[:200].split(args.batch_size):
                run(x)
            synchronize(args.device)
        print(json.dumps(peak))
        return

    print(machine())
    torch.manual_seed(args.seed)
    runs = {name: estimator(name, vae, args.num_particles, args.device) for name in IMPLEMENTATIONS}
    seconds = dict.fromkeys(IMPLEMENTATIONS, 0.0)
    estimates = {name: [] for name in IMPLEMENTATIONS}
    # the test images were checked when they were made; --validation: as users run it
    with pyro.validation_enabled(args.validation):
        for i, x in enumerate(test.split(args.batch_size)):
            for name, run in runs.items():
                if name == OLD and i * args.batch_size >= args.old_images:
                    continue
                started = time.perf_counter()
                estimates[name].append(run(x).cpu())
                synchronize(args.device)
                seconds[name] += time.perf_counter() - started
            if i % 10 == 9:
                done = (i + 1) * args.batch_size
                print(f"  {done} images, {seconds[IMPLEMENTATIONS[0]]:.0f} s", file=sys.stderr)

    print(f"\nK = {args.num_particles}, {len(test)} test images, {args.batch_size} at a time\n")
    print("| implementation | images | seconds | s per 1000 images | mean log p(x) | peak MiB |")
    print("|---|---|---|---|---|---|")
    for name in IMPLEMENTATIONS:
        ll = torch.cat(estimates[name])
        se = ll.std().item() / math.sqrt(len(ll))
        peak = memory_in_fresh_process(args, name)
        print(
            f"| {name} | {len(ll)} | {seconds[name]:.1f} | {1000 * seconds[name] / len(ll):.1f} | "
            f"{ll.mean().item():.3f} ± {se:.3f} | {peak:.0f} |"
        )
    mine, plain = (torch.cat(estimates[name]) for name in IMPLEMENTATIONS[:2])
    difference = mine - plain
    print(
        f"\npyro_vae - plain, per image: mean {difference.mean().item():+.4f} nats, "
        f"sd {difference.std().item():.4f}, largest {difference.abs().max().item():.4f}"
    )
    for plain in IMPLEMENTATIONS[1:3]:
        ratio = seconds[IMPLEMENTATIONS[0]] / seconds[plain]
        print(f"time ratio pyro_vae / {plain}: {ratio:.3f}")


if __name__ == "__main__":
    main()
