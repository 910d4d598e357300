"""The ``pyro-vae`` command: train, evaluate, sample, reconstruct, plot, posterior, and the
estimator study.

Every error a user can cause ends in one line on stderr and a non-zero exit code: 2 for a
malformed command line, 1 for everything else (missing or damaged data, a bad setting, a damaged
checkpoint, an unwritable output, a run folder in use, a diverged run), 130 for Ctrl-C, 143
for SIGTERM. A
command that writes into a folder holds that folder's lock while it works
(:mod:`pyro_vae.runfolder`), and checks that it can write there before it starts the work. A
closed stdout (``pyro-vae train ... | head -1``) does not stop the work: the output goes
nowhere, the files are written, and the exit code is the command's own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from pyro_vae import distributed
from pyro_vae.checkpoint import atomic_write, load_checkpoint, write_json
from pyro_vae.config import (
    TrainConfig,
    add_config_arguments,
    check_device,
    given_settings,
    read_config_file,
)
from pyro_vae.data import (
    DataFallbackWarning,
    ImageData,
    load_dataset,
)
from pyro_vae.errors import CheckpointError, ConfigError, OutputError, PyroVAEError
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.evaluate import evaluate
from pyro_vae.isolation import check_seed
from pyro_vae.memory import binding_limit
from pyro_vae.plots import (
    interpolation_figure,
    latent_scatter_figure,
    manifold_figure,
    metrics_figure,
    reconstructions_figure,
    samples_figure,
)
from pyro_vae.runfolder import (
    CHECKPOINT_FILE,
    LOCK_FILE,
    TrainResult,
    held_out_elbo,
    holds_no_run,
    load_run,
    locked_folder,
)
from pyro_vae.splits import check_same_data, run_images
from pyro_vae.train import fit

__all__ = ["build_parser", "main"]

EVALUATION_FILE = "evaluation.json"
MAX_PICTURES = 10_000  # images in one sample grid


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        # no abbreviations: "--estimator" must not silently mean "--estimators"
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _progress() -> bool:
    return sys.stderr.isatty()


# -- checks made before any work ------------------------------------------------------------


def _check_count(value: int, flag: str, low: int = 1, high: int | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{flag} must be {bound}, got {value}")


def _picture_format(path: Path) -> str:
    """The format a picture path asks for (no suffix: PNG), refused if matplotlib lacks it."""
    from matplotlib.figure import Figure

    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file name")
    suffix = path.suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    formats = Figure().canvas.get_supported_filetypes()
    if suffix not in formats:
        raise OutputError(
            f"cannot write {path}: unknown picture format '.{suffix}'; use one of "
            + ", ".join(f".{f}" for f in sorted(formats))
        )
    return suffix


def _save(fig, path: Path) -> None:
    fmt = _picture_format(path)
    existed = path.is_file()
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=100))
    print(f"wrote {path}" + (", replacing the picture that was there" if existed else ""))


def _not_another_run(folder: Path, run_dir: str | Path) -> None:
    """Refuse to write a run's outputs into a folder that holds another run: its pictures and
    tables would be replaced by this one's (a folder of two models' files)."""
    if (folder / CHECKPOINT_FILE).exists() and folder.resolve() != Path(run_dir).resolve():
        raise OutputError(
            f"{folder} holds another run; write {run_dir}'s outputs into {run_dir} or a "
            "folder of their own"
        )


def _lock_for_file(path: Path):
    """The lock of the run folder a single output file goes into, if it goes into one (a
    folder with a checkpoint, or one that a run holds now, before its first checkpoint)."""
    folder = path.parent
    if (folder / CHECKPOINT_FILE).exists() or (folder / LOCK_FILE).exists():
        return locked_folder(folder)
    return contextlib.nullcontext()


def _run_data(run: TrainResult, data_dir: str | None) -> ImageData:
    """The data set a run was trained on, checked against the run's model."""
    config = run.config
    data = load_dataset(config.dataset, data_dir or config.data_dir, image_size=config.image_size)
    if data.data_dim != run.vae.data_dim:
        raise CheckpointError(
            f"the run in {run.run_dir} models images of {run.vae.data_dim} pixels, but "
            f"{run.config.dataset} has {data.data_dim}"
        )
    check_same_data(run.data_fingerprint, data, run.run_dir)
    return data


