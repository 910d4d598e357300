"""The settings of a run: :class:`TrainConfig`, one field per setting.

Each field carries, as dataclass metadata (:func:`setting`), what the command line needs to
offer it: the help text, the choices, the metavar, how many values, and the ``--help`` group.
``pyro-vae train``'s flags are generated from the fields (:func:`add_config_arguments`), and
``pyro-vae train --config FILE`` reads the same fields from a JSON or TOML file
(:func:`read_config_file`), so a setting is written once, here.

A setting whose default depends on another is left ``None`` until :meth:`TrainConfig.resolved`
fills it in, once, before a run starts; the run's ``config.json`` records what was chosen.
Today that is the objective, which follows the estimator: the analytic-KL ELBO for the
reparameterized estimator, the plain ELBO (the only one they can estimate) for the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pyro_vae.checks import is_whole, require_choice, require_flag, require_whole
from pyro_vae.cvae import CONDITIONS, check_cvae_settings
from pyro_vae.data import (
    BINARIZATIONS,
    DATASETS,
    check_data_settings,
    default_binarize,
    is_named_dataset,
)
from pyro_vae.discrete import check_enumerable, check_temperature
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.estimators import ESTIMATORS, RELAXED, check_estimator
from pyro_vae.isolation import check_seed
from pyro_vae.latents import DEFAULT_CATEGORIES, LATENTS, latent_space
from pyro_vae.m2 import MODELS, check_m2_settings
from pyro_vae.networks import ACTIVATIONS, ARCHITECTURES, LIKELIHOODS, check_network_settings
from pyro_vae.objectives import OBJECTIVES, check_kl_weight, check_objective
from pyro_vae.optim import LR_SCHEDULES, OPTIMIZERS, check_optimizer_settings
from pyro_vae.priors import ALL_PRIORS, DEFAULT_PRIOR, PRIOR_SPACES, check_prior, resolve_latent

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10: JSON config files only
    tomllib = None

__all__ = [
    "RESUMABLE_FIELDS",
    "TrainConfig",
    "add_config_arguments",
    "check_device",
    "config_arguments",
    "default_objective",
    "read_config_file",
]

# Settings that may change when a run is resumed; every other field must match.
RESUMABLE_FIELDS = ("epochs", "device", "data_dir")
# Fields that configs of earlier versions stored and this one ignores: the progress display
# (now an argument of fit) and the note of an MNIST fallback (now a warning; the dataset field
# says which data were used).
RETIRED_FIELDS = ("progress", "data_fallback")
_DEVICE = re.compile(r"^(cpu|cuda)(:[0-9]+)?$")
MAX_MCEM_TRANSITIONS = 1000
GROUPS = ("data", "model", "objective and optimizer")


def check_device(device: Any) -> None:
    """Raise :class:`ConfigError` unless ``device`` is ``cpu``, ``cuda`` or ``cuda:N`` here."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but CUDA is not available here")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} asked for, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )


def default_objective(estimator: str) -> str:
    """The objective a run of ``estimator`` trains when none is given: the analytic-KL ELBO
    (less variance) for the reparameterized estimator, the importance-weighted bound for
    VIMCO, else the ELBO, the only objective the score-function estimators and STL can
    estimate."""
    if estimator == "reparam":
        return "elbo-analytic-kl"
    return "iwae" if estimator == "vimco" else "elbo"


def _dataset_argument(value: str) -> str:
    """--dataset: a built-in name, or the path of a folder or array that is there."""
    if is_named_dataset(value) or os.path.isdir(value):
        return value
    if value.lower().endswith((".npy", ".npz")) and os.path.isfile(value):
        return value
    raise argparse.ArgumentTypeError(
        f"invalid choice: {value!r} (choose from {', '.join(DATASETS)}, or give a folder of "
        "PNG/JPEG images or a .npy/.npz file that exists)"
    )


def _square_or_hw(size: Sequence[int]) -> tuple[int, ...]:
    """--image-size N (square) or H W."""
    return tuple(size) * 2 if len(size) == 1 else tuple(size)


