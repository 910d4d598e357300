r"""The conditional VAE of Sohn, Lee & Yan (2015): images ``x`` drawn given a condition ``c``.

Generative model and guide::

    z | c ~ p(z|c) = N(mu_p, diag sigma_p^2),  mu_p, sigma_p = prior_net(c)
    x | z, c ~ p(x | decoder(...))
    z | x, c ~ q(z|x, c) = N(mu, diag sigma^2),  mu, sigma = encoder(x, c)

and its bound on the conditional log-likelihood::

    log p(x|c) >= E_q(z|x,c)[log p(x|z, c)] - KL(q(z|x, c) || p(z|c))

Two conditions, ``--condition``:

``label``
    ``c`` is the image's class, and the model draws an image of a chosen class: the prior net
    maps ``onehot(c)`` to ``p(z|c)``, the decoder sees ``[z, onehot(c)]`` and the encoder
    ``[x, onehot(c)]`` (the networks of :class:`pyro_vae.m2.SemiSupervisedVAE`).
``quadrants-1``, ``quadrants-2``, ``quadrants-3``
    Sohn et al.'s image completion, as Pyro's ``examples/cvae`` does it: ``c`` is the visible
    part of the image (the bottom-left quadrant; the left half; all but the bottom-right
    quadrant) and ``x`` the hidden rest, which the model draws. As there:

    - a deterministic *baseline* network (an MLP of ``--hidden-sizes``) predicts the hidden
      pixels from the visible ones (hidden ones read ``-1``), trained on their cross-entropy;
    - the prior net sees the visible pixels with the baseline's guess in the hidden ones, the
      guess held fixed (no gradient reaches the baseline through the CVAE);
    - the encoder sees the whole image (the visible pixels and the true hidden ones), and the
      decoder ``z`` alone; only the hidden pixels are scored, ``log p(x_hidden | z)``.

    Pyro trains the baseline first, to convergence, and then the CVAE on top of it. Here both
    train together, in one objective: the model holds ``pyro.factor("baseline", l - l.detach())``,
    ``l`` the baseline's log-likelihood of the hidden pixels, whose value is zero (the ELBO is
    the CVAE's, untouched) and whose gradient is ``l``'s, which reaches the baseline's
    parameters alone. One run, one optimizer, one checkpoint, and the baseline's figure beside
    the CVAE's in :func:`pyro_vae.evaluate.evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.poutine.util import is_validation_enabled

from pyro_vae.checks import require_choice
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.labels import check_batch_labels, check_classes
from pyro_vae.m2 import LabelledConvEncoder, LabelledEncoder, _joined
from pyro_vae.model import VAE, IndependentBernoulli, bernoulli_log_density
from pyro_vae.networks import ConvDecoder, ConvEncoder, Decoder, Encoder

__all__ = ["CONDITIONS", "ConditionalVAE", "check_cvae_settings", "visible_pixels"]

#: what ``--condition`` may be: the class label, or 1, 2 or 3 visible quadrants
CONDITIONS = ("label", "quadrants-1", "quadrants-2", "quadrants-3")
# the value a hidden pixel reads in the baseline's input (Pyro's MaskImages uses -1)
_HIDDEN = -1.0


def visible_pixels(image_shape: Sequence[int], quadrants: int) -> torch.Tensor:
    """The visible pixels of Pyro's quadrant completion, a bool tensor of ``image_shape``
    ``(C, H, W)``: 1, the bottom-left quadrant; 2, the left half; 3, all but the bottom-right
    quadrant (the rows and columns of a quadrant are ``H // 2`` and ``W // 2`` onwards, as in
    Pyro's ``MaskImages``)."""
    _, h, w = image_shape
    if h < 2 or w < 2:
        raise ConfigError(f"quadrant completion needs images of at least 2 x 2 pixels, got "
                          f"{h} x {w}")  # fmt: skip
    seen = torch.zeros(h, w, dtype=torch.bool, device="cpu")  # also under torch.device("meta")
    if quadrants == 1:
        seen[h // 2 :, : w // 2] = True
    elif quadrants == 2:
        seen[:, : w // 2] = True
    elif quadrants == 3:
        seen[:] = True
        seen[h // 2 :, w // 2 :] = False
    else:
        raise ConfigError(f"1, 2 or 3 quadrants are visible, not {quadrants!r}")
    return seen.expand(*image_shape)


class ConditionalVAE(VAE):
    """A conditional VAE (see the module docstring), with MLP or conv networks of
    ``hidden_sizes`` (and ``conv_channels``); the baseline of quadrant completion is an MLP
    on the flattened image either way.

    :param condition: one of :data:`CONDITIONS`.
    :param classes: ``C``, for ``condition="label"``.

    ``model(x, y=None)`` and ``guide(x, y=None)`` take images ``(B, *event_shape)`` and, for
    the label condition, their classes ``(B,)`` (which it needs); for quadrant completion the
    condition is in the images themselves. The networks are registered with Pyro as
    ``"encoder"``, ``"decoder"``, ``"prior_net"`` and (completion) ``"baseline_net"``.
    """

    def __init__(
        self,
        latent_dim: int = 20,
        hidden_sizes: Sequence[int] = (400,),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        *,
        condition: str = "label",
        image_shape: Sequence[int],
        classes: int | None = None,
        arch: str = "mlp",
        conv_channels: Sequence[int] = (32, 64),
        checked: bool = False,
    ) -> None:
        require_choice(condition, "condition", CONDITIONS)
        if arch not in ("mlp", "conv"):
            raise ConfigError(f"a CVAE has mlp or conv networks, not {arch!r}")
        self.condition = condition
        if condition == "label":
            if not checked:
                check_classes(classes)
            self.classes = int(classes)
        else:
            self.classes = None
            if likelihood == "gaussian":
                raise ConfigError(_GAUSSIAN)
        super().__init__(None, latent_dim, hidden_sizes, activation, likelihood, "reparam",
                         image_shape=image_shape, arch=arch, conv_channels=conv_channels,
                         checked=checked)  # fmt: skip
        z, d = self.latent_dim, self.data_dim
        if condition == "label":
            self.prior_net = Encoder(self.classes, z, hidden_sizes, activation)
            self.baseline_net = None
        else:
            self.prior_net = (ConvEncoder(self.image_shape, z, conv_channels, hidden_sizes,
                                          activation) if arch == "conv"
                              else Encoder(d, z, hidden_sizes, activation))  # fmt: skip
            self.baseline_net = Decoder(d, d, tuple(reversed(hidden_sizes)), activation)
            seen = visible_pixels(self.image_shape, int(condition[-1])).reshape(-1)
            self.register_buffer("visible", seen.clone(), persistent=False)
            self.register_buffer("hidden_index", (~seen).nonzero()[:, 0], persistent=False)

    def _built_in(self, arch, hidden_sizes, conv_channels, activation):
        z, c = self.latent_dim, (self.classes or 0)  # the decoder sees z, and a label's onehot
        if arch == "conv":
            encoder = (LabelledConvEncoder(self.image_shape, z, c, conv_channels, hidden_sizes,
                                           activation) if c
                       else ConvEncoder(self.image_shape, z, conv_channels, hidden_sizes,
                                        activation))  # fmt: skip
            decoder = ConvDecoder(self.image_shape, z + c, conv_channels, hidden_sizes,
                                  activation, self.likelihood)  # fmt: skip
            return encoder, decoder
        net = LabelledEncoder if c else Encoder
        encoder = net(self.data_dim + c, z, hidden_sizes, activation)
        return (
            encoder,
            Decoder(self.data_dim, z + c, hidden_sizes, activation, self.likelihood),
        )

    # -- the condition -----------------------------------------------------------------------

    @property
    def labelled(self) -> bool:
        """Whether the condition is the class label (else: visible quadrants)."""
        return self.condition == "label"

    @property
    def needs_labels(self) -> bool:
        return self.labelled

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(..., *event_shape)`` as ``(..., D)``."""
        return x.reshape(*x.shape[: x.dim() - len(self.event_shape)], self.data_dim)

    def _image(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.reshape(*flat.shape[:-1], *self.event_shape)

    def _onehot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y.long(), self.classes).to(like.dtype)

    def _check_labels(self, x: torch.Tensor, y) -> torch.Tensor | None:
        if not self.labelled:
            if y is not None:
                raise DataError("a quadrant-completion CVAE takes images alone: their visible "
                                "quadrants are the condition, not labels")  # fmt: skip
            return None
        if y is None:
            raise DataError("a label-conditioned CVAE takes each image's class: give labels")
        if is_validation_enabled():  # not in training, where the labels were checked up front
            check_batch_labels(y, x.shape[0], self.classes, "a CVAE")
        return self._onehot(y, x)

    def with_hidden(self, x: torch.Tensor, value: float) -> torch.Tensor:
        """Images ``x`` with their hidden pixels at ``value``."""
        flat = self._flat(x)
        return self._image(torch.where(self.visible, flat, flat.new_tensor(value)))

    def baseline_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline network's logits of every pixel, ``(B, D)``, from the visible ones
        (the hidden ones read ``-1``, as in Pyro's example)."""
        return self.baseline_net(self._flat(self.with_hidden(x, _HIDDEN)))[0]

    def prior_params(self, x: torch.Tensor | None, c: torch.Tensor | None = None):
        """``p(z|c)``'s ``(loc, scale)``: from the onehot labels ``c``, or from the visible
        pixels of ``x`` with the baseline's guess (held fixed) in the hidden ones."""
        if self.labelled:
            return self.prior_net(c)
        flat = self._flat(x)
        guess = torch.sigmoid(self.baseline_logits(x)).detach()
        return self.prior_net(self._image(torch.where(self.visible, flat, guess)))

    def _likelihood(self, z: torch.Tensor, c: torch.Tensor | None) -> dist.TorchDistribution:
        """``p(x|z, c)`` of the whole image (label), or of the hidden pixels, event ``(H,)``."""
        if self.labelled:
            return self.likelihood_distribution(_joined(z, c))
        params = [self._flat(p)[..., self.hidden_index] for p in self._run("decoder", z)]
        if self.likelihood == "bernoulli":
            return IndependentBernoulli(dist.Bernoulli(logits=params[0]), 1)
        return dist.ContinuousBernoulli(logits=params[0]).to_event(1)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden pixels of images ``x``, ``(B, H)``: what quadrant completion scores."""
        return self._flat(x)[..., self.hidden_index]

    # -- the Pyro model and guide ------------------------------------------------------------

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """``p(z|c) p(x|z, c)``; for completion, also the baseline's zero-valued factor."""
        pyro.module("decoder", self.decoder)
        pyro.module("prior_net", self.prior_net)
        c = self._check_labels(x, y)
        with pyro.plate("data", x.shape[0]):
            if not self.labelled:
                pyro.module("baseline_net", self.baseline_net)
                fit = bernoulli_log_density(self.baseline_logits(x)[..., self.hidden_index],
                                            self.hidden(x), 1)  # fmt: skip
                pyro.factor("baseline", fit - fit.detach())
            loc, scale = self.prior_params(x, c)
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            target = x if self.labelled else self.hidden(x)
            pyro.sample("x", self._likelihood(z, c), obs=target)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """``q(z|x, c)``: the whole image (and its label)."""
        pyro.module("encoder", self.encoder)
        c = self._check_labels(x, y)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x, c) if self.labelled else self._run("encoder", x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # -- using it ----------------------------------------------------------------------------

    @torch.no_grad()
    def init_output_bias(self, mean_image: torch.Tensor) -> None:
        super().init_output_bias(mean_image)
        if self.baseline_net is not None:  # its guess starts at the mean image, as the decoder
            self.baseline_net.init_output_bias(torch.logit(mean_image.clamp(1e-3, 1 - 1e-3)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """``q(z|x, c)``'s ``(loc, scale)``."""
        c = self._check_labels(x, y)
        return self.encoder(x, c) if self.labelled else self.encoder(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean image ``E[x|z, c]`` (label; give ``y``), or of the whole image from ``z``
        (completion: :meth:`complete` puts the visible pixels back)."""
        if self.labelled:
            if y is None:
                raise ConfigError("a label-conditioned CVAE decodes z with a class y: give both")
            return self.likelihood_distribution(_joined(z, self._onehot(y, z))).mean
        return self.likelihood_distribution(z).mean

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               y: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Mean images of ``z ~ p(z|c)`` for classes ``y`` ``(N,)`` (default: the classes in
        turn, ``0, 1, ..., C - 1, 0, ...``)."""
        if not self.labelled:
            raise ConfigError("a quadrant-completion CVAE draws the hidden part of given "
                              "images: use complete(x)")  # fmt: skip
        like = self.prior_net.loc.weight  # the networks' device and dtype
        if y is None:
            y = torch.arange(num_samples, device=like.device) % self.classes
        loc, scale = self.prior_params(None, self._onehot(y, like))
        eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return self.decode(loc + scale * eps, y)

    @torch.no_grad()
    def complete(self, x: torch.Tensor, num_samples: int = 1,
                 generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
        """Completions of images ``x`` ``(B, *event_shape)``: ``num_samples`` draws
        ``z ~ p(z|c)`` each, the hidden pixels the decoder's mean and the visible ones ``x``'s,
        ``(num_samples, B, *event_shape)``."""
        if self.labelled:
            raise ConfigError("complete() is quadrant completion's; a label-conditioned CVAE "
                              "samples a class: use sample()")  # fmt: skip
        loc, scale = self.prior_params(x)
        shape = (num_samples, *loc.shape)
        eps = torch.randn(shape, generator=generator, device=loc.device, dtype=loc.dtype)
        mean = self._flat(self.decode(loc + scale * eps))
        return self._image(torch.where(self.visible, self._flat(x), mean))

    @torch.no_grad()
    def baseline_completion(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline's guess of the hidden pixels beside the visible ones, ``x``'s shape."""
        guess = torch.sigmoid(self.baseline_logits(x))
        return self._image(torch.where(self.visible, self._flat(x), guess))

    @torch.no_grad()
    def baseline_nll(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline's cross-entropy of the hidden pixels, nats an image ``(B,)``: Pyro's
        ``MaskedBCELoss``, the baseline's row of its table."""
        logits = self.baseline_logits(x)[..., self.hidden_index]
        return -bernoulli_log_density(logits, self.hidden(x), 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError("a CVAE draws images given a condition, it does not reconstruct "
                          "them: its pictures are pyro-vae sample's")  # fmt: skip

    def hmc_refusal(self, what: str) -> str | None:
        return (f"{what} samples the VAE's posterior p(z|x); a CVAE's is p(z|x, c), which it "
                "does not take")  # fmt: skip

    def network_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every network's outputs on ``x`` (the label: class 0), for the divergence check."""
        c = self._onehot(x.new_zeros(x.shape[0]), x) if self.labelled else None
        loc, scale = self.encoder(x, c) if self.labelled else self.encoder(x)
        z = _joined(loc, c) if self.labelled else loc
        extra = [self.baseline_logits(x)] if not self.labelled else []
        return [loc, scale, *self.prior_params(x, c), *self._run("decoder", z), *extra]

    @torch.no_grad()
    def evaluation_terms(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """From one draw ``z ~ q(z|x, c)`` an image: ``E_q[z]``, ``log p(x|z, c)`` and the KL
        of ``q(z|x, c)`` from ``p(z|c)`` by dimension (closed form), ``(B, ...)``."""
        c = self._check_labels(x, y)
        loc, scale = self.encoder(x, c) if self.labelled else self.encoder(x)
        z = loc + scale * torch.randn_like(scale)
        recon = self._likelihood(z, c).log_prob(x if self.labelled else self.hidden(x))
        p_loc, p_scale = self.prior_params(x, c)
        kl = torch.distributions.kl_divergence(dist.Normal(loc, scale), dist.Normal(p_loc, p_scale))
        return loc, recon, kl


_GAUSSIAN = ("quadrant completion scores pixels in [0, 1] (bernoulli or continuous-bernoulli), as "
             "its baseline's cross-entropy does; not likelihood 'gaussian'")  # fmt: skip


def check_cvae_settings(config) -> None:
    """:class:`ConfigError` for a resolved config's CVAE settings that are wrong or clash, or a
    condition given to another model."""
    if config.model != "cvae":
        if config.condition is not None:
            raise ConfigError("--condition is for the conditional VAE: add --model cvae")
        return
    if config.condition is None:
        raise ConfigError(f"model cvae needs --condition: one of {', '.join(CONDITIONS)}")
    require_choice(config.condition, "condition", CONDITIONS)
    if config.arch == "custom":
        raise ConfigError("model cvae builds its own networks (--arch mlp or conv), not "
                          "hand-written ones")  # fmt: skip
    if config.condition != "label" and config.likelihood == "gaussian":
        raise ConfigError(_GAUSSIAN)
    clashes = {
        "latent": (config.latent, "gaussian"), "estimator": (config.estimator, "reparam"),
        "prior": (config.prior, "normal"), "num_particles": (config.num_particles, 1),
        "kl_weight": (config.kl_weight, 1.0), "kl_warmup": (config.kl_warmup, 0),
        "jit": (config.jit, False),
        "center_input": (config.center_input, False),
    }  # fmt: skip
    for name, (value, own) in clashes.items():
        if value != own:
            raise ConfigError(f"model cvae takes {name} {own!r} (its prior is the network "
                              f"p(z|c), its z reparameterized), not {value!r}")  # fmt: skip
    if config.objective not in ("elbo", "elbo-analytic-kl"):
        raise ConfigError(f"model cvae trains the ELBO (elbo, or elbo-analytic-kl: the default), "
                          f"not objective {config.objective!r}")  # fmt: skip
