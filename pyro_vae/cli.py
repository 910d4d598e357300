"""The ``pyro-vae`` command: train, evaluate, sample, reconstruct.

Every error a user can cause ends in one line on stderr and a non-zero exit code: 2 for a
malformed command line, 1 for everything else (missing data, a bad setting, a damaged
checkpoint, a diverged run).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from pyro_vae.checkpoint import load_checkpoint, write_json
from pyro_vae.data import (
    BINARIZATIONS,
    DATASETS,
    load_dataset,
    load_mnist_or_sample,
    prepare_images,
)
from pyro_vae.errors import CheckpointError, ConfigError, PyroVAEError
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.evaluate import evaluate
from pyro_vae.networks import ACTIVATIONS, LIKELIHOODS
from pyro_vae.objectives import OBJECTIVES
from pyro_vae.optim import LR_SCHEDULES
from pyro_vae.plots import (
    interpolation_figure,
    latent_scatter_figure,
    manifold_figure,
    metrics_figure,
    reconstructions_figure,
    samples_figure,
)
from pyro_vae.train import CHECKPOINT_FILE, TrainConfig, fit, load_run

__all__ = ["main"]

EVALUATION_FILE = "evaluation.json"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    # Config flags default to None so that --resume can tell which ones were given.
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=DATASETS,
        help=f"default {d.dataset}; if MNIST is "
        "missing and cannot be downloaded, the bundled mnist-sample is used, loudly",
    )
    g.add_argument(
        "--data-dir", help="data root (default $PYRO_VAE_DATA_DIR, else ~/.cache/pyro_vae/data)"
    )
    g.add_argument(
        "--binarize", choices=BINARIZATIONS, help="default dynamic for bernoulli, else none"
    )
    g.add_argument("--train-size", type=int, help="use only the first N training images")
    g = p.add_argument_group("model")
    g.add_argument("--latent-dim", type=int, help=f"default {d.latent_dim}")
    g.add_argument(
        "--hidden-sizes",
        type=int,
        nargs="+",
        metavar="H",
        help=f"encoder widths, mirrored in the decoder (default {d.hidden_sizes[0]})",
    )
    g.add_argument("--activation", choices=list(ACTIVATIONS), help=f"default {d.activation}")
    g.add_argument("--likelihood", choices=LIKELIHOODS, help=f"default {d.likelihood}")
    g = p.add_argument_group("objective and optimizer")
    g.add_argument("--objective", choices=OBJECTIVES, help=f"default {d.objective}")
    g.add_argument("--estimator", choices=ESTIMATORS, help=f"default {d.estimator}")
    g.add_argument(
        "--baseline-beta",
        type=float,
        help=f"decay of the REINFORCE running-average baseline (default {d.baseline_beta})",
    )
    g.add_argument(
        "--baseline-learning-rate",
        type=float,
        help=f"Adam learning rate of the nn baseline (default {d.baseline_learning_rate})",
    )
    g.add_argument("-K", "--num-particles", type=int, help="samples per image (default 1)")
    g.add_argument(
        "--lr",
        "--learning-rate",
        dest="learning_rate",
        type=float,
        help=f"Adam learning rate (default {d.learning_rate})",
    )
    g.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="constant (the default) or iwae: Burda et al. (2015), 3^i epochs at "
        "10^(-i/7) times --lr for i = 0..7",
    )
    g.add_argument("--adam-eps", type=float, help=f"Adam's epsilon (default {d.adam_eps:g})")
    g.add_argument("--clip-norm", type=float, help="clip each parameter's gradient norm")
    g.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    g.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    g.add_argument("--seed", type=int, help=f"default {d.seed}")
    g.add_argument("--device", help="cpu or cuda (default cpu)")
    g.add_argument("--jit", action="store_const", const=True, help="Pyro's JIT-compiled ELBOs")
    g = p.add_argument_group("run folder and final evaluation")
    g.add_argument("--out", help="run folder (default runs/DATASET-TIME)")
    g.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR; flags given must match its config, "
        "except --epochs, --device and --data-dir",
    )
    g.add_argument(
        "--eval-particles",
        type=int,
        default=1000,
        help="K for the final importance-sampled log-likelihood (default 1000)",
    )
    g.add_argument(
        "--eval-images",
        type=int,
        default=1000,
        help="test images in the final evaluation (default 1000; 0 for all)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-plots", action="store_true", help="do not write the pictures")


CONFIG_FLAGS = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "data_fallback"]


def _config_overrides(args: argparse.Namespace) -> dict:
    given = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k, None) is not None}
    if "hidden_sizes" in given:
        given["hidden_sizes"] = tuple(given["hidden_sizes"])
    return given


def _test_images(config: TrainConfig, data_dir: str | None) -> torch.Tensor:
    """The run's test images, binarized exactly as during training."""
    data = load_dataset(config.dataset, data_dir or config.data_dir)
    return prepare_images(data, config.binarize, config.likelihood, config.seed)[1]