def _test_images(run: TrainResult, data_dir: str | None) -> tuple[torch.Tensor, ImageData]:
    """The run's test images, binarized exactly as during training."""
    data = _run_data(run, data_dir)
    return run_images(run.config, data).test, data


def _mnist_or_sample(data_dir: str | None, loud: bool = True) -> ImageData:
    """MNIST, else the bundled sample with a warning that stands out on stderr (unless
    ``loud`` is false: the processes of a distributed run other than rank 0)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataFallbackWarning)
        data = load_dataset("mnist", data_dir, fallback=True)
    for w in caught:
        if issubclass(w.category, DataFallbackWarning):
            if loud:
                print(f"\nWARNING: {w.message}\n", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return data


# -- options several sub-commands share -----------------------------------------------------

# name -> (flags, add_argument keywords); each written once, added by _add_shared
_SHARED: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "run_dir": (("run_dir",), {"metavar": "RUN_DIR"}),
    "data_dir": (("--data-dir",), {"help": "data root, if not the one the run used"}),
    "device": (("--device",), {"help": "cpu, cuda or cuda:N (default cpu)"}),
    "seed": (("--seed",), {"type": int, "default": 0}),
    "num_particles": (("-K", "--num-particles"), {"type": int}),
    "no_progress": (("--no-progress",), {"action": "store_true", "help": "no progress bars"}),
}


def _add_shared(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, *names: str, **changes: Any
) -> None:
    """Add the shared options ``names`` to a parser or group, in that order. ``changes``
    (another default or help text) apply to a single option."""
    if changes and len(names) != 1:
        raise TypeError("changes to shared options are given one option at a time")
    for name in names:
        flags, keywords = _SHARED[name]
        p.add_argument(*flags, **{**keywords, **changes})


# -- train ----------------------------------------------------------------------------------


def _config_settings(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict:
    """The settings of ``--config FILE`` (if the command has it), then the flags given over
    them: what a new run is built from, or what a resumed run's flags say."""
    settings = dict(base or {})
    if getattr(args, "config", None) is not None:
        settings.update(read_config_file(args.config))
    settings.update(given_settings(args))
    return settings


# what 0 active units means, for whoever meets it first (one epoch on a small sample, say)
_NO_ACTIVE_UNITS = (
    " (none: the guide's means do not vary with the image, so the code says nothing of it yet; "
    "train longer, e.g. --epochs 10)"
)


def _evaluate_and_report(
    vae, config, test, run_dir: Path, num_particles, num_images, progress, history, flag
) -> dict:
    images = test[:num_images] if num_images else test
    started = time.perf_counter()
    scores = evaluate(vae, images, num_particles, seed=config.seed, progress=progress)
    result = scores.to_dict()
    # provenance: what was evaluated, trained how far, by how many processes (batch_size is
    # per process: the global batch is batch_size times processes)
    last = history[-1] if history else {}
    result.update(dataset=config.dataset, seconds=time.perf_counter() - started,
                  epochs=len(history), processes=int(last.get("processes", 1)),
                  batch_size=config.batch_size, seed=config.seed)  # fmt: skip

    def pm(key: str) -> str:
        return f" ± {result[key]:.2f}" if result[key] is not None else ""

    fewer = ""
    if num_images and num_images > len(test):
        fewer = f" (the test set has {len(test)}, not the {num_images} of {flag})"
    # printed before it is written: a result that cannot be saved is still seen
    print(
        f"{config.dataset} test set, {result['num_images']} images{fewer}, K = "
        f"{num_particles}:\n"
        f"  test ELBO        {result['test_elbo']:9.2f}{pm('test_elbo_stderr')} nats/image\n"
        f"  log p(x) (IS)    {result['log_likelihood']:9.2f}{pm('log_likelihood_stderr')} "
        f"nats/image  (NLL {result['nll']:.2f})\n"
        f"  reconstruction   {result['reconstruction_nll']:9.2f} nats/image (-E_q log p(x|z))\n"
        f"  KL(q || p)       {result['kl']:9.2f} nats/image\n"
        f"  active units     {result['active_units']} of {vae.latent_dim}"
        + (_NO_ACTIVE_UNITS if result["active_units"] == 0 and result["num_images"] > 1 else "")
    )
    replaced = _replaced_evaluation(run_dir / EVALUATION_FILE, result)
    try:
        write_json(run_dir / EVALUATION_FILE, result)
    except OutputError as e:
        raise OutputError(f"{e} (the figures above were not saved)") from None
    print(f"written to {run_dir / EVALUATION_FILE}{replaced}")
    return result


