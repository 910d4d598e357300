"""Example: train a VAE on MNIST with Pyro's SVI and evaluate it, from Python.

Two ways in: :func:`pyro_vae.fit` (the loop behind ``pyro-vae train``), and the VAE's Pyro
``model`` and ``guide`` in a hand-written ``SVI`` loop, as in Pyro's own tutorials::

    python examples/quickstart.py               # MNIST (falls back to the bundled sample)
    python examples/quickstart.py --quick       # a few seconds on the bundled sample
"""

import argparse
import sys
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO

from pyro_vae import VAE, TrainConfig, evaluate, fit, load_dataset
from pyro_vae.data import BatchLoader, mean_image, prepare_images
from pyro_vae.errors import PyroVAEError


def main(args: argparse.Namespace) -> None:
    data = load_dataset(args.dataset, args.data_dir, fallback=True)  # MNIST, else the sample

    # 1. The library's training loop: run folders, checkpoints and metrics come with it.
    config = TrainConfig(dataset=data.name, epochs=args.epochs, train_size=args.train_size)
    result = fit(config, data=data, progress=True)  # a line an epoch on stderr
    scores = evaluate(result.vae, result.test_images[: args.test_size], args.num_particles)
    print(
        f"fit(): test ELBO {scores.test_elbo:.2f}, importance-sampled log p(x) "
        f"{scores.log_likelihood:.2f} nats/image (K = {args.num_particles}), "
        f"{scores.active_units} active units"
    )

    # 2. The same model and guide in a plain Pyro SVI loop.
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    train, test = prepare_images(data, "dynamic", "bernoulli", seed=0)
    train = train[: args.train_size]
    vae = VAE(data.data_dim, latent_dim=20)
    vae.init_output_bias(mean_image(train))  # start p(x|z) at the data marginal, as fit() does
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
    loader = BatchLoader(train, batch_size=128, binarize="dynamic", seed=0)
    for epoch in range(args.epochs):
        total = sum(svi.step(x) for x in loader.epoch(epoch))
        print(f"SVI loop: epoch {epoch + 1}, train ELBO {-total / len(train):.2f} nats/image")
    with torch.no_grad():
        scores = evaluate(vae, test[: args.test_size], args.num_particles)
    print(f"SVI loop: test ELBO {scores.test_elbo:.2f} nats/image")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="default mnist; mnist-sample with --quick")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--num-particles", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="a few seconds on the bundled sample")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.train_size = 5, None  # the whole sample: enough to draw digits
        args.test_size, args.num_particles = 100, 20
    args.dataset = args.dataset or ("mnist-sample" if args.quick else "mnist")
    try:
        main(args)
    except PyroVAEError as e:
        sys.exit(f"{Path(__file__).name}: error: {e}")