def _evaluate_and_report(vae, config, test, run_dir: Path, num_particles, num_images) -> dict:
    images = test[:num_images] if num_images else test
    started = time.perf_counter()
    result = evaluate(vae, images.to(next(vae.parameters()).device), num_particles).to_dict()
    result.update(dataset=config.dataset, seconds=time.perf_counter() - started)
    write_json(run_dir / EVALUATION_FILE, result)
    print(
        f"{config.dataset} test set, {result['num_images']} images, K = {num_particles}:\n"
        f"  test ELBO        {result['test_elbo']:9.2f} ± {result['test_elbo_stderr']:.2f} "
        "nats/image\n"
        f"  log p(x) (IS)    {result['log_likelihood']:9.2f} ± "
        f"{result['log_likelihood_stderr']:.2f} nats/image  (NLL {result['nll']:.2f})\n"
        f"  reconstruction   {result['reconstruction_nll']:9.2f} nats/image (-E_q log p(x|z))\n"
        f"  KL(q || p)       {result['kl']:9.2f} nats/image\n"
        f"  active units     {result['active_units']} of {len(result['kl_per_dim'])}\n"
        f"written to {run_dir / EVALUATION_FILE}"
    )
    return result


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def write_plots(vae, history, image_shape, test_images, test_labels, out_dir: Path) -> None:
    """Every picture of a run: samples, reconstructions, latent scatter, interpolations,
    training curves, and the manifold for a 2-D latent space."""
    _save(samples_figure(vae, image_shape), out_dir / "samples.png")
    originals = test_images[:32]
    _save(
        reconstructions_figure(originals, vae.reconstruct(originals), image_shape),
        out_dir / "reconstructions.png",
    )
    _save(latent_scatter_figure(vae, test_images, test_labels), out_dir / "latent_scatter.png")
    pairs = test_images[:12].reshape(6, 2, -1)
    _save(interpolation_figure(vae, pairs, image_shape), out_dir / "interpolation.png")
    if history:
        _save(metrics_figure(history), out_dir / "training_curves.png")
    if vae.latent_dim == 2:
        _save(manifold_figure(vae, image_shape), out_dir / "manifold.png")


def _cmd_train(args: argparse.Namespace) -> int:
    given = _config_overrides(args)
    data = None
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise CheckpointError("give the run folder once: --resume RUN_DIR (without --out)")
        run_dir = Path(args.resume)
        saved = TrainConfig.from_dict(load_checkpoint(run_dir / CHECKPOINT_FILE)["config"])
        config = dataclasses.replace(saved, **given)
    else:
        config = TrainConfig(**given)
        config.validate()  # before any data is touched
        if "dataset" not in given:
            data, config.data_fallback = load_mnist_or_sample(config.data_dir)
            if config.data_fallback:
                print(f"\nWARNING: {config.data_fallback}\n", file=sys.stderr)
            config.dataset = data.name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.out or f"runs/{config.dataset}-{stamp}")
    _check_evaluation_args(args.eval_particles, args.eval_images)
    config.progress = not args.no_progress and sys.stderr.isatty()
    print(f"training in {run_dir}")
    result = fit(config, run_dir, data=data, resume=bool(args.resume))
    if result.history:
        last = result.history[-1]
        print(
            f"epoch {last['epoch']}: train ELBO {last['train_elbo']:.2f}, "
            f"test ELBO {last['test_elbo']:.2f} nats/image, {last['seconds']:.0f} s of training"
        )
    image_shape = result.image_shape
    _evaluate_and_report(
        result.vae, config, result.test_images, run_dir, args.eval_particles, args.eval_images
    )
    if not args.no_plots:
        write_plots(result.vae, result.history, image_shape, result.test_images,
                    result.test_labels, run_dir)  # fmt: skip
    return 0


