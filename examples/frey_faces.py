"""Example: Kingma & Welling's second data set, Frey Face, with a Gaussian likelihood.

1965 grey-level faces of 28x20 pixels; the decoder gives each pixel a mean and a learned scale.
A 2-D latent space shows the manifold of expressions and poses::

    python examples/frey_faces.py --data-dir ../shared/data      # under a minute on 2 cores
    python examples/frey_faces.py --data-dir ../shared/data --quick
"""

import argparse
import sys
from pathlib import Path

from pyro_vae import TrainConfig, evaluate, fit, load_dataset
from pyro_vae.errors import PyroVAEError
from pyro_vae.plots import manifold_figure, samples_figure


def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # first: an unwritable --out fails before training
    data = load_dataset("frey-faces", args.data_dir)
    config = TrainConfig(
        dataset="frey-faces",
        likelihood="gaussian",
        latent_dim=2,
        hidden_sizes=(200,),
        batch_size=100,
        epochs=args.epochs,
    )
    result = fit(config, data=data)
    scores = evaluate(result.vae, result.test_images, args.num_particles)
    print(
        f"Frey Face, {args.epochs} epochs: test ELBO {scores.test_elbo:.1f}, "
        f"log p(x) {scores.log_likelihood:.1f} nats/image (continuous densities, so positive "
        "values are possible)"
    )
    manifold_figure(result.vae, data.image_shape, 12).savefig(out / "manifold.png", dpi=100)
    samples_figure(result.vae, data.image_shape, 36).savefig(out / "samples.png", dpi=100)
    print(f"wrote {out / 'manifold.png'} and {out / 'samples.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--num-particles", type=int, default=1000)
    parser.add_argument("--out", default="frey-faces")
    parser.add_argument("--quick", action="store_true", help="a few epochs")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.num_particles = 3, 20
    try:
        main(args)
    except PyroVAEError as e:
        sys.exit(f"{Path(__file__).name}: error: {e}")
    except OSError as e:  # --out cannot be written
        where = e.filename or args.out
        sys.exit(f"{Path(__file__).name}: error: cannot write {where}: {e.strerror or e}")