def _replaced_evaluation(path: Path, result: dict) -> str:
    """Words for an earlier evaluation of other settings that ``result`` replaces."""
    try:
        old = json.loads(path.read_text())
        before = (int(old["num_particles"]), int(old["num_images"]))
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if before == (result["num_particles"], result["num_images"]):
        return ""
    return f", replacing the evaluation of K = {before[0]} on {before[1]} images"


def write_plots(
    vae, history, image_shape, test_images, test_labels, out_dir: Path, class_names=None
) -> None:
    """Every picture of a run: samples, reconstructions, latent scatter, interpolations,
    training curves, and the manifold for a 2-D latent space."""
    _save(samples_figure(vae, image_shape), out_dir / "samples.png")
    originals = test_images[:32]
    _save(
        reconstructions_figure(originals, vae.reconstruct(originals), image_shape),
        out_dir / "reconstructions.png",
    )
    _save(
        latent_scatter_figure(vae, test_images, test_labels, class_names),
        out_dir / "latent_scatter.png",
    )
    if len(test_images) >= 2:
        pairs = test_images[: 2 * min(6, len(test_images) // 2)].reshape(-1, 2, *vae.event_shape)
        _save(interpolation_figure(vae, pairs, image_shape), out_dir / "interpolation.png")
    if history:
        _save(metrics_figure(history), out_dir / "training_curves.png")
    if vae.latent_dim == 2:
        _save(manifold_figure(vae, image_shape), out_dir / "manifold.png")


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a VAE and write a run folder",
        description="Train a VAE with Pyro's SVI; write config, checkpoint, "
        "metrics, a final evaluation and pictures into a run folder.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a JSON or TOML file of TrainConfig's fields (a run's config.json, "
        "say); the flags given override them",
    )
    add_config_arguments(p)
    _add_run_arguments(p.add_argument_group("run folder and final evaluation"))
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="train in N processes on this machine, each on its slice of every batch "
        "(--batch-size is per process; with --device cuda, one GPU a process): torchrun's "
        "launch, started for you (default 1)",
    )
    p.set_defaults(func=_cmd_train)


def _add_run_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--out", help="run folder (default runs/DATASET-TIME)")
    g.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR; flags given must match its config, "
        "except --epochs (the total, above the epochs done), --device and --data-dir",
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
    _add_shared(g, "no_progress")
    g.add_argument("--no-plots", action="store_true", help="do not write the pictures")
    g.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log to RUN/tensorboard: the training ELBO of every step, the validation "
        "ELBO, samples and reconstructions of every epoch (needs the tensorboard package)",
    )


def _cmd_train(args: argparse.Namespace) -> int:
    _check_count(args.eval_particles, "--eval-particles")
    _check_count(args.eval_images, "--eval-images", low=0)
    if args.resume and args.config:
        raise ConfigError("a resumed run keeps its own config; give --resume without --config")
    given = _config_settings(args)
    # a line an epoch on stderr, and the bar too on a terminal (fit decides); in a pipe or a
    # log file (CI, nohup, SLURM) the lines alone
    progress = not args.no_progress
    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise CheckpointError("give the run folder once: --resume RUN_DIR (without --out)")
    if not args.resume:
        TrainConfig(**given).validate()  # before any folder or data is touched
    if _processes(args, given) > 1 and not distributed.launched():
        return distributed.start_processes(args.processes, args.argv)
    # The run folder's lock (on rank 0) outlives the process group: the processes leave the
    # group together when training is done, and rank 0 then evaluates and draws on its own.
    with contextlib.ExitStack() as stack:
        with distributed.process_group() as world, distributed.partner_failures(world):
            result, run_dir = _train_in_group(args, given, progress, world, stack)
        if not world.is_main:  # rank 0 evaluates, reports and draws
            return 0
        last = result.history[-1]
        which, score = held_out_elbo(last)
        print(
            f"epoch {last['epoch']}: train ELBO {last['train_elbo']:.2f}, "
            f"{which} ELBO {score:.2f} nats/image, {last['seconds']:.0f} s of training"
        )
        _evaluate_and_report(
            result.vae,
            result.config,
            result.test_images,
            run_dir,
            args.eval_particles,
            args.eval_images,
            progress and _progress(),
            result.history,
            "--eval-images",
        )
        if not args.no_plots:
            write_plots(result.vae, result.history, result.image_shape, result.test_images,
                        result.test_labels, run_dir, result.class_names)  # fmt: skip
    return 0