def setting(
    default: Any,
    group: str,
    help: str | None = None,
    *,
    flags: tuple[str, ...] | None = None,
    type: Callable | None = None,
    choices: Sequence[str] | None = None,
    nargs: str | None = None,
    metavar: str | None = None,
    study: bool = True,
    convert: Callable = lambda value: value,
) -> Any:
    """A :class:`TrainConfig` field with what its flag needs. ``help`` may name ``{default}``;
    ``study``: the estimator study (``compare-estimators``) takes the flag too; ``convert``
    turns the flag's value into the field's (a list of numbers into a tuple)."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}")
    cli = dict(group=group, help=help, flags=flags, type=type, choices=choices, nargs=nargs,
               metavar=metavar, study=study, convert=convert)  # fmt: skip
    return field(default=default, metadata={"cli": cli})


@dataclass
class TrainConfig:
    """Everything a run needs, saved with it. Defaults: the 784-400-20 MNIST VAE.

    :meth:`validate` checks every setting (each module's own checks, asked in one place); a
    ``VAE(...)`` built by hand refuses exactly what a config refuses. ``None`` for
    ``objective`` follows the estimator (:func:`default_objective`; :meth:`resolved`).
    """

    # data (pyro_vae.data)
    dataset: str = setting(
        "mnist", "data",
        "{datasets} (default {default}; if MNIST is missing and cannot be downloaded, the "
        "bundled mnist-sample is used, loudly), or a folder of PNG/JPEG images (class "
        "sub-folders become labels; train/ and test/ sub-folders the split) or a .npy/.npz "
        "array of images (see pyro_vae.imagefiles)",
        type=_dataset_argument, metavar="NAME|PATH",
    )  # fmt: skip
    data_dir: str | None = setting(  # else $PYRO_VAE_DATA_DIR, else ~/.cache/pyro_vae/data
        None, "data", "data root (default $PYRO_VAE_DATA_DIR, else ~/.cache/pyro_vae/data)"
    )
    image_size: tuple[int, int] | None = setting(  # resize a folder's or array's images
        None, "data", "resize the images of a folder or array: N (square) or H W",
        type=int, nargs="+", metavar="N", convert=_square_or_hw,
    )  # fmt: skip
    binarize: str | None = setting(  # None: dynamic for bernoulli (Burda et al. 2015), else none
        None, "data", "default dynamic for bernoulli, else none", choices=BINARIZATIONS
    )
    valid_fraction: float = setting(  # of the training images, held out to score each epoch
        0.1, "data",
        "of the training images, held out to score each epoch (default {default}; 0: score "
        "on the test set, as papers that train on all 60,000 MNIST images do)",
        type=float,
    )  # fmt: skip
    split_seed: int = setting(  # fixed, so runs of any seed share the validation split
        0, "data", "draws the validation split (default {default}; runs of any --seed share it)",
        type=int,
    )  # fmt: skip
    train_size: int | None = setting(  # quick runs, tests
        None, "data", "use only the first N training images", type=int
    )
    # networks (pyro_vae.networks)
    arch: str = setting(  # custom: hand-written networks passed to fit(vae=...)
        "mlp", "model",
        "default {default}; conv: stride-2 convolutions and transposed convolutions sized "
        "from the images (pyro_vae.networks)",
        choices=ARCHITECTURES,
    )  # fmt: skip
    conv_channels: tuple[int, ...] = setting(
        (32, 64), "model",
        "channels of the conv encoder's stride-2 convolutions, mirrored in the decoder "
        "(default {default})",
        type=int, nargs="+", metavar="C", convert=tuple,
    )  # fmt: skip
    latent_dim: int = setting(20, "model", "default {default}", type=int)
    hidden_sizes: tuple[int, ...] = setting(  # dense layers (after the convolutions for conv)
        (400,), "model",
        "encoder widths, mirrored in the decoder; for conv, the dense layers after the "
        "convolutions (default {default}; none: a linear encoder and decoder)",
        type=int, nargs="*", metavar="H", convert=tuple,
    )  # fmt: skip
    activation: str = setting(
        "relu", "model", "default {default}; leaky-relu has slope 0.3, as in the ARM papers",
        choices=tuple(ACTIVATIONS),
    )  # fmt: skip
    center_input: bool = setting(  # DisARM's "linear" and "nonlinear" models centre x
        False, "model", "the encoder sees each image less the training images' mean",
    )  # fmt: skip
    likelihood: str = setting("bernoulli", "model", "default {default}", choices=LIKELIHOODS)
    # the latent space and its prior p(z) (pyro_vae.latents, pyro_vae.priors)
    latent: str | None = setting(  # None: the prior's space (gaussian for the default prior)
        None, "model",
        "the latent space (default: the prior's; gaussian): sphere, or discrete codes of "
        "--latent-dim binary units (bernoulli) or --latent-dim groups of --categories classes "
        "(categorical), trained with the discrete estimators",
        choices=LATENTS,
    )  # fmt: skip
    categories: int | None = setting(  # C of a categorical latent
        None, "model", "classes of each group of a categorical latent (default 10)", type=int,
        metavar="C",
    )  # fmt: skip
    prior: str | None = setting(  # None: the latent space's own (DEFAULT_PRIOR)
        None, "model",
        "p(z) (default normal; hyperspherical for --latent sphere, bernoulli for --latent "
        "bernoulli, uniform for --latent categorical): a learned mixture of Gaussians, the "
        "VampPrior, the uniform distribution on the unit sphere with a Power Spherical guide "
        "(an S-VAE); for a discrete latent learned logits (bernoulli, categorical) or uniform",
        choices=ALL_PRIORS,
    )  # fmt: skip
    prior_components: int | None = setting(  # K of mixture (default 10) and vamp (default 500)
        None, "model",
        "Gaussians of the mixture prior (default 10) or pseudo-inputs of the VampPrior "
        "(default 500)",
        type=int, metavar="K",
    )  # fmt: skip
    # objective and gradient estimator (pyro_vae.objectives, pyro_vae.estimators)
    objective: str | None = setting(
        None, "objective and optimizer",
        "default elbo-analytic-kl (the ELBO with its KL in closed form: less variance) for "
        "--estimator reparam, elbo for the others",
        choices=OBJECTIVES, study=False,
    )  # fmt: skip
    estimator: str | None = setting(  # None: the latent space's (LatentSpace.default_estimator)
        None, "objective and optimizer",
        "the gradient estimator (default reparam; for a discrete latent disarm (bernoulli) or "
        "gumbel (categorical))",
        choices=ESTIMATORS, study=False,
    )  # fmt: skip
    baseline_beta: float = setting(
        0.9, "objective and optimizer",
        "decay of the REINFORCE running-average baseline (default {default})", type=float,
    )  # fmt: skip
    baseline_learning_rate: float = setting(
        1e-2, "objective and optimizer",
        "Adam learning rate of the nn baseline (default {default})", type=float,
    )  # fmt: skip
    num_particles: int = setting(  # K: samples per image for the training objective
        1, "objective and optimizer", "samples per image (default {default})",
        flags=("-K", "--num-particles"), type=int, study=False,
    )  # fmt: skip
    kl_weight: float = setting(  # beta: the KL's weight in the training objective (beta-VAE)
        1.0, "objective and optimizer",
        "the KL's weight in the training objective, a beta-VAE (default 1); the evaluation "
        "always reports the true ELBO",
        type=float, metavar="BETA", study=False,
    )  # fmt: skip
    kl_warmup: int = setting(  # epochs of a linear ramp of the KL weight from 0 to kl_weight
        0, "objective and optimizer",
        "ramp the KL weight linearly from 0 to --kl-weight over EPOCHS epochs",
        type=int, metavar="EPOCHS", study=False,
    )  # fmt: skip
    mcem_transitions: int = setting(  # the E-step's length (pyro_vae.objectives.MonteCarloEM)
        3, "objective and optimizer",
        "objective mcem: HMC transitions a training step, each 10 leapfrog steps; more bring "
        "the chains nearer the posterior (default {default})",
        type=int, metavar="N", study=False,
    )  # fmt: skip
    # optimizer and schedule (pyro_vae.optim)
    optimizer: str = setting(
        "adam", "objective and optimizer",
        "adam (the default) or adagrad, Kingma & Welling's (2013) optimizer", choices=OPTIMIZERS,
    )  # fmt: skip
    learning_rate: float = setting(
        1e-3, "objective and optimizer", "learning rate (default {default})",
        flags=("--lr", "--learning-rate"), type=float,
    )  # fmt: skip
    lr_schedule: str = setting(  # iwae: Burda et al.'s 3^i epochs at 10^(-i/7) times the rate
        "constant", "objective and optimizer",
        "constant (the default) or iwae: Burda et al. (2015), 3^i epochs at 10^(-i/7) times "
        "--lr for i = 0..7",
        choices=LR_SCHEDULES,
    )  # fmt: skip
    adam_eps: float = setting(  # Burda et al. (2015) use 1e-4
        1e-8, "objective and optimizer", "Adam's epsilon (default {default})", type=float
    )
    clip_norm: float | None = setting(  # Pyro's clip_args
        None, "objective and optimizer", "clip each parameter's gradient norm", type=float
    )
    weight_decay: float = setting(  # times the parameters, added to the batch-summed gradient
        0.0, "objective and optimizer",
        "times each parameter, added to its batch-summed gradient (default 0); batch size / "
        "training images is a N(0, I) prior on the parameters",
        type=float,
    )  # fmt: skip
    epochs: int = setting(10, "objective and optimizer", "default {default}", type=int)
    batch_size: int = setting(128, "objective and optimizer", "default {default}", type=int)
    # where and how it runs
    seed: int = setting(
        0, "objective and optimizer", "default {default} (0 to 2**32 - 1)", type=int
    )
    device: str = setting("cpu", "objective and optimizer", "cpu, cuda or cuda:N (default cpu)")
    jit: bool = setting(False, "objective and optimizer", "Pyro's JIT-compiled ELBOs")
    temperature: float | None = setting(  # of the relaxations; None: 1 for gumbel, straight-through
        None, "objective and optimizer",
        "of the Gumbel-softmax relaxation, for estimators gumbel and straight-through "
        "(default 1)",
        type=float, metavar="TAU",
    )  # fmt: skip
    temperature_anneal: float | None = setting(  # r of max(min, tau exp(-r step)), Jang et al.
        None, "objective and optimizer",
        "anneal the temperature as max(--temperature-min, TAU exp(-RATE step)), Jang et al.'s "
        "schedule (they use 1e-5 a step, from 1 to 0.5); default: fixed",
        type=float, metavar="RATE",
    )  # fmt: skip
    temperature_min: float = setting(
        0.5, "objective and optimizer", "the annealed temperature's floor (default {default})",
        type=float, metavar="TAU",
    )  # fmt: skip
    # labels in the model (pyro_vae.m2)
    model: str = setting(
        "vae", "model",
        "vae (the default); m2: Kingma et al.'s (2014) semi-supervised VAE, the label "
        "observed on --labels training images and a latent on the rest, --estimator the "
        "label's (default enumerate); cvae: Sohn et al.'s (2015) conditional VAE, on "
        "--condition",
        choices=MODELS, study=False,
    )  # fmt: skip
    condition: str | None = setting(  # the CVAE's c (pyro_vae.cvae)
        None, "model",
        "cvae: what p(x|z, c) p(z|c) is conditioned on: label (the class), or quadrants-1, "
        "quadrants-2, quadrants-3 (the visible quadrants of the image; the model completes it)",
        choices=CONDITIONS, study=False,
    )  # fmt: skip
    labels: int | None = setting(  # N of M2's labelled training images, class-balanced
        None, "data", "m2: how many training images keep their label (class-balanced)",
        type=int, metavar="N", study=False,
    )  # fmt: skip
    label_seed: int = setting(  # draws the labelled images; runs of any --seed share them
        0, "data", "m2: draws the labelled images (default {default})", type=int, study=False
    )
    aux_loss: float = setting(  # Kingma et al.'s alpha over N (pyro_vae.m2.aux_scale)
        0.0, "objective and optimizer",
        "m2: Kingma et al.'s classification loss, each labelled image's log q(y|x) weighted "
        "by ALPHA N / N_labelled (default 0: none; they use 0.1)",
        type=float, metavar="ALPHA", study=False,
    )  # fmt: skip

    def __post_init__(self) -> None:
        # Conversions that lose nothing; anything else is left for validate() to name.
        for name in ("hidden_sizes", "conv_channels"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                whole = all(is_whole(v) for v in value)
                setattr(self, name, tuple(int(v) if whole else v for v in value))
        if isinstance(self.image_size, int) and not isinstance(self.image_size, bool):
            self.image_size = (self.image_size, self.image_size)
        elif isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)
        if isinstance(self.dataset, os.PathLike):
            self.dataset = os.fspath(self.dataset)
        if isinstance(self.dataset, str) and not is_named_dataset(self.dataset):
            if os.path.exists(self.dataset):  # the run records where its images are
                self.dataset = os.path.abspath(self.dataset)
        if isinstance(self.data_dir, os.PathLike):
            self.data_dir = os.fspath(self.data_dir)
        if self.binarize is None and isinstance(self.likelihood, str):
            self.binarize = default_binarize(self.likelihood)

    def resolved(self) -> TrainConfig:
        """This config with the defaults that follow other settings filled in (the objective
        follows the estimator, the latent space and the prior each other); ``self`` is not
        changed."""
        filled = {}
        if self.latent is None and (self.prior is None or self.prior in PRIOR_SPACES):
            filled["latent"] = "gaussian" if self.prior is None else PRIOR_SPACES[self.prior]
        latent = filled.get("latent", self.latent)
        estimator = self.estimator
        if estimator is None:
            # the objectives that take no estimator record the default 'reparam'
            takes_none = self.objective in ("wake-sleep", "rws", "mcem")
            own = latent_space(latent).default_estimator if latent in LATENTS else "reparam"
            own = "enumerate" if self.model == "m2" else own  # the label's
            estimator = "reparam" if takes_none else own
            filled["estimator"] = estimator
        if self.objective is None and isinstance(estimator, str):
            filled["objective"] = default_objective(estimator)
        if self.prior is None and latent in DEFAULT_PRIOR:
            filled["prior"] = DEFAULT_PRIOR[latent]
        if self.categories is None and latent == "categorical":
            filled["categories"] = DEFAULT_CATEGORIES
        if self.temperature is None and estimator in RELAXED:
            filled["temperature"] = 1.0
        return dataclasses.replace(self, **filled) if filled else self

    def validate(self, here: bool = True) -> None:
        """Raise :class:`ConfigError` for values of the wrong type, out of range, or settings
        that clash; with ``here``, also a device or a data path this machine does not have.
        The one place a setting is checked: what is built from a config that passed
        (:func:`pyro_vae.build.build_vae`) is not checked again (:meth:`checked`)."""
        self._check(here)
        # a note of the settings that passed, not a setting: a field changed afterwards, or
        # dataclasses.replace, makes a config that checked() says is not checked
        object.__setattr__(self, "_passed", (here, self.to_dict()))

    def checked(self, here: bool = False) -> bool:
        """Whether :meth:`validate` passed on these very settings (with ``here``: on this
        machine's devices and data too)."""
        passed = self.__dict__.get("_passed")
        return passed is not None and (passed[0] or not here) and passed[1] == self.to_dict()

    def _check(self, here: bool) -> None:
        check_data_settings(self.dataset, self.binarize, self.train_size, self.batch_size,
                            self.valid_fraction, self.image_size, here)  # fmt: skip
        check_seed(self.split_seed, "split_seed")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ConfigError(f"data_dir must be a string or None, got {self.data_dir!r}")
        require_choice(self.arch, "arch", ("mlp", "conv", "custom"))
        arch = "mlp" if self.arch == "custom" else self.arch  # custom: the nets are checked
        check_network_settings(  # when the VAE is built
            self.latent_dim, self.hidden_sizes, self.activation, self.likelihood, arch,
            self.conv_channels,
        )  # fmt: skip
        full = self.resolved()
        check_estimator(full.estimator, self.baseline_beta)
        space = resolve_latent(full.latent, full.prior, full.categories)
        check_prior(full.prior, self.prior_components, self.latent_dim, space)
        objective = full.objective
        check_m2_settings(full)
        check_cvae_settings(full)
        refusal = space.refusal(full.estimator) if self.model == "vae" else None
        if refusal and objective not in ("wake-sleep", "rws", "mcem"):  # these take none
            raise ConfigError(refusal)
        if self.model == "vae":  # M2's are checked by check_m2_settings
            check_objective(objective, full.estimator, self.num_particles, self.jit)
        check_temperature(self.temperature, full.estimator, self.temperature_anneal,
                          self.temperature_min)  # fmt: skip
        if full.estimator == "enumerate" and self.model == "vae":
            check_enumerable(self.latent_dim, space.categories)
        check_kl_weight(self.kl_weight, self.kl_warmup, objective, full.estimator)
        if require_whole(self.mcem_transitions, "mcem_transitions") > MAX_MCEM_TRANSITIONS:
            raise ConfigError(  # each is 10 passes of the decoder, every step: a hang, not a run
                f"mcem_transitions must be at most {MAX_MCEM_TRANSITIONS}, got "
                f"{self.mcem_transitions}"
            )
        refusal = space.hmc_refusal("mcem") if objective == "mcem" else None
        if refusal:
            raise ConfigError(refusal)
        check_optimizer_settings(
            self.learning_rate,
            self.baseline_learning_rate,
            self.adam_eps,
            self.clip_norm,
            self.lr_schedule,
            self.optimizer,
            self.weight_decay,
        )
        require_flag(self.center_input, "center_input")
        require_whole(self.epochs, "epochs")
        check_seed(self.seed)
        if here:
            check_device(self.device)
        elif not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ConfigError(f"unknown device {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        d["conv_channels"] = list(self.conv_channels)
        d["image_size"] = list(self.image_size) if self.image_size is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config stored in a run (``config.json`` or a checkpoint), checked.

        :raises CheckpointError: unknown fields, values of the wrong type or out of range.
        """
        if not isinstance(d, dict):
            raise CheckpointError(f"a stored config must be a table of settings, got {d!r}")
        d = {k: v for k, v in d.items() if k not in RETIRED_FIELDS}
        # runs from before the validation split scored each epoch on the test set
        d.setdefault("valid_fraction", 0.0)
        unknown = _unknown_fields(d)
        if unknown:
            raise CheckpointError(f"config has unknown fields {unknown}")
        try:
            config = cls(**d)
            # where the run was trained may not be here: its device and data need not exist
            config.validate(here=False)
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"the stored config is invalid: {e}") from None
        return config

    def differences(self, other: TrainConfig) -> list[str]:
        """``"name: mine != other's"`` for each field that must match on resume."""
        a, b = self.resolved().to_dict(), other.resolved().to_dict()
        return [
            f"{k}: {a[k]!r} != {b[k]!r}" for k in a if k not in RESUMABLE_FIELDS and a[k] != b[k]
        ]


def _unknown_fields(d: dict) -> list[str]:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return sorted(set(map(str, d)) - known)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The settings in a JSON (a run's ``config.json``) or TOML file, as a dict of
    :class:`TrainConfig` fields (not yet checked: flags may still override them).

    :raises ConfigError: a file that is missing, unreadable, not JSON or TOML, not a table, or
        that names a setting :class:`TrainConfig` does not have.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the read for ever
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise ConfigError(f"cannot read the config file {path}: {kind}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not a text file"
        raise ConfigError(f"cannot read the config file {path}: {reason}") from None
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    if kind == "TOML" and tomllib is None:
        raise ConfigError(f"TOML config files need Python 3.11 or later; write {path} as JSON")
    try:
        settings = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except ValueError as e:  # tomllib.TOMLDecodeError is a ValueError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"the config file {path} is not valid {kind}: {first}") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"the config file {path} must hold a table of settings")
    settings = {k: v for k, v in settings.items() if k not in RETIRED_FIELDS}
    unknown = _unknown_fields(settings)
    if unknown:
        raise ConfigError(f"the config file {path} has unknown settings {unknown}")
    return settings


# -- the command line -----------------------------------------------------------------------


def _flag_keywords(f: dataclasses.Field) -> dict[str, Any]:
    cli = f.metadata["cli"]
    default = f.default
    shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
    help_text = cli["help"] and cli["help"].format(default=shown, datasets=", ".join(DATASETS))
    keywords: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
    if f.type in ("bool", bool):
        return {**keywords, "action": "store_const", "const": True}
    for key in ("type", "choices", "nargs", "metavar"):
        if cli[key] is not None:
            keywords[key] = list(cli[key]) if key == "choices" else cli[key]
    return keywords


def config_arguments(study: bool = False) -> list[tuple[str, tuple[str, ...], dict[str, Any]]]:
    """``(group, flags, add_argument keywords)`` for each setting, in the fields' order;
    with ``study``, only those the estimator study takes."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        cli = f.metadata["cli"]
        if study and not cli["study"]:
            continue
        flags = cli["flags"] or ("--" + f.name.replace("_", "-"),)
        out.append((cli["group"], flags, _flag_keywords(f)))
    return out


def add_config_arguments(parser: argparse.ArgumentParser, study: bool = False) -> None:
    """The :class:`TrainConfig` flags, in their ``--help`` groups. They default to ``None``,
    so that a resume (and ``--config``) can tell which were given (:func:`given_settings`)."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for group, flags, keywords in config_arguments(study):
        groups[group].add_argument(*flags, **keywords)


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags, converted to the fields' types."""
    given = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            given[f.name] = f.metadata["cli"]["convert"](value)
    return given
