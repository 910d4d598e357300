"""What the ``pyro-vae`` commands share: the checks made before any work, the options several
commands take, the run's data and test images, the final evaluation's report and the
pictures of a run (:mod:`pyro_vae.cli`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from pyro_vae.checkpoint import atomic_write, write_json
from pyro_vae.config import given_settings, read_config_file
from pyro_vae.cvae import ConditionalVAE
from pyro_vae.data import (
    DataFallbackWarning,
    ImageData,
    load_dataset,
)
from pyro_vae.errors import CheckpointError, ConfigError, OutputError
from pyro_vae.evaluate import evaluate
from pyro_vae.m2 import SemiSupervisedVAE
from pyro_vae.plots import (
    class_by_style_figure,
    codes_figure,
    completions_figure,
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
    locked_folder,
)
from pyro_vae.splits import check_same_data, run_images

EVALUATION_FILE = "evaluation.json"


MAX_PICTURES = 10_000  # images in one sample grid


def _progress() -> bool:
    return sys.stderr.isatty()


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
    """The run's test images, binarized exactly as during training (their labels are the
    data's ``test_labels``)."""
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


# what 0 active units means, for whoever meets it first (one epoch on a small sample, say)
_NO_ACTIVE_UNITS = (
    " (none: the guide's means do not vary with the image, so the code says nothing of it yet; "
    "train longer, e.g. --epochs 10)"
)


def _evaluate_and_report(
    vae,
    config,
    test,
    run_dir: Path,
    num_particles,
    num_images,
    progress,
    history,
    flag,
    labels=None,
) -> dict:
    images = test[:num_images] if num_images else test
    # the test labels score M2's classifier, and are a label-conditioned CVAE's conditions
    takes = isinstance(vae, SemiSupervisedVAE) or vae.needs_labels
    labels = labels[: len(images)] if labels is not None and takes else None
    started = time.perf_counter()
    scores = evaluate(vae, images, num_particles, seed=config.seed, progress=progress,
                      labels=labels)  # fmt: skip
    result = scores.to_dict()
    # provenance: what was evaluated, trained how far, by how many processes (batch_size is
    # per process: the global batch is batch_size times processes)
    last = history[-1] if history else {}
    result.update(dataset=config.dataset, seconds=time.perf_counter() - started,
                  epochs=len(history), processes=int(last.get("processes", 1)),
                  batch_size=config.batch_size, seed=config.seed)  # fmt: skip

    def pm(key: str) -> str:
        return f" ± {result[key]:.2f}" if result[key] is not None else ""

    cvae = isinstance(vae, ConditionalVAE)
    fewer = ""
    if num_images and num_images > len(test):
        fewer = f" (the test set has {len(test)}, not the {num_images} of {flag})"
    # printed before it is written: a result that cannot be saved is still seen
    print(
        f"{config.dataset} test set, {result['num_images']} images{fewer}, K = "
        f"{num_particles}:\n"
        f"  test ELBO        {result['test_elbo']:9.2f}{pm('test_elbo_stderr')} nats/image\n"
        f"  {'log p(x|c) (IS)' if cvae else 'log p(x) (IS)  '}  {result['log_likelihood']:9.2f}"
        f"{pm('log_likelihood_stderr')} "
        f"nats/image  (NLL {result['nll']:.2f})\n"
        f"  reconstruction   {result['reconstruction_nll']:9.2f} nats/image (-E_q log p(x|z))\n"
        f"  KL(q || p)       {result['kl']:9.2f} nats/image\n"
        f"  active units     {result['active_units']} of {vae.latent_dim}"
        + (_NO_ACTIVE_UNITS if result["active_units"] == 0 and result["num_images"] > 1 else "")
        + (f"\n  label KL         {result['label_kl']:9.2f} nats/image (KL(q(y|x) || p(y)), "
           "in the KL above)" if result["label_kl"] is not None else "")
        + (f"\n  accuracy         {result['accuracy']:9.4f} (the classifier q(y|x))"
           if result["accuracy"] is not None else "")
        + (f"\n  baseline NN      {result['baseline_nll']:9.2f} nats/image (its cross-entropy "
           "of the hidden pixels)" if result["baseline_nll"] is not None else "")
    )  # fmt: skip
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
    training curves, the manifold for a 2-D latent space, the codes of a discrete one; a
    CVAE's samples (a label's) or completions (of quadrants), and its training curves."""
    if isinstance(vae, ConditionalVAE):
        picture = (samples_figure(vae, image_shape, 10 * vae.classes) if vae.labelled
                   else completions_figure(vae, test_images[:10], image_shape))  # fmt: skip
        _save(picture, out_dir / "samples.png")
        if history:
            _save(metrics_figure(history), out_dir / "training_curves.png")
        return
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
    if hasattr(vae, "class_by_style"):  # M2: a style is decoded with a class
        _save(class_by_style_figure(vae, test_images, image_shape), out_dir / "class_by_style.png")
    elif len(test_images) >= 2:
        pairs = test_images[: 2 * min(6, len(test_images) // 2)].reshape(-1, 2, *vae.event_shape)
        _save(interpolation_figure(vae, pairs, image_shape), out_dir / "interpolation.png")
    if history:
        _save(metrics_figure(history), out_dir / "training_curves.png")
    if vae.latent_dim == 2 and not vae.latent.discrete and not hasattr(vae, "class_by_style"):
        _save(manifold_figure(vae, image_shape), out_dir / "manifold.png")
    if vae.latent.discrete:
        _save(codes_figure(vae, test_images, test_labels, class_names), out_dir / "codes.png")


def _config_settings(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict:
    """The settings of ``--config FILE`` (if the command has it), then the flags given over
    them: what a new run is built from, or what a resumed run's flags say."""
    settings = dict(base or {})
    if getattr(args, "config", None) is not None:
        settings.update(read_config_file(args.config))
    settings.update(given_settings(args))
    return settings