def _check_evaluation_args(num_particles: int, num_images: int) -> None:
    if num_particles < 1:
        raise ConfigError(f"the number of particles K must be at least 1, got {num_particles}")
    if num_images < 0:
        raise ConfigError(f"the number of test images must be 0 (all) or more, got {num_images}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    _check_evaluation_args(args.num_particles, args.num_images)
    run = load_run(args.run_dir, args.device)
    test = _test_images(run.config, args.data_dir)
    _evaluate_and_report(
        run.vae, run.config, test, Path(args.run_dir), args.num_particles, args.num_images
    )
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    run = load_run(args.run_dir)
    fig = samples_figure(run.vae, run.image_shape, args.num, args.seed)
    _save(fig, Path(args.out or Path(args.run_dir) / "samples.png"))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    run = load_run(args.run_dir)
    data = load_dataset(run.config.dataset, args.data_dir or run.config.data_dir)
    test = prepare_images(data, run.config.binarize, run.config.likelihood, run.config.seed)[1]
    out_dir = Path(args.out or args.run_dir)
    write_plots(run.vae, run.history, run.image_shape, test, data.test_labels, out_dir)
    return 0


def _cmd_posterior(args: argparse.Namespace) -> int:
    from pyro_vae.posterior import check_posterior, posterior_figure

    if min(args.num_samples, args.warmup, args.chains, args.num_particles) < 1:
        raise ConfigError("--num-samples, --warmup, --chains and -K must be positive")
    run = load_run(args.run_dir)
    test = _test_images(run.config, args.data_dir)
    bad = [i for i in args.index if not 0 <= i < len(test)]
    if bad:
        raise ConfigError(f"test image indices {bad} out of range 0..{len(test) - 1}")
    out_dir = Path(args.out or args.run_dir)
    checks = []
    print(f"{'image':>6} {'ELBO':>9} {'log p(x)':>9} {'gap':>6} {'R-hat':>6} {'ESS':>6}")
    for i in args.index:
        check, idata = check_posterior(
            run.vae, test[i], i, args.num_samples, args.warmup, args.chains,
            args.num_particles, args.seed,
        )  # fmt: skip
        checks.append(check.to_dict())
        print(f"{i:6d} {check.elbo:9.2f} {check.log_likelihood:9.2f} {check.gap:6.2f} "
              f"{check.r_hat_max:6.3f} {check.ess_bulk_min:6.0f}")  # fmt: skip
        _save(posterior_figure(run.vae, test[i], idata), out_dir / f"posterior_{i}.png")
    write_json(out_dir / "posterior.json", checks)
    print(f"gap = log p(x) - ELBO = KL(q(z|x) || p(z|x)), nats; written to {out_dir}")
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    run = load_run(args.run_dir)
    images = _test_images(run.config, args.data_dir)[: args.num]
    fig = reconstructions_figure(images, run.vae.reconstruct(images), run.image_shape)
    _save(fig, Path(args.out or Path(args.run_dir) / "reconstructions.png"))
    return 0


def _cmd_compare_estimators(args: argparse.Namespace) -> int:
    from pyro_vae.compare import compare_estimators

    given = _config_overrides(args)
    if "estimator" in given or args.resume:
        raise ConfigError(
            "compare-estimators takes --estimators (a list), not --estimator or --resume"
        )
    config = TrainConfig(**given)
    config.validate()
    out_dir = Path(args.out)
    if (out_dir / "runs").exists():
        raise CheckpointError(f"{out_dir} already holds a study; choose another --out")
    if args.num_estimates < 2 or args.reference_estimates < 2:
        raise ConfigError("--num-estimates and --reference-estimates must be at least 2")
    result = compare_estimators(
        config,
        out_dir,
        args.estimators,
        args.gradient_epochs,
        args.num_estimates,
        args.reference_estimates,
    )
    print(
        f"{'stage':<10} {'estimator':<22} {'network':<8} {'variance':>10} "
        f"{'/ reparam':>10} {'SNR':>7} {'cosine':>7} {'ms':>7}"
    )
    for r in result.gradients:
        print(
            f"{r['stage']:<10} {r['estimator']:<22} {r['network']:<8} "
            f"{r['total_variance']:10.3g} {r['variance_ratio_to_reparam']:10.3g} "
            f"{r['snr']:7.3f} {r['cosine']:7.3f} {1000 * r['seconds_per_estimate']:7.1f}"
        )
    for estimator, history in result.training.items():
        last = history[-1]
        print(
            f"{estimator:<22} test ELBO {last['test_elbo']:8.2f} after {last['step']} steps, "
            f"{last['seconds']:.0f} s"
        )
    print(f"tables and figures in {out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyro-vae", description="Variational autoencoders in Pyro.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "train",
        help="train a VAE and write a run folder",
        description="Train a VAE with Pyro's SVI; write config, checkpoint, "
        "metrics, a final evaluation and pictures into a run folder.",
    )
    _add_train_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="test ELBO and importance-sampled log-likelihood",
        description="Evaluate a trained run on its test set, in nats per image; "
        "writes RUN_DIR/evaluation.json.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "-K",
        "--num-particles",
        type=int,
        default=1000,
        help="importance samples per image (default 1000)",
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=0,
        help="evaluate the first N test images (default 0: all)",
    )
    p.add_argument("--data-dir", help="data root, if not the one the run used")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "sample",
        help="PNG grid of samples from the prior",
        description="Decode z ~ N(0, I) and save the mean images as a PNG grid.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="PNG path (default RUN_DIR/samples.png)")
    p.add_argument("--data-dir", help="data root, if not the one the run used")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "plot",
        help="all the pictures of a run",
        description="Write samples, reconstructions, the latent scatter by class, "
        "interpolations, training curves and (for a 2-D latent space) the manifold of a run "
        "as PNGs.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="folder for the PNGs (default RUN_DIR)")
    p.add_argument("--data-dir", help="data root, if not the one the run used")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser(
        "posterior",
        help="the guide against NUTS samples of the true posterior",
        description="For chosen test images, sample p(z|x) with Pyro's NUTS and the trained "
        "decoder, report ArviZ's R-hat and effective sample size, the ELBO and the "
        "importance-sampled log p(x) (their gap is KL(q || p(z|x))), and plot guide samples "
        "against NUTS samples.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--index", type=int, nargs="+", default=[0], help="test images (default 0)")
    p.add_argument("--num-samples", type=int, default=300, help="NUTS draws a chain (300)")
    p.add_argument("--warmup", type=int, default=300, help="NUTS warm-up steps a chain (300)")
    p.add_argument("--chains", type=int, default=2, help="NUTS chains, run in turn (2)")
    p.add_argument("-K", "--num-particles", type=int, default=5000,
                   help="importance samples for log p(x) (default 5000)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for posterior.json and PNGs (default RUN_DIR)")
    p.add_argument("--data-dir", help="data root, if not the one the run used")
    p.set_defaults(func=_cmd_posterior)

    p = sub.add_parser(
        "reconstruct",
        help="PNG of test images over their reconstructions",
        description="Save test images above their reconstructions E[x|z=mu(x)].",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--num", type=int, default=32, help="number of test images (default 32)")
    p.add_argument("--out", help="PNG path (default RUN_DIR/reconstructions.png)")
    p.add_argument("--data-dir", help="data root, if not the one the run used")
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser(
        "compare-estimators",
        help="gradient variance and training per estimator",
        description="On one model, one minibatch and the same parameters, draw "
        "many gradient estimates per estimator (at initialization and after "
        "chosen epochs of a reparam run); then train one model per estimator "
        "with the same seed and budget. Writes CSV/JSON tables and figures.",
    )
    _add_train_arguments(p)
    p.add_argument(
        "--estimators",
        nargs="+",
        choices=ESTIMATORS,
        default=list(ESTIMATORS),
        help="estimators to compare (default all)",
    )
    p.add_argument(
        "--gradient-epochs",
        type=int,
        nargs="+",
        default=[0],
        help="measure gradients after these epochs of the reparam run (0: at "
        "initialization; default 0)",
    )
    p.add_argument(
        "--num-estimates",
        type=int,
        default=200,
        help="gradient estimates per estimator and stage (default 200)",
    )
    p.add_argument(
        "--reference-estimates",
        type=int,
        default=1000,
        help="reparam estimates behind the reference mean (default 1000)",
    )
    p.set_defaults(func=_cmd_compare_estimators, out="estimator-study")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PyroVAEError as e:
        print(f"pyro-vae {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pyro-vae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
