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
from pathlib import Path
from typing import Any

import torch

from pyro_vae import distributed
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli_common import (
    _add_shared,
    _check_count,
    _config_settings,
    _evaluate_and_report,
    _mnist_or_sample,
    _progress,
    write_plots,
)
from pyro_vae.commands import (
    _add_compare_estimators_parser,
    _add_evaluate_parser,
    _add_plot_parser,
    _add_posterior_parser,
    _add_reconstruct_parser,
    _add_sample_parser,
)
from pyro_vae.config import (
    TrainConfig,
    add_config_arguments,
)
from pyro_vae.errors import CheckpointError, ConfigError, PyroVAEError
from pyro_vae.memory import binding_limit
from pyro_vae.runfolder import (
    CHECKPOINT_FILE,
    TrainResult,
    held_out_elbo,
    holds_no_run,
    locked_folder,
)
from pyro_vae.train import fit

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        # no abbreviations: "--estimator" must not silently mean "--estimators"
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# -- checks made before any work ------------------------------------------------------------


# -- options several sub-commands share -----------------------------------------------------


# -- train ----------------------------------------------------------------------------------


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
        right = last.get(f"{which[:5]}_accuracy")  # an M2 run's classifier
        shown = "" if right is None else f", {which} accuracy {right:.4f}"
        print(
            f"epoch {last['epoch']}: train ELBO {last['train_elbo']:.2f}, "
            f"{which} ELBO {score:.2f} nats/image{shown}, {last['seconds']:.0f} s of training"
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
            result.test_labels,
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
        for name in ("model", "condition"):  # before their settings are checked
            if given.get(name, getattr(saved, name)) != getattr(saved, name):
                raise CheckpointError(f"{run_dir} is a run of {name} {getattr(saved, name)!r}; "
                                      f"resume it without --{name}, or start a new run "
                                      "folder")  # fmt: skip
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


# -- sample ---------------------------------------------------------------------------------


# -- reconstruct ----------------------------------------------------------------------------


# -- plot -----------------------------------------------------------------------------------


# -- posterior ------------------------------------------------------------------------------


# -- the estimator study --------------------------------------------------------------------


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
