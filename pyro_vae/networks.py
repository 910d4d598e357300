"""The encoder and decoder networks: MLPs (``arch="mlp"``) and convolutional nets (``"conv"``).

The contract every encoder and decoder honours (a hand-written pair too, see
:class:`pyro_vae.VAE`), for images of event shape ``E`` (``(D,)`` flat for the MLP,
``(C, H, W)`` for conv nets) and a latent code of size ``Z``:

- ``encoder(x)`` with ``x`` of shape ``(B, *E)`` returns ``(loc, scale)``, each ``(B, Z)``,
  ``scale > 0``: the guide ``q(z|x) = N(loc, diag(scale^2))``.
- ``decoder(z)`` with ``z`` of shape ``(..., Z)`` (a leading particle dimension included)
  returns a tuple of likelihood parameters, each ``(..., *E)``: ``(logits,)`` for ``bernoulli``
  and ``continuous-bernoulli``, ``(mean in (0, 1), scale > 0)`` for ``gaussian``.
- Optionally ``decoder.init_output_bias(logits)`` with ``logits`` of shape ``E``: start
  ``p(x|z)`` at the data's per-pixel marginal.

MLP defaults follow Kingma & Welling (2013) in shape (one hidden layer, 400 units for MNIST)
with ReLU instead of tanh: on binarized MNIST it trains faster at the same budget, and it is
what the hand-written PyTorch VAEs people compare against use.

Conv defaults: two convolutions with 4x4 kernels and stride 2 (32 and 64 channels, so 28x28
becomes 14x14, then 7x7), a dense layer of 400 units, and the mirror image in the decoder with
transposed convolutions. This is the encoder of the convolutional VAEs that binarized-MNIST
papers compare with (e.g. the DCGAN-style nets of Burgess et al. 2018 for beta-VAE, with 32
to 64 channels of 4x4 stride-2 convolutions), kept small enough to train on two CPU cores.
There is no batch normalization: it would couple the images of a batch (and the particles of
an importance-sampled estimate) through their statistics. The decoder has a per-pixel output
bias so that it can start at the data's marginal, as the MLP's does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.checks import is_whole, require_choice, require_whole
from pyro_vae.errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "LIKELIHOODS",
    "Baseline",
    "ConvDecoder",
    "ConvEncoder",
    "Decoder",
    "Encoder",
    "check_network_settings",
    "conv_sizes",
    "mlp",
]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU,
               "leaky-relu": functools.partial(nn.LeakyReLU, 0.3)}  # fmt: skip
# leaky-relu's slope 0.3: the "nonlinear" model of the ARM and DisARM experiments
LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian")
ARCHITECTURES = ("mlp", "conv")
KERNEL, STRIDE, PADDING = 4, 2, 1  # each convolution halves the height and width (rounded down)

# Floors that keep scales away from zero: an encoder scale of exactly 0 gives log q = inf, a
# Gaussian decoder scale near 0 lets log p(x|z) grow without bound on a single pixel.
MIN_ENCODER_SCALE = 1e-5
MIN_DECODER_SCALE = 1e-3


def _whole_numbers(values, name: str) -> tuple[int, ...]:
    if (
        isinstance(values, (str, bytes))
        or not isinstance(values, Sequence)
        or not all(is_whole(v) and v >= 1 for v in values)
    ):
        raise ConfigError(f"{name} must be a list of positive whole numbers, got {values!r}")
    return tuple(int(v) for v in values)


def check_network_settings(
    latent_dim: int,
    hidden_sizes: Sequence[int],
    activation: str,
    likelihood: str,
    arch: str = "mlp",
    conv_channels: Sequence[int] = (32, 64),
) -> tuple[int, ...]:
    """Raise :class:`ConfigError` for a setting of the networks that cannot build; the hidden
    sizes as a tuple of ints."""
    require_choice(arch, "arch", ARCHITECTURES)
    channels = _whole_numbers(conv_channels, "conv channels (conv_channels)")
    if arch == "conv" and not channels:
        raise ConfigError("conv nets need at least one convolution: give conv_channels")
    require_whole(latent_dim, "latent_dim")
    if (
        isinstance(hidden_sizes, (str, bytes))
        or not isinstance(hidden_sizes, Sequence)
        or not all(is_whole(h) and h >= 1 for h in hidden_sizes)
    ):
        raise ConfigError(
            f"hidden sizes must be a list of positive whole numbers, got "
            f"hidden_sizes={hidden_sizes!r}"
        )
    require_choice(activation, "activation", tuple(ACTIVATIONS))
    require_choice(likelihood, "likelihood", LIKELIHOODS)
    return tuple(int(h) for h in hidden_sizes)


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers of the given sizes, each followed by the activation."""
    require_choice(activation, "activation", tuple(ACTIVATIONS))
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


