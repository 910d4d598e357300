"""pyro_vae's default MNIST VAE against a hand-written PyTorch VAE of the same shape.

Both: dynamically binarized MNIST, 784-400-20 ReLU MLPs, Adam 1e-3, batch 128, the same batch
stream (pyro_vae's BatchLoader), analytic KL, 10 epochs. Both are scored on the same binarized
test set: test ELBO (K = 10 samples an image, all 10,000 images) and the importance-sampled
log-likelihood (K = 1000, first 1000 test images). Seeds are run alternately::

    python benchmarks/quality_vs_reference.py --data-dir ../shared/data --seeds 0 1 2
"""

import argparse
import json
import statistics
import time

import torch
from reference_vae import ReferenceVAE

from pyro_vae import TrainConfig, evaluate, fit, load_dataset
from pyro_vae.data import BatchLoader, prepare_images


def train_reference(train, test, seed, epochs):
    torch.manual_seed(seed)
    model = ReferenceVAE()
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = BatchLoader(train, 128, "dynamic", seed)
    started = time.perf_counter()
    for epoch in range(epochs):
        for x in loader.epoch(epoch):
            loss = -model.elbo(x).sum()
            optim.zero_grad()
            loss.backward()
            optim.step()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        elbo = torch.stack([model.elbo(test) for _ in range(10)]).mean().item()
    ll, _ = model.log_likelihood(test[:1000], 1000)
    return {"test_elbo": elbo, "log_likelihood_1000": ll.mean().item(), "train_seconds": seconds}


def train_pyro_vae(data, test, seed, epochs):
    # all 60,000 training images, as the hand-written reference trains on
    config = TrainConfig(dataset="mnist", epochs=epochs, seed=seed, valid_fraction=0.0)
    started = time.perf_counter()
    result = fit(config, data=data)
    seconds = time.perf_counter() - started
    full = evaluate(result.vae, test, num_particles=10)
    first = evaluate(result.vae, test[:1000], num_particles=1000)
    return {
        "test_elbo": full.test_elbo,
        "log_likelihood_1000": first.log_likelihood,
        "train_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    data = load_dataset("mnist", args.data_dir)
    train, test = prepare_images(data, "dynamic", "bernoulli", seed=0)
    rows = []
    for seed in args.seeds:
        for name in ("pyro_vae", "reference"):
            if name == "pyro_vae":
                row = train_pyro_vae(data, test, seed, args.epochs)
            else:
                row = train_reference(train, test, seed, args.epochs)
            rows.append({"model": name, "seed": seed, **row})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| model | test ELBO (10k images) | log p(x), K=1000 (first 1000) | train s |")
    print("|---|---|---|---|")
    for name in ("pyro_vae", "reference"):
        mine = [r for r in rows if r["model"] == name]
        cells = []
        for key in ("test_elbo", "log_likelihood_1000", "train_seconds"):
            values = [r[key] for r in mine]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} ± {spread:.2f}")
        print(f"| {name} (seeds {args.seeds}) | " + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
