"""The objects a config describes: the VAE (:func:`build_vae`), sized against the device's
memory before anything is allocated (:func:`parameter_count`), and the optimizer
(:func:`make_optimizer`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from pyro_vae.config import TrainConfig
from pyro_vae.cvae import ConditionalVAE
from pyro_vae.errors import ConfigError
from pyro_vae.m2 import SemiSupervisedVAE
from pyro_vae.memory import binding_limit
from pyro_vae.model import VAE, image_shape_chw
from pyro_vae.networks import conv_sizes
from pyro_vae.optim import JointOptimizer
from pyro_vae.priors import DEFAULT_COMPONENTS

__all__ = ["build_vae", "check_custom", "check_step_memory", "make_optimizer", "parameter_count"]


def parameter_count(
    config: TrainConfig, image_shape: Sequence[int], classes: int | None = None
) -> int:
    """Weights and biases of the encoder and decoder, and M2's classifier (the nn baseline not
    included)."""
    if not config.checked():
        config.validate(here=False)
    plain = "enumerate" if config.model == "m2" else "reparam"  # an estimator without networks
    with torch.device("meta"):  # the networks built without memory, on PyTorch's meta device
        vae = _vae(dataclasses.replace(config, estimator=plain), image_shape, classes)
    return sum(p.numel() for p in vae.parameters())


def _device_memory(device: str) -> tuple[int, str] | None:
    """The bytes a run on ``device`` may still allocate, and the words for a message: a GPU's
    memory, or on the CPU the limit that binds (the machine's, ``ulimit -v``, a cgroup's:
    :func:`pyro_vae.memory.binding_limit`); ``None`` where nothing can be read."""
    if device.startswith("cuda"):
        try:
            index = int(device.partition(":")[2] or 0)
            total = torch.cuda.get_device_properties(index).total_memory
        except (ValueError, RuntimeError, AttributeError, AssertionError):
            return None
        return total, f"{device} has {total / 2**30:,.1f} GiB"
    limit = binding_limit()
    return None if limit is None else (limit.available, limit.describe())


def _cvae(config: TrainConfig, image_shape: Sequence[int], classes: int | None) -> VAE:
    if config.condition == "label" and classes is None:
        raise ConfigError("a label-conditioned CVAE is built for a number of classes: give "
                          "classes")  # fmt: skip
    return ConditionalVAE(
        config.latent_dim, config.hidden_sizes, config.activation, config.likelihood,
        condition=config.condition, image_shape=image_shape, classes=classes, arch=config.arch,
        conv_channels=config.conv_channels, checked=True,
    )  # fmt: skip


def _vae(config: TrainConfig, image_shape: Sequence[int], classes: int | None = None) -> VAE:
    """The VAE of a validated config (its settings are not checked again)."""
    config = config.resolved()
    flat = len(image_shape) == 1  # a vector of pixels: the MLP only
    if config.model == "cvae":
        return _cvae(config, (1, 1, *image_shape) if flat else image_shape, classes)
    if config.model == "m2":
        if classes is None:
            raise ConfigError("an M2 model is built for a number of classes: give classes")
        conv = config.arch == "conv"
        return SemiSupervisedVAE(
            None if conv else math.prod(image_shape), config.latent_dim, config.hidden_sizes,
            config.activation, config.likelihood, config.estimator, config.baseline_beta,
            classes=classes, image_shape=image_shape if conv else None, arch=config.arch,
            conv_channels=config.conv_channels, checked=True,
        )  # fmt: skip
    return VAE(
        image_shape[0] if flat else None,
        latent_dim=config.latent_dim,
        hidden_sizes=config.hidden_sizes,
        activation=config.activation,
        likelihood=config.likelihood,
        estimator=config.estimator,
        baseline_beta=config.baseline_beta,
        image_shape=None if flat else image_shape,
        arch=config.arch,
        conv_channels=config.conv_channels,
        prior=config.prior,
        prior_components=config.prior_components,
        latent=config.latent,
        categories=config.categories,
        center_input=config.center_input,
        checked=True,
    )


def build_vae(
    config: TrainConfig, image_shape: int | Sequence[int], classes: int | None = None
) -> VAE:
    """The VAE a config describes, for images of ``image_shape`` (``(H, W)``, ``(C, H, W)``,
    or a number of pixels), on the CPU; an M2 model (``model="m2"``) for ``classes`` classes.

    :raises ConfigError: a setting out of range (a config that has not passed
        :meth:`~pyro_vae.TrainConfig.validate` is checked here), networks that would not fit in
        the memory of ``config.device``, or hand-written networks (``arch="custom"``: build
        them yourself).
    """
    if not config.checked():
        config.validate(here=False)
    if config.arch == "custom":
        raise ConfigError(
            "arch 'custom' means hand-written networks: build VAE(image_shape=..., "
            "encoder=..., decoder=...) and pass it to fit(vae=...) or load_run(vae=...)"
        )
    if isinstance(image_shape, int):
        image_shape = (image_shape,) if config.arch == "mlp" else image_shape_chw(image_shape)
    image_shape = tuple(image_shape)
    count = parameter_count(config, image_shape, classes)
    needed = 4 * 4 * count  # float32 parameters, their gradients and Adam's two moments
    memory = _device_memory(config.device)
    too_big = ConfigError(
        f"the networks would have {count:,} parameters, about {needed / 2**30:,.1f} GiB to "
        f"train, more than there is"
        + (f" ({memory[1]})" if memory else f" on {config.device}")
        + "; choose smaller --hidden-sizes or --latent-dim"
        + (" or fewer --prior-components" if config.prior in DEFAULT_COMPONENTS else "")
    )
    if memory is not None and needed > memory[0]:
        raise too_big
    try:
        return _vae(config, image_shape, classes)
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, MemoryError) or "alloc" in str(e).lower():
            raise too_big from None
        raise


def make_optimizer(config: TrainConfig) -> JointOptimizer:
    """Adam or Adagrad over all parameters, the nn baseline's at their own learning rate."""

    def learning_rate(name: str) -> float:
        baseline = name.startswith("baseline.")
        return config.baseline_learning_rate if baseline else config.learning_rate

    return JointOptimizer(learning_rate, config.clip_norm, eps=config.adam_eps,
                          algorithm=config.optimizer, weight_decay=config.weight_decay)  # fmt: skip


