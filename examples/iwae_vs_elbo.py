"""Example: the ELBO against the importance-weighted bound (Burda et al. 2015).

Trains the same VAE with the ELBO (K = 1) and with the IWAE bound (K = 5), same seed and
budget, and compares what matters: the importance-sampled log-likelihood and active units::

    python examples/iwae_vs_elbo.py --data-dir ../shared/data    # a few minutes on 2 cores
    python examples/iwae_vs_elbo.py --quick
"""

import argparse
import sys
from pathlib import Path

from pyro_vae import TrainConfig, evaluate, fit, load_dataset
from pyro_vae.errors import PyroVAEError


def main(args: argparse.Namespace) -> None:
    data = load_dataset(args.dataset, args.data_dir, fallback=True)  # MNIST, else the sample
    for objective, k in (("elbo", 1), ("iwae", args.k)):
        config = TrainConfig(
            dataset=data.name,
            objective=objective,
            num_particles=k,
            latent_dim=50,
            hidden_sizes=(200, 200),
            activation="tanh",
            epochs=args.epochs,
            train_size=args.train_size,
        )
        result = fit(config, data=data)
        scores = evaluate(result.vae, result.test_images[: args.test_size], args.num_particles)
        print(
            f"{objective} (K = {k}): test ELBO {scores.test_elbo:.2f}, log p(x) "
            f"{scores.log_likelihood:.2f} nats/image, {scores.active_units} active units"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="default mnist; mnist-sample with --quick")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--num-particles", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="seconds, on the bundled sample")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.train_size = 1, 1024
        args.test_size, args.num_particles = 100, 20
    args.dataset = args.dataset or ("mnist-sample" if args.quick else "mnist")
    try:
        main(args)
    except PyroVAEError as e:
        sys.exit(f"{Path(__file__).name}: error: {e}")