def _processes(args: argparse.Namespace, given: dict[str, Any]) -> int:
    """``--processes``, checked against the machine, and against torchrun's world when a
    process of its launch (ours or the user's) reads it."""
    _check_count(args.processes, "--processes")
    if distributed.launched():
        size = int(os.environ["WORLD_SIZE"])
        if args.processes not in (1, size):
            raise ConfigError(
                f"--processes {args.processes} under torchrun, which started {size}; "
                "give one or the other"
            )
    elif args.processes > 1 and str(given.get("device", "")).startswith("cuda"):
        gpus = torch.cuda.device_count()
        if args.processes > gpus:
            raise ConfigError(
                f"--processes {args.processes} with --device cuda needs a GPU each; "
                f"this machine has {gpus}"
            )
    return args.processes


def _train_in_group(args, given, progress, world, stack) -> tuple[TrainResult, Path]:
    """``fit`` in every process of the run; rank 0 holds the run folder (on ``stack``)."""
    # under torchrun, rank 0 holds and writes the run folder, and reads it for the others
    data, config, run_dir = None, None, Path(args.resume or "")
    if args.resume:
        distributed.enter_on_main(world, stack, lambda: locked_folder(run_dir))
        saved = distributed.from_main(world, lambda: TrainConfig.from_dict(
            load_checkpoint(run_dir / CHECKPOINT_FILE)["config"]))  # fmt: skip
        config = dataclasses.replace(saved, **given)
    else:
        config = TrainConfig(**given)
        stamp = distributed.from_main(world, lambda: time.strftime("%Y%m%d-%H%M%S"))
        run_dir = Path(args.out or f"runs/{Path(config.dataset).stem}-{stamp}")
        distributed.enter_on_main(world, stack, lambda: locked_folder(run_dir, True))
        distributed.from_main(world, lambda: holds_no_run(run_dir))
        if "dataset" not in given:  # rank 0 first: it may download MNIST, and warns
            data = distributed.main_first(
                world, lambda: _mnist_or_sample(config.data_dir, loud=world.is_main)
            )
            config.dataset = data.name
    if world.is_main:
        print(f"training in {run_dir}")
    log = run_dir / "tensorboard" if args.tensorboard else None
    return fit(config, run_dir, data, bool(args.resume), progress, tensorboard=log), run_dir


# -- evaluate -------------------------------------------------------------------------------


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
        test, _ = _test_images(run, args.data_dir)
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
        )
    return 0


# -- sample ---------------------------------------------------------------------------------


def _add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="picture of samples from the prior",
        description="Decode z ~ N(0, I) and save the mean images as a grid (PNG, or the "
        "format the file name's suffix names).",
    )
    _add_shared(p, "run_dir")
    p.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    _add_shared(p, "seed")
    p.add_argument("--out", help="picture path (default RUN_DIR/samples.png)")
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args: argparse.Namespace) -> int:
    _check_count(args.num, "--num", high=MAX_PICTURES)
    check_seed(args.seed, "--seed")
    out = Path(args.out or Path(args.run_dir) / "samples.png")
    _picture_format(out)
    _not_another_run(out.parent, args.run_dir)
    run = load_run(args.run_dir)
    with _lock_for_file(out):
        _save(samples_figure(run.vae, run.image_shape, args.num, args.seed), out)
    return 0


# -- reconstruct ----------------------------------------------------------------------------


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


# -- plot -----------------------------------------------------------------------------------


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


# -- posterior ------------------------------------------------------------------------------


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


# -- the estimator study --------------------------------------------------------------------