def check_step_memory(config: TrainConfig, image_shape: Sequence[int]) -> None:
    """Refuse a batch of particles whose activations could not fit in the device's memory."""
    data_dim = math.prod(image_shape)
    widths = data_dim * 3 + 2 * sum(config.hidden_sizes) + 4 * config.latent_dim
    if config.arch == "conv":  # the feature maps, in the encoder and the decoder
        _, h, w = image_shape_chw(image_shape)
        sizes = conv_sizes(h, w, len(config.conv_channels))[1:]
        widths += 2 * sum(c * a * b for c, (a, b) in zip(config.conv_channels, sizes, strict=True))
    rows = config.num_particles * config.batch_size
    needed = 4 * 3 * rows * widths  # float32, forward values and their gradients, roughly
    memory = _device_memory(config.device)
    if memory is not None and needed > memory[0]:
        raise ConfigError(
            f"K = {config.num_particles} particles for each of {config.batch_size} images need "
            f"about {needed / 2**30:,.1f} GiB a step, more than there is ({memory[1]}); "
            "lower -K or --batch-size"
        )


def check_custom(config: TrainConfig, vae: VAE | None) -> None:
    """A hand-written VAE comes with ``arch="custom"``, and agrees with the config."""
    if vae is None:
        if config.arch == "custom":
            raise ConfigError(
                "arch 'custom' trains a VAE with hand-written networks: pass it as "
                "fit(config, vae=VAE(image_shape=..., encoder=..., decoder=...))"
            )
        return
    if not isinstance(vae, VAE) or vae.arch != "custom" or config.arch != "custom":
        raise ConfigError(
            "fit(vae=...) takes a VAE with hand-written networks and a config with arch "
            "'custom'; for the built-in networks leave vae out and set arch in the config"
        )
    mine = {name: getattr(vae, name)
            for name in ("latent_dim", "likelihood", "estimator", "baseline_beta")}  # fmt: skip
    mine["prior"] = vae.prior.name
    if config.prior_components is not None:
        mine["prior_components"] = getattr(vae.prior, "components", None)
    clashes = [
        f"{name}: config {getattr(config, name)!r} != VAE {value!r}"
        for name, value in mine.items()
        if getattr(config, name) != value
    ]
    if clashes:
        raise ConfigError(f"the VAE does not match the config ({'; '.join(clashes)})")
