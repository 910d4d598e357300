"""The ``pyro-vae`` commands on a trained run (evaluate, sample, reconstruct, plot,
posterior) and the estimator study (compare-estimators); ``train``, the parser and the
handling of errors and signals are :mod:`pyro_vae.cli`'s."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from pyro_vae.checkpoint import write_json
from pyro_vae.cli_common import (
    MAX_PICTURES,
    _add_shared,
    _check_count,
    _config_settings,
    _evaluate_and_report,
    _lock_for_file,
    _not_another_run,
    _picture_format,
    _progress,
    _save,
    _test_images,
    write_plots,
)
from pyro_vae.config import (
    TrainConfig,
    add_config_arguments,
    check_device,
)
from pyro_vae.errors import ConfigError, OutputError
from pyro_vae.estimators import CONTINUOUS_ESTIMATORS as ESTIMATORS
from pyro_vae.estimators import ESTIMATORS as ALL_ESTIMATORS
from pyro_vae.isolation import check_seed
from pyro_vae.plots import (
    completions_figure,
    reconstructions_figure,
    samples_figure,
)
from pyro_vae.runfolder import (
    held_out_elbo,
    load_run,
    locked_folder,
)


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="test ELBO and importance-sampled log-likelihood",
        description="Evaluate a trained run on its test set, in nats per image; "
        "writes RUN_DIR/evaluation.json.",
    )
    _add_shared(p, "run_dir")
    _add_shared(
        p, "num_particles", default=1000, help="importance samples per image (default 1000)"
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=0,
        help="evaluate the first N test images (default 0: all)",
    )
    _add_shared(p, "seed", help="the same seed gives the same figures (0)")
    _add_shared(p, "data_dir")
    _add_shared(p, "device", default="cpu")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    _check_count(args.num_particles, "-K")
    _check_count(args.num_images, "--num-images", low=0)
    check_device(args.device)
    check_seed(args.seed, "--seed")
    with locked_folder(args.run_dir):
        run = load_run(args.run_dir, args.device)
        test, data = _test_images(run, args.data_dir)
        config = dataclasses.replace(run.config, seed=args.seed)
        _evaluate_and_report(
            run.vae,
            config,
            test,
            Path(args.run_dir),
            args.num_particles,
            args.num_images,
            _progress(),
            run.history,
            "--num-images",
            data.test_labels,
        )
    return 0


def _add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="picture of samples from the prior",
        description="Decode z ~ N(0, I) and save the mean images as a grid (PNG, or the "
        "format the file name's suffix names). M2 and a label-conditioned CVAE draw a class "
        "(--condition CLASS; a CVAE by default a column a class); a quadrant-completion CVAE "
        "completes test images: their inputs, truth, the baseline's guess and five draws.",
    )
    _add_shared(p, "run_dir")
    p.add_argument(
        "--num",
        type=int,
        help="number of samples (default 64; of a "
        "quadrant-completion CVAE, the test images completed, default 10)",
    )
    p.add_argument(
        "--condition",
        type=int,
        metavar="CLASS",
        help="an M2 run's or a "
        "label-conditioned CVAE's: samples of this class (default: every class)",
    )
    _add_shared(p, "seed")
    _add_shared(p, "data_dir")
    p.add_argument("--out", help="picture path (default RUN_DIR/samples.png)")
    p.set_defaults(func=_cmd_sample)


MAX_COMPLETED = 32  # the columns of a picture of completions (eight rows each)


def _cmd_sample(args: argparse.Namespace) -> int:
    if args.num is not None:
        _check_count(args.num, "--num", high=MAX_PICTURES)
    check_seed(args.seed, "--seed")
    out = Path(args.out or Path(args.run_dir) / "samples.png")
    _picture_format(out)
    _not_another_run(out.parent, args.run_dir)
    run = load_run(args.run_dir)
    classes = getattr(run.vae, "classes", None)
    if args.condition is not None and not classes:
        raise ConfigError("--condition CLASS is for a run of model m2, or cvae --condition "
                          "label; this run's model has no classes")  # fmt: skip
    if args.condition is not None and not 0 <= args.condition < classes:
        raise ConfigError(f"--condition is a class, 0..{classes - 1}, not {args.condition}")
    if getattr(run.vae, "condition", "label") != "label":  # quadrant completion
        if (args.num or 0) > MAX_COMPLETED:
            raise ConfigError(f"--num: a picture of completions shows at most {MAX_COMPLETED} "
                              f"test images, a column each; got {args.num}")  # fmt: skip
        test, _ = _test_images(run, args.data_dir)
        images = test[: args.num or 10]
        figure = completions_figure(run.vae, images, run.image_shape, seed=args.seed)
    else:
        num = args.num or 64
        figure = samples_figure(run.vae, run.image_shape, num, args.seed, args.condition)
    with _lock_for_file(out):
        _save(figure, out)
    return 0


def _add_reconstruct_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="picture of test images over their reconstructions",
        description="Save test images above their reconstructions E[x|z=mu(x)] (PNG, or the "
        "format the file name's suffix names).",
    )
    _add_shared(p, "run_dir")
    p.add_argument("--num", type=int, default=32, help="number of test images (default 32)")
    p.add_argument("--out", help="picture path (default RUN_DIR/reconstructions.png)")
    _add_shared(p, "data_dir")
    p.set_defaults(func=_cmd_reconstruct)


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    _check_count(args.num, "--num", high=MAX_PICTURES)
    out = Path(args.out or Path(args.run_dir) / "reconstructions.png")
    _picture_format(out)
    _not_another_run(out.parent, args.run_dir)
    run = load_run(args.run_dir)
    images, _ = _test_images(run, args.data_dir)
    _check_count(args.num, "--num", high=len(images))
    images = images[: args.num]
    fig = reconstructions_figure(images, run.vae.reconstruct(images), run.image_shape)
    with _lock_for_file(out):
        _save(fig, out)
    return 0


def _add_plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="all the pictures of a run",
        description="Write samples, reconstructions, the latent scatter by class, "
        "interpolations, training curves and (for a 2-D latent space) the manifold of a run "
        "as PNGs.",
    )
    _add_shared(p, "run_dir")
    p.add_argument("--out", help="folder for the PNGs (default RUN_DIR)")
    _add_shared(p, "data_dir")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace) -> int:
    _not_another_run(Path(args.out or args.run_dir), args.run_dir)
    # the run folder itself is not created: a missing one is "no run folder"
    with locked_folder(args.out or args.run_dir, create=args.out is not None) as out_dir:
        run = load_run(args.run_dir)
        test, data = _test_images(run, args.data_dir)
        write_plots(run.vae, run.history, run.image_shape, test, data.test_labels, out_dir,
                    data.class_names)  # fmt: skip
    return 0


def _add_posterior_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "posterior",
        help="the guide against NUTS samples of the true posterior",
        description="For chosen test images, sample p(z|x) with Pyro's NUTS and the trained "
        "decoder, report ArviZ's R-hat and effective sample size (with a warning where they "
        "say the chains cannot be trusted), the ELBO and the importance-sampled log p(x) "
        "(their gap is KL(q || p(z|x))), and plot guide samples against NUTS samples.",
    )
    _add_shared(p, "run_dir")
    p.add_argument("--index", type=int, nargs="+", default=[0], help="test images (default 0)")
    p.add_argument("--num-samples", type=int, default=300, help="NUTS draws a chain (300)")
    p.add_argument("--warmup", type=int, default=300, help="NUTS warm-up steps a chain (300)")
    p.add_argument("--chains", type=int, default=2, help="NUTS chains, run in turn (2)")
    _add_shared(
        p, "num_particles", default=5000, help="importance samples for log p(x) (default 5000)"
    )
    _add_shared(p, "seed")
    p.add_argument("--out", help="folder for posterior.json and PNGs (default RUN_DIR)")
    _add_shared(p, "data_dir")
    p.set_defaults(func=_cmd_posterior)


def _cmd_posterior(args: argparse.Namespace) -> int:
    from pyro_vae.posterior import check_posterior, posterior_figure

    for value, flag in ((args.num_samples, "--num-samples"), (args.warmup, "--warmup"),
                        (args.chains, "--chains"), (args.num_particles, "-K")):  # fmt: skip
        _check_count(value, flag)
    check_seed(args.seed, "--seed")
    _not_another_run(Path(args.out or args.run_dir), args.run_dir)
    run = load_run(args.run_dir)
    refusal = run.vae.hmc_refusal("nuts")  # before the data are loaded or a line printed
    if refusal:
        raise ConfigError(refusal)
    test, _ = _test_images(run, args.data_dir)
    bad = [i for i in args.index if not 0 <= i < len(test)]
    if bad:
        raise ConfigError(f"test image indices {bad} out of range 0..{len(test) - 1}")
    # the folder is locked and known to be writable before minutes of NUTS
    with locked_folder(args.out or args.run_dir, create=True) as out_dir:
        checks = []
        print(f"{'image':>6} {'ELBO':>9} {'log p(x)':>9} {'gap':>6} {'R-hat':>6} {'ESS':>6}",
              flush=True)  # fmt: skip
        for i in args.index:
            check, idata = check_posterior(
                run.vae, test[i], i, args.num_samples, args.warmup, args.chains,
                args.num_particles, args.seed, progress=_progress(),
            )  # fmt: skip
            checks.append(check.to_dict())
            # flushed: into a pipe or a file, a row of each image as it is done
            print(f"{i:6d} {check.elbo:9.2f} {check.log_likelihood:9.2f} {check.gap:6.2f} "
                  f"{check.r_hat_max:6.3f} {check.ess_bulk_min:6.0f}", flush=True)  # fmt: skip
            for warning in check.warnings:
                print(f"pyro-vae posterior: warning: image {i}: {warning}", file=sys.stderr)
            fig = posterior_figure(run.vae, test[i], idata, check=check)
            _save(fig, out_dir / f"posterior_{i}.png")
            # after each image: an interrupted check leaves a table that matches its pictures
            write_json(out_dir / "posterior.json", checks)
        print(f"gap = log p(x) - ELBO = KL(q(z|x) || p(z|x)), nats; written to {out_dir}")
    return 0


# flags of train that the study does not take, with the reason it gives
_STUDY_REFUSES = {
    "estimator": "compare-estimators takes --estimators (a list), not --estimator",
    "resume": "compare-estimators cannot resume a study; start a new one with another --out",
    "objective": "compare-estimators trains every estimator with objective elbo, K = 1 (the "
    "score-function estimators need it; reinforce-loo and vimco take 2 draws); drop --objective",
    "num_particles": "compare-estimators trains every estimator with objective elbo, K = 1 (the "
    "score-function estimators need it; reinforce-loo and vimco take 2 draws); drop -K",
    "eval_particles": "compare-estimators makes no final evaluation; drop --eval-particles",
    "eval_images": "compare-estimators makes no final evaluation; drop --eval-images",
    "no_plots": "compare-estimators always writes its two figures; drop --no-plots",
}


def _add_compare_estimators_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare-estimators",
        help="gradient variance and training per estimator",
        description="On one model, one minibatch and the same parameters, draw "
        "many gradient estimates per estimator (at initialization and after "
        "chosen epochs of a run with the latent's own estimator: reparam, or disarm and "
        "gumbel for the discrete latents); then train one model per estimator "
        "with the same seed and budget, objective elbo, K = 1 (2 draws for reinforce-loo and "
        "vimco). Writes CSV/JSON tables and figures into a new folder.",
    )
    add_config_arguments(p, study=True)
    p.add_argument(
        "--estimators",
        nargs="+",
        choices=ALL_ESTIMATORS,
        help="estimators to compare (default: all of the latent's that sample: "
        f"{', '.join(ESTIMATORS)} for a continuous latent; for a discrete one, all of its "
        "estimators but enumerate, which gives the reference where the code is small enough)",
    )
    p.add_argument(
        "--gradient-epochs",
        type=int,
        nargs="+",
        default=[0],
        help="measure gradients after these epochs of the run with the latent's own estimator, "
        "each from 0 (at initialization; the default) to --epochs",
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
        help="estimates behind the reference mean (default 1000): reparam's, or for a "
        "discrete latent disarm's (bernoulli) or reinforce-loo's (categorical); a code of at "
        "most 4096 values is summed over exactly instead",
    )
    p.add_argument("--out", default="estimator-study", help="a new folder (estimator-study)")
    _add_shared(p, "no_progress")
    # refused with a reason (see _STUDY_REFUSES), hidden from --help
    hidden = argparse.SUPPRESS
    for flag in ("--estimator", "--resume", "--objective", "--eval-particles", "--eval-images"):
        p.add_argument(flag, help=hidden)
    _add_shared(p, "num_particles", help=hidden)
    p.add_argument("--no-plots", action="store_true", help=hidden)
    p.set_defaults(func=_cmd_compare_estimators)


def _cmd_compare_estimators(args: argparse.Namespace) -> int:
    from pyro_vae.compare import check_study, compare_estimators

    for dest, message in _STUDY_REFUSES.items():
        if getattr(args, dest, None) not in (None, False):
            raise ConfigError(message)
    config = TrainConfig(**_config_settings(args, {"objective": "elbo"}))
    check_study(config, args.estimators)  # before the folder is made
    _check_count(args.num_estimates, "--num-estimates", low=2)
    _check_count(args.reference_estimates, "--reference-estimates", low=2)
    bad = [e for e in args.gradient_epochs if not 0 <= e <= config.epochs]
    if bad:
        raise ConfigError(
            f"--gradient-epochs {' '.join(map(str, bad))} outside 0..{config.epochs} (--epochs): "
            "gradients are measured at initialization (0) or after an epoch of the run with the "
            "latent's own estimator"
        )
    out_dir = Path(args.out)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise OutputError(f"{out_dir} already holds files; the study writes a new folder")
    with locked_folder(out_dir, create=True):
        result = compare_estimators(
            config,
            out_dir,
            args.estimators,
            args.gradient_epochs,
            args.num_estimates,
            args.reference_estimates,
            progress=not args.no_progress,
        )
    _print_study(result, args.reference_estimates)
    print(f"tables and figures in {out_dir}")
    return 0


def _print_study(result, reference_estimates: int) -> None:
    """The study's gradient rows and each estimator's last held-out ELBO, on stdout."""
    own = next(k for k in result.gradients[0] if k.startswith("variance_ratio_to_"))
    print(
        f"{'stage':<10} {'estimator':<22} {'network':<8} {'variance':>10} "
        f"{'/ ' + own.rsplit('_', 1)[1]:>10} {'SNR':>7} {'cosine':>7} {'ms':>7}"
    )
    for r in result.gradients:
        snr = f"{r['snr']:7.3f}" if r["snr"] < 1000 else f"{r['snr']:7.1e}"  # exact: no noise
        print(
            f"{r['stage']:<10} {r['estimator']:<22} {r['network']:<8} "
            f"{r['total_variance']:10.3g} {r[own]:10.3g} "
            f"{snr} {r['cosine']:7.3f} {1000 * r['seconds_per_estimate']:7.1f}"
        )
    reference = result.gradients[0]["reference"]
    exact = reference == "enumerate"
    against = f"the mean of {reference_estimates} {reference} estimates"
    print(f"cosine: of the mean against {'the exact gradient (enumerate)' if exact else against}")
    for estimator, history in result.training.items():
        last = history[-1]
        print(
            f"{estimator:<22} {held_out_elbo(last)[0]} ELBO {held_out_elbo(last)[1]:8.2f} after "
            f"{last['step']} steps, "
            f"{last['seconds']:.0f} s"
        )
