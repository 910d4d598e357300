"""Example: how close is the amortized guide to the true posterior?

Trains a VAE, then for a few test digits samples the true posterior p(z|x) with Pyro's NUTS
(the trained decoder held fixed), checks convergence with ArviZ, and compares: the gap
log p(x) - ELBO is KL(q(z|x) || p(z|x)), what the amortized Gaussian guide loses on that
image (the amortization gap and the Gaussian family's limits together)::

    python examples/posterior_check.py --data-dir ../shared/data   # a few minutes on 2 cores
    python examples/posterior_check.py --quick
"""

import argparse
import sys
from pathlib import Path

from pyro_vae import TrainConfig, fit, load_dataset
from pyro_vae.errors import PyroVAEError
from pyro_vae.posterior import check_posterior, posterior_figure


def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # first: an unwritable --out fails before training
    data = load_dataset(args.dataset, args.data_dir, fallback=True)  # MNIST, else the sample
    config = TrainConfig(
        dataset=data.name, latent_dim=args.latent_dim, epochs=args.epochs,
        train_size=args.train_size,
    )  # fmt: skip
    result = fit(config, data=data)
    warmup = args.num_samples if args.warmup is None else args.warmup
    for i in range(args.images):
        x = result.test_images[i]
        check, idata = check_posterior(
            result.vae, x, i, args.num_samples, warmup, args.chains, num_particles=args.k
        )
        print(
            f"test image {i}: ELBO {check.elbo:.2f}, log p(x) {check.log_likelihood:.2f}, "
            f"gap {check.gap:.2f} nats; NUTS R-hat {check.r_hat_max:.3f}, "
            f"ESS {check.ess_bulk_min:.0f}"
        )
        for warning in check.warnings:  # NUTS's numbers above are not to be trusted
            print(f"  WARNING: {warning}")
        fig = posterior_figure(result.vae, x, idata, check=check)
        fig.savefig(out / f"posterior_{i}.png", dpi=80)
    print(f"figures in {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="default mnist; mnist-sample with --quick")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=300, help="NUTS draws per chain")
    parser.add_argument("--warmup", type=int, default=None, help="default: --num-samples")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("-k", type=int, default=5000)
    parser.add_argument("--out", default="posterior-check")
    parser.add_argument("--quick", action="store_true", help="seconds, on the bundled sample")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.train_size, args.latent_dim = 1, 512, 4
        args.images, args.num_samples, args.k = 1, 50, 200
    args.dataset = args.dataset or ("mnist-sample" if args.quick else "mnist")
    try:
        main(args)
    except PyroVAEError as e:
        sys.exit(f"{Path(__file__).name}: error: {e}")
    except OSError as e:  # --out cannot be written
        where = e.filename or args.out
        sys.exit(f"{Path(__file__).name}: error: cannot write {where}: {e.strerror or e}")
