"""Example: Kingma & Welling's MNIST experiment with a 2-D latent space.

Trains the 784-400-2 VAE for 20 epochs, evaluates it (test ELBO and importance-sampled
log-likelihood), and draws the learned manifold and the test digits' latent means by class::

    python examples/train_mnist.py --data-dir ../shared/data     # about 2 minutes on 2 cores
    python examples/train_mnist.py --quick                       # seconds, bundled sample
"""

import argparse
import sys
from pathlib import Path

from pyro_vae import TrainConfig, evaluate, fit, load_dataset
from pyro_vae.errors import PyroVAEError
from pyro_vae.plots import latent_scatter_figure, manifold_figure


def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # first: an unwritable --out fails before training
    data = load_dataset(args.dataset, args.data_dir, fallback=True)  # MNIST, else the sample
    config = TrainConfig(
        dataset=data.name, latent_dim=2, epochs=args.epochs, train_size=args.train_size
    )
    result = fit(config, data=data, progress=True)  # a line an epoch on stderr
    scores = evaluate(result.vae, result.test_images[: args.test_size], args.num_particles)
    print(
        f"2-D latent space, {args.epochs} epochs: test ELBO {scores.test_elbo:.2f}, "
        f"log p(x) {scores.log_likelihood:.2f} nats/image (K = {args.num_particles})"
    )
    manifold_figure(result.vae, data.image_shape).savefig(out / "manifold.png", dpi=100)
    scatter = latent_scatter_figure(result.vae, result.test_images, data.test_labels)
    scatter.savefig(out / "latent_scatter.png", dpi=100)
    print(f"wrote {out / 'manifold.png'} and {out / 'latent_scatter.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="default mnist; mnist-sample with --quick")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--num-particles", type=int, default=1000)
    parser.add_argument("--out", default="mnist-2d")
    parser.add_argument("--quick", action="store_true", help="seconds, on the bundled sample")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.train_size = 5, None  # the whole sample: enough to draw digits
        args.test_size, args.num_particles = 100, 20
    args.dataset = args.dataset or ("mnist-sample" if args.quick else "mnist")
    try:
        main(args)
    except PyroVAEError as e:
        sys.exit(f"{Path(__file__).name}: error: {e}")
    except OSError as e:  # --out cannot be written
        where = e.filename or args.out
        sys.exit(f"{Path(__file__).name}: error: cannot write {where}: {e.strerror or e}")