# flags of train that the study does not take, with the reason it gives
_STUDY_REFUSES = {
    "estimator": "compare-estimators takes --estimators (a list), not --estimator",
    "resume": "compare-estimators cannot resume a study; start a new one with another --out",
    "objective": "compare-estimators trains every estimator with objective elbo, K = 1 (the "
    "score-function estimators need it); drop --objective",
    "num_particles": "compare-estimators trains every estimator with objective elbo, K = 1 (the "
    "score-function estimators need it); drop -K",
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
        "chosen epochs of a reparam run); then train one model per estimator "
        "with the same seed and budget, objective elbo, K = 1. Writes CSV/JSON tables and "
        "figures into a new folder.",
    )
    add_config_arguments(p, study=True)
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
        help="measure gradients after these epochs of the reparam run, each from 0 (at "
        "initialization; the default) to --epochs",
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
    p.add_argument("--out", default="estimator-study", help="a new folder (estimator-study)")
    _add_shared(p, "no_progress")
    # refused with a reason (see _STUDY_REFUSES), hidden from --help
    hidden = argparse.SUPPRESS
    p.add_argument("--estimator", help=hidden)
    p.add_argument("--resume", help=hidden)
    p.add_argument("--objective", help=hidden)
    _add_shared(p, "num_particles", help=hidden)
    p.add_argument("--eval-particles", help=hidden)
    p.add_argument("--eval-images", help=hidden)
    p.add_argument("--no-plots", action="store_true", help=hidden)
    p.set_defaults(func=_cmd_compare_estimators)


def _cmd_compare_estimators(args: argparse.Namespace) -> int:
    from pyro_vae.compare import compare_estimators

    for dest, message in _STUDY_REFUSES.items():
        if getattr(args, dest, None) not in (None, False):
            raise ConfigError(message)
    config = TrainConfig(**_config_settings(args, {"objective": "elbo"}))
    config.validate()
    _check_count(args.num_estimates, "--num-estimates", low=2)
    _check_count(args.reference_estimates, "--reference-estimates", low=2)
    bad = [e for e in args.gradient_epochs if not 0 <= e <= config.epochs]
    if bad:
        raise ConfigError(
            f"--gradient-epochs {' '.join(map(str, bad))} outside 0..{config.epochs} (--epochs): "
            "gradients are measured at initialization (0) or after an epoch of the reparam run"
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
            f"{estimator:<22} {held_out_elbo(last)[0]} ELBO {held_out_elbo(last)[1]:8.2f} after "
            f"{last['step']} steps, "
            f"{last['seconds']:.0f} s"
        )
    print(f"tables and figures in {out_dir}")
    return 0


# -- the parser and main --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-vae`` parser; the sub-commands in the order ``--help`` lists them."""
    parser = _Parser(prog="pyro-vae", description="Variational autoencoders in Pyro.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_sample_parser(sub)
    _add_plot_parser(sub)
    _add_posterior_parser(sub)
    _add_reconstruct_parser(sub)
    _add_compare_estimators_parser(sub)
    return parser


_SHARED_ERROR_WAIT = 60.0  # seconds a process beyond rank 0 waits for rank 0 to end the run


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that the same clean-up runs as for Ctrl-C."""


def _terminate(signum, frame):
    raise _Terminated


class _Guarded(io.TextIOBase):
    """A text stream that goes quiet, instead of raising, once its reader has gone away.

    ``pyro-vae train ... | head -1`` closes the pipe after one line; the run still finishes
    and writes its folder, and Python's final flush finds ``/dev/null`` instead of a broken
    pipe.
    """

    def __init__(self, stream) -> None:
        self.stream = stream
        self.gone = False

    def _went_away(self) -> None:
        self.gone = True
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)

    # A closed pipe, or stdout on a full disk (`> /dev/full`): the output is lost either way,
    # the work and its files are not.
    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
            except OSError:
                self._went_away()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except OSError:
                self._went_away()

    def isatty(self) -> bool:
        return not self.gone and self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return self.stream.encoding


def _failed(
    prefix: str, what: str, status: int = 1, quiet: bool = False, cause: bool = True
) -> int:
    """Say ``what`` ended the command in one line on stderr (unless ``quiet``); return the
    exit status.

    In a process of a torchrun launch, the line also goes to the file where torchrun's
    failure report looks for the cause (``TORCHELASTIC_ERROR_FILE``), so that the report
    names it instead of pointing to a traceback; ``cause`` is false for what only follows
    from another process's failure (a lost partner, the launcher's SIGTERM).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # ending: a SIGTERM now ends it at once
    line = f"{prefix}: {what}"
    # The run's one line: under pyro-vae's own launcher, the launcher prints it from the
    # processes' reports (two processes printing race and interleave); under plain torchrun, a
    # process beyond rank 0 keeps a consequence to itself (rank 0 says the run stopped).
    if distributed.reports_to_launcher() or (distributed.several() and _rank() > 0 and not cause):
        quiet = True
    if not quiet:
        print(line, file=sys.stderr)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path and distributed.launched():
        info = {"timestamp": str(int(time.time())), "cause": cause, "line": line}
        with contextlib.suppress(OSError):
            Path(path).write_text(json.dumps({"message": {"message": what, "extraInfo": info}}))
    return status