def conv_sizes(height: int, width: int, layers: int) -> list[tuple[int, int]]:
    """Height and width of the input and after each of ``layers`` stride-2 convolutions.

    :raises ConfigError: the images are too small for that many convolutions.
    """
    sizes = [(height, width)]
    for _ in range(layers):
        h, w = sizes[-1]
        h, w = (h + 2 * PADDING - KERNEL) // STRIDE + 1, (w + 2 * PADDING - KERNEL) // STRIDE + 1
        if h < 1 or w < 1:
            raise ConfigError(
                f"images of {height}x{width} pixels are too small for {layers} stride-2 "
                "convolutions; give fewer conv channels or larger --image-size"
            )
        sizes.append((h, w))
    return sizes


def _fold(x: torch.Tensor, event_dims: int) -> tuple[torch.Tensor, torch.Size]:
    # (..., *event) -> (N, *event): conv layers take one batch dimension
    batch = x.shape[: x.dim() - event_dims]
    return x.reshape(-1, *x.shape[x.dim() - event_dims :]), batch


class Encoder(nn.Module):
    """``x -> (loc, scale)`` of the guide ``q(z|x) = N(loc, diag(scale^2))``.

    ``scale = softplus(.) + 1e-5``: positive, smooth, and linear (not exponential) for large
    inputs, so one bad step cannot overflow it. ``scale_dim`` (default ``latent_dim``) is its
    size: 1 for a hyperspherical latent, whose guide has one concentration an image, and 0 for
    a discrete latent, whose encoder returns its logits alone, ``(logits,)``.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden_sizes: Sequence[int] = (400,),
        activation: str = "relu",
        scale_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.body = mlp([data_dim, *hidden_sizes], activation)
        width = hidden_sizes[-1] if hidden_sizes else data_dim
        self.loc = nn.Linear(width, latent_dim)
        scale_dim = latent_dim if scale_dim is None else scale_dim
        self.raw_scale = nn.Linear(width, scale_dim) if scale_dim else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.body(x)  # (..., H)
        if self.raw_scale is None:  # a discrete latent: its logits alone
            return (self.loc(h),)
        return self.loc(h), F.softplus(self.raw_scale(h)) + MIN_ENCODER_SCALE  # (..., Z) each


class CenteredInput(nn.Module):
    """A network that sees its input less the training images' mean, ``mean`` (a buffer the
    VAE sets at the start of training, :meth:`pyro_vae.VAE.init_output_bias`), as the encoders
    of the ARM and DisARM experiments do (``--center-input``)."""

    def __init__(self, net: nn.Module, event_shape: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.zeros(*event_shape))

    def forward(self, x: torch.Tensor):
        return self.net(x - self.mean)


class Decoder(nn.Module):
    """``z -> `` the parameters of ``p(x|z)``, one set a pixel.

    ``bernoulli`` and ``continuous-bernoulli``: logits. ``gaussian``: a mean squashed into
    ``(0, 1)`` (the data range, as in Kingma & Welling's Frey Face model) and a learned
    per-pixel scale ``softplus(.) + 1e-3``.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden_sizes: Sequence[int] = (400,),
        activation: str = "relu",
        likelihood: str = "bernoulli",
    ) -> None:
        super().__init__()
        require_choice(likelihood, "likelihood", LIKELIHOODS)
        self.likelihood = likelihood
        hidden = list(reversed(hidden_sizes))
        self.body = mlp([latent_dim, *hidden], activation)
        width = hidden[-1] if hidden else latent_dim
        self.out = nn.Linear(width, data_dim * (2 if likelihood == "gaussian" else 1))

    @torch.no_grad()
    def init_output_bias(self, logits: torch.Tensor) -> None:
        """Set the output bias of the mean (or logits) to ``logits``, one a pixel."""
        d = self.out.out_features // (2 if self.likelihood == "gaussian" else 1)
        self.out.bias[:d] = logits.reshape(d).to(self.out.bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.out(self.body(z))  # (..., D) or (..., 2D)
        if self.likelihood != "gaussian":
            return (out,)
        loc, raw_scale = out.chunk(2, dim=-1)
        return torch.sigmoid(loc), F.softplus(raw_scale) + MIN_DECODER_SCALE


class ConvEncoder(nn.Module):
    """``x -> (loc, scale)`` for images ``x`` of shape ``(B, C, H, W)``: stride-2 convolutions,
    then dense layers, then the guide's ``loc`` and ``scale = softplus(.) + 1e-5`` (of size
    ``scale_dim``, as for :class:`Encoder`)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        conv_channels: Sequence[int] = (32, 64),
        hidden_sizes: Sequence[int] = (400,),
        activation: str = "relu",
        scale_dim: int | None = None,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        sizes = conv_sizes(h, w, len(conv_channels))
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip((c, *conv_channels), conv_channels, strict=False):
            layers += [nn.Conv2d(fan_in, fan_out, KERNEL, STRIDE, PADDING),
                       ACTIVATIONS[activation]()]  # fmt: skip
        self.convs = nn.Sequential(*layers)
        flat = conv_channels[-1] * sizes[-1][0] * sizes[-1][1]
        self.body = mlp([flat, *hidden_sizes], activation)
        width = hidden_sizes[-1] if hidden_sizes else flat
        self.loc = nn.Linear(width, latent_dim)
        scale_dim = latent_dim if scale_dim is None else scale_dim
        self.raw_scale = nn.Linear(width, scale_dim) if scale_dim else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, batch = _fold(x, 3)  # (N, C, H, W)
        h = self.body(self.convs(x).flatten(1))  # (N, H')
        loc = self.loc(h).reshape(*batch, -1)
        if self.raw_scale is None:  # a discrete latent: its logits alone
            return (loc,)
        scale = F.softplus(self.raw_scale(h)) + MIN_ENCODER_SCALE
        return loc, scale.reshape(*batch, -1)  # (..., Z) each


class ConvDecoder(nn.Module):
    """``z -> `` the parameters of ``p(x|z)`` as images ``(..., C, H, W)``: dense layers, then
    transposed convolutions that retrace the encoder's sizes, plus a per-pixel output bias.
    Parameters as for :class:`Decoder`."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        conv_channels: Sequence[int] = (32, 64),
        hidden_sizes: Sequence[int] = (400,),
        activation: str = "relu",
        likelihood: str = "bernoulli",
    ) -> None:
        super().__init__()
        require_choice(likelihood, "likelihood", LIKELIHOODS)
        self.likelihood = likelihood
        c, h, w = image_shape
        self.sizes = conv_sizes(h, w, len(conv_channels))  # [(H, W), ..., smallest]
        self.channels = list(conv_channels)
        smallest = self.sizes[-1]
        flat = self.channels[-1] * smallest[0] * smallest[1]
        self.body = mlp([latent_dim, *reversed(hidden_sizes), flat], activation)
        out_channels = c * (2 if likelihood == "gaussian" else 1)
        targets = list(reversed(self.sizes[:-1]))  # the sizes to grow back to, smallest first
        fans = list(reversed(self.channels))
        layers: list[nn.Module] = []
        for i, (fan_in, (th, tw)) in enumerate(zip(fans, targets, strict=True)):
            last = i == len(targets) - 1
            fan_out = out_channels if last else fans[i + 1]
            ih, iw = self.sizes[len(self.sizes) - 1 - i]
            # a transposed convolution gives 2 * size; one more row or column where the
            # encoder rounded an odd size down
            padding = (th - STRIDE * ih, tw - STRIDE * iw)
            layers.append(nn.ConvTranspose2d(fan_in, fan_out, KERNEL, STRIDE, PADDING, padding))
            if not last:
                layers.append(ACTIVATIONS[activation]())
        self.deconvs = nn.Sequential(*layers)
        self.bias = nn.Parameter(torch.zeros(out_channels, h, w))

    @torch.no_grad()
    def init_output_bias(self, logits: torch.Tensor) -> None:
        """Set the per-pixel bias of the mean (or logits) to ``logits``, ``(C, H, W)``."""
        c = self.bias.shape[0] // (2 if self.likelihood == "gaussian" else 1)
        self.bias[:c] = logits.reshape(c, *self.bias.shape[1:]).to(self.bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z, batch = _fold(z, 1)  # (N, Z)
        h = self.body(z).reshape(-1, self.channels[-1], *self.sizes[-1])
        out = self.deconvs(h) + self.bias  # (N, C or 2C, H, W)
        out = out.reshape(*batch, *out.shape[1:])
        if self.likelihood != "gaussian":
            return (out,)
        loc, raw_scale = out.chunk(2, dim=-3)
        return torch.sigmoid(loc), F.softplus(raw_scale) + MIN_DECODER_SCALE


class Baseline(nn.Module):
    """``x -> b(x)``, one number an image: the input-dependent REINFORCE baseline.

    Images of any event shape are flattened first (``event_dims`` trailing dimensions).
    """

    def __init__(
        self,
        data_dim: int,
        hidden_sizes: Sequence[int] = (100,),
        activation: str = "relu",
        event_dims: int = 1,
    ) -> None:
        super().__init__()
        self.event_dims = event_dims
        self.body = mlp([data_dim, *hidden_sizes], activation)
        self.out = nn.Linear(hidden_sizes[-1] if hidden_sizes else data_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(*x.shape[: x.dim() - self.event_dims], -1)  # (B, D)
        return self.out(self.body(x)).squeeze(-1)  # (B,)
