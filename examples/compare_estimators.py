"""Example: why the reparameterization trick matters, measured on a real VAE.

Draws many gradient estimates of the ELBO at the same parameters and minibatch for each
estimator (reparameterized, REINFORCE with and without baselines, sticking-the-landing) at
initialization and after training, then trains one VAE per estimator on the same budget::

    python examples/compare_estimators.py --data-dir ../shared/data   # a few minutes on 2 cores
    python examples/compare_estimators.py --quick                     # seconds, bundled sample

Tables (``gradients.csv``, ``training.csv``) and figures (``variance.png``,
``training_curves.png``) are written to ``--out``.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from pyro_vae import TrainConfig, load_dataset
from pyro_vae.compare import compare_estimators
from pyro_vae.errors import PyroVAEError
from pyro_vae.train import run_images


def main(args: argparse.Namespace) -> None:
    # compare_estimators() writes into --out; made first, so that it fails before any training
    Path(args.out).mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.dataset, args.data_dir, fallback=True)  # MNIST, else the sample
    config = TrainConfig(  # the score-function estimators need the plain ELBO, K = 1
        dataset=data.name, objective="elbo", epochs=args.epochs, seed=args.seed,
    )  # fmt: skip
    # --train-size of the images there are (the bundled sample, offline, has 4500)
    available = len(run_images(config, data).train)
    config = dataclasses.replace(config, train_size=min(args.train_size, available))
    result = compare_estimators(
        config,
        args.out,
        gradient_epochs=(0, args.epochs),
        num_samples=args.num_estimates,
        reference_samples=5 * args.num_estimates,
        data=data,
        baseline_warmup=args.baseline_warmup,
    )
    print("encoder gradient: total variance relative to reparam")
    for row in result.gradients:
        if row["network"] == "encoder":
            ratio = row["variance_ratio_to_reparam"]
            print(f"  {row['stage']:<9} {row['estimator']:<22} {ratio:12.3g}")
    for estimator, history in result.training.items():
        print(f"{estimator:<22} validation ELBO {history[-1]['valid_elbo']:.2f} nats/image")
    print(f"tables and figures in {args.out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="default mnist; mnist-sample with --quick")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--num-estimates", type=int, default=100)
    parser.add_argument("--baseline-warmup", type=int, default=200,
                        help="steps a baseline learns before its estimates are drawn")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="estimator-study")
    parser.add_argument("--quick", action="store_true", help="seconds, on the bundled sample")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.train_size, args.num_estimates = 1, 512, 10
        args.baseline_warmup = 20  # the baselines' warm-up was most of the quick run's time
    args.dataset = args.dataset or ("mnist-sample" if args.quick else "mnist")
    try:
        main(args)
    except PyroVAEError as e:
        sys.exit(f"{Path(__file__).name}: error: {e}")
    except OSError as e:  # --out cannot be written
        where = e.filename or args.out
        sys.exit(f"{Path(__file__).name}: error: cannot write {where}: {e.strerror or e}")