def _rank() -> int:
    """This process's rank in a torchrun launch (0 outside one)."""
    return int(os.environ.get("RANK", 0)) if distributed.launched() else 0


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _open_or_devnull(stream):
    # a stream closed before we started (`pyro-vae ... >&-`) is None in Python
    return stream if stream is not None else open(os.devnull, "w")  # noqa: SIM115


def _reported(args: argparse.Namespace, prefix: str) -> int:
    """The command's exit status; what stopped it reported in one line (``_failed``)."""
    try:
        if args.command != "train" and distributed.launched():
            if int(os.environ["WORLD_SIZE"]) > 1:
                raise ConfigError(f"only train runs in several processes; run "
                                  f"{args.command} without torchrun")  # fmt: skip
        return args.func(args)
    except PyroVAEError as e:
        if not e.shared:
            cause = not getattr(e, "elsewhere", False)
            return _failed(prefix, f"error: {_one_line(e)}", cause=cause)
        # An error every process raised alike is the run's, not a process's: reported once,
        # without a rank, by rank 0. Under plain torchrun the others wait for rank 0 to say it
        # (torchrun stops them once it has): gone first, they would have torchrun stop rank 0
        # before it could.
        if _rank() > 0 and distributed.several() and not distributed.reports_to_launcher():
            _failed(f"pyro-vae {args.command}", f"error: {_one_line(e)}", quiet=True)
            time.sleep(_SHARED_ERROR_WAIT)
            return 1
        return _failed(f"pyro-vae {args.command}", f"error: {_one_line(e)}", quiet=_rank() > 0)
    except torch.cuda.OutOfMemoryError:
        return _failed(prefix, "error: out of GPU memory; try a smaller --batch-size or -K")
    except MemoryError:
        limit = binding_limit()
        where = f" ({limit.describe()})" if limit is not None else ""
        return _failed(prefix, f"error: out of memory{where}; try a smaller --batch-size or -K")
    except RuntimeError as e:
        if "allocate" not in str(e) and "out of memory" not in str(e):
            raise  # a bug: keep the traceback
        return _failed(prefix, f"error: out of memory ({_one_line(e)[:160]}); try a "
                       "smaller --batch-size or -K")  # fmt: skip
    except OSError as e:  # the machine's, not the code's: a vanished file, a dead disk
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return _failed(prefix, f"error: {e.strerror or _one_line(e)}{where}")
    except _Terminated:
        return _failed(prefix, "terminated", 143, cause=False)
    except KeyboardInterrupt:
        return _failed(prefix, "interrupted", 130, cause=False)


def main(argv: list[str] | None = None) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = _Guarded(_open_or_devnull(stdout))
    sys.stderr = _Guarded(_open_or_devnull(stderr))
    main_thread = threading.current_thread() is threading.main_thread()
    on_term = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    prefix = "pyro-vae"
    try:
        try:
            args = build_parser().parse_args(argv)  # exits 0 for --help, 2 for a bad line
            args.argv = list(sys.argv[1:] if argv is None else argv)  # for train --processes
            prefix = f"pyro-vae {args.command}" + (f" (rank {_rank()})" if _rank() > 0 else "")
            return _reported(args, prefix)
        # a signal while the arguments were read, or while an error was being reported
        except _Terminated:
            return _failed(prefix, "terminated", 143, cause=False)
        except KeyboardInterrupt:
            return _failed(prefix, "interrupted", 130, cause=False)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, on_term)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        sys.stdout, sys.stderr = stdout, stderr


if __name__ == "__main__":
    sys.exit(main())
