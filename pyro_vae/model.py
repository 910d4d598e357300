"""The VAE as a Pyro model and guide.

Generative model (Kingma & Welling 2013)::

    z ~ p(z)                          # N(0, I) on R^Z, or another prior (pyro_vae.priors)
    x | z ~ p(x | decoder(z))         # Bernoulli, continuous Bernoulli or Gaussian per pixel

Guide (the amortized variational posterior)::

    z | x ~ N(mu(x), diag(sigma(x)^2))    # mu, sigma = encoder(x)

or, for the hyperspherical prior, the Power Spherical distribution on the unit sphere with
mean direction ``mu(x) / |mu(x)|`` and concentration ``kappa(x)`` (one number an image).

Both run under one ``pyro.plate("data")`` over the batch, so every image has its own latent and
Pyro scales and scores them image by image.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn
from torch.distributions.utils import broadcast_all

from pyro_vae.checks import is_whole
from pyro_vae.errors import ConfigError
from pyro_vae.estimators import baseline_options, check_estimator
from pyro_vae.latents import LatentSpace
from pyro_vae.networks import (
    Baseline,
    CenteredInput,
    ConvDecoder,
    ConvEncoder,
    Decoder,
    Encoder,
    check_network_settings,
)
from pyro_vae.priors import DEFAULT_PRIOR, Prior, check_prior, make_prior, resolve_latent

__all__ = ["VAE", "IndependentBernoulli", "bernoulli_log_density", "image_shape_chw"]


def image_shape_chw(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` for an image shape given as ``(H, W)`` (grey) or ``(C, H, W)``."""
    if (
        isinstance(image_shape, (str, bytes))
        or not isinstance(image_shape, Sequence)
        or len(image_shape) not in (2, 3)
        or not all(is_whole(n) and n >= 1 for n in image_shape)
    ):
        raise ConfigError(
            f"an image shape is (H, W) or (C, H, W) of positive whole numbers, got {image_shape!r}"
        )
    shape = tuple(int(n) for n in image_shape)
    return (1, *shape) if len(shape) == 2 else shape


class _BernoulliLogDensity(torch.autograd.Function):
    """``sum(x * l - softplus(l))`` over ``dims``: the Bernoulli log density of ``x`` at logits
    ``l``, with its gradient ``(x - sigmoid(l)) * g`` written out.

    ``softplus(l)`` is taken as ``max(l, 0) + log(1 + exp(-|l|))``, with ``max(l, 0) - x l``
    formed first (exact for binary ``x``). In float32 that is as accurate as ``log1p``:
    ``1 + exp(-|l|)`` rounds by at most half an ulp of 1, an error of at most ``6e-8`` nats a
    pixel, the size of the rounding of the term itself.
    On the CPU, PyTorch's ``log1p`` (which ``binary_cross_entropy_with_logits`` and
    ``softplus`` call) is not vectorized in every build: on this project's CI machine it costs
    seven times ``log``, and the likelihood was a tenth of a training step. This function
    takes half the time of ``binary_cross_entropy_with_logits`` and its backward pass
    (``python benchmarks/speed.py --kernels``). Under ``create_graph`` its backward pass is
    differentiable too.
    """

    @staticmethod
    def forward(ctx, logits, value, dims):
        ctx.save_for_backward(logits, value)
        # max(l, 0) - l x first (exact for x in {0, 1}), then softplus's log(1 + exp(-|l|))
        cost = logits.clamp(min=0).addcmul_(logits, value, value=-1)
        cost.add_(logits.abs().neg_().exp_().add_(1).log_())
        return cost.sum(dims).neg_()

    @staticmethod
    def backward(ctx, grad):
        logits, value = ctx.saved_tensors
        grad = grad.reshape(grad.shape + (1,) * (logits.dim() - grad.dim()))
        grad_logits = grad_value = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled():  # create_graph: a backward pass autograd can follow
                grad_logits = (value - torch.sigmoid(logits)) * grad
            else:
                grad_logits = torch.sigmoid(logits).sub_(value).neg_().mul_(grad)
        if ctx.needs_input_grad[1]:
            grad_value = logits * grad
        return grad_logits, grad_value, None


_PLAIN_TENSORS = {torch.Tensor, nn.Parameter}


def bernoulli_log_density(
    logits: torch.Tensor, value: torch.Tensor, event_dims: int
) -> torch.Tensor:
    """``log Bernoulli(value | logits)`` summed over the last ``event_dims`` dimensions.

    On the CPU by :class:`_BernoulliLogDensity`; elsewhere (one fused kernel on a GPU), and for
    tensor subclasses (Pyro's ``TraceGraph_ELBO`` tracks provenance in one, which a custom
    autograd function would cut off from the graph), by ``-binary_cross_entropy_with_logits``.
    ``logits`` and ``value`` must have one shape.
    """
    if event_dims == 0:  # a sum over a new dimension of one: an empty tuple would sum them all
        return bernoulli_log_density(logits.unsqueeze(-1), value.unsqueeze(-1), 1)
    dims = tuple(range(-event_dims, 0))
    if logits.device.type == "cpu" and {type(logits), type(value)} <= _PLAIN_TENSORS:
        return _BernoulliLogDensity.apply(logits, value, dims)
    return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(dims)


class IndependentBernoulli(dist.Independent):
    """``Bernoulli(logits=logits).to_event(n)``, the Bernoulli likelihood of an image, with a
    ``log_prob`` that sums over the pixels in one pass (:func:`bernoulli_log_density`).

    torch's ``Bernoulli.log_prob`` returns ``-binary_cross_entropy_with_logits(...)`` pixel by
    pixel, one more pass over (and one more allocation of) the ``(..., D)`` array, which the
    sum over the event then reads again, and on the CPU it goes through the slow ``log1p``.
    Everything else is ``Independent``'s, and the base Bernoulli still checks the value
    against its support when validation is on.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        base = self.base_dist
        if base._validate_args:
            base._validate_sample(value)
        logits, value = broadcast_all(base.logits, value)
        return bernoulli_log_density(logits, value, self.reinterpreted_batch_ndims)


def _call(name: str, net: nn.Module, value: torch.Tensor, what: str | None = None):
    try:
        return net(value)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        on = what or f"input of shape {tuple(value.shape)}"
        raise ConfigError(f"the {name} fails on {on}: {first}") from None


def _latent_settings(latent, prior, categories, estimator, baseline_beta, components, latent_dim,
                     checked: bool) -> tuple[LatentSpace, str, str]:  # fmt: skip
    """The latent space, prior and estimator of a VAE, the defaults of each filled in from the
    others (:meth:`pyro_vae.TrainConfig.resolved` fills a config's the same way), checked
    unless ``checked``."""
    space = resolve_latent(latent, prior, categories, checked)
    prior = DEFAULT_PRIOR[space.name] if prior is None else prior
    estimator = space.default_estimator if estimator is None else estimator
    if not checked:
        check_estimator(estimator, baseline_beta)
        check_prior(prior, components, latent_dim, space)
        refusal = space.refusal(estimator)
        if refusal:
            raise ConfigError(refusal)
    return space, prior, estimator


def _pair(out: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An encoder's ``(loc, second)``; ``(logits, None)`` for a discrete latent's ``(logits,)``."""
    return (out[0], out[1]) if len(out) > 1 else (out[0], None)


def _shapes(out) -> list:
    """The shapes in a network's output tuple (type names for what is not a tensor)."""
    items = out if isinstance(out, tuple) else (out,)
    return [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in items]


class VAE(nn.Module):
    """A variational autoencoder with Pyro ``model`` and ``guide`` methods.

    :param data_dim: pixels per (flattened) image, for an MLP on flat vectors ``(B, D)``.
    :param latent_dim: dimension ``Z`` of the latent code.
    :param hidden_sizes: hidden layer widths of the encoder; the decoder mirrors them. For conv
        nets, the dense layers between the convolutions and the latent code.
    :param activation: ``relu``, ``tanh``, ``softplus`` or ``elu``.
    :param likelihood: ``bernoulli``, ``continuous-bernoulli`` or ``gaussian``.
    :param estimator: how the guide's sample is differentiated (see :mod:`pyro_vae.estimators`;
        default ``reparam``, for a discrete latent ``disarm`` (Bernoulli) or ``gumbel``).
    :param baseline_beta: decay of the ``reinforce-baseline`` running average.
    :param image_shape: ``(H, W)`` or ``(C, H, W)`` instead of ``data_dim``; the MLP sees the
        images flattened, conv nets and a hand-written pair as ``(B, C, H, W)``.
    :param arch: ``mlp`` or ``conv`` (:mod:`pyro_vae.networks`).
    :param conv_channels: channels of the conv encoder's stride-2 convolutions.
    :param encoder: a hand-written encoder (an ``nn.Module``), with ``decoder``. Both must honour
        the contract in :mod:`pyro_vae.networks`: ``encoder(x) -> (loc, scale)``, each
        ``(B, Z)``, and ``decoder(z) -> `` the likelihood's parameters, each ``(..., C, H, W)``.
        The pair is checked on a batch of two blank images when the VAE is built.
    :param decoder: see ``encoder``.
    :param prior: ``normal``, ``mixture``, ``vamp`` or ``hyperspherical``
        (:mod:`pyro_vae.priors`). For ``hyperspherical`` the encoder's second output is the
        guide's concentration, ``(B, 1)``, rather than a scale ``(B, Z)``.
    :param prior_components: ``K``, the Gaussians of ``mixture`` or the pseudo-inputs of
        ``vamp`` (default 10 and 500).
    :param center_input: the encoder sees each image less the training images' mean
        (:class:`~pyro_vae.networks.CenteredInput`), as in the ARM and DisARM experiments.
    :param checked: the settings were checked already (:meth:`pyro_vae.TrainConfig.validate`,
        as :func:`pyro_vae.build.build_vae` does): they are not checked again.

    Images go through the model in the shape :attr:`event_shape`: ``(D,)`` for the MLP,
    ``(C, H, W)`` otherwise. The networks are registered with ``pyro.module`` as ``"encoder"``
    and ``"decoder"`` in Pyro's global param store; :func:`pyro_vae.train.fit` and
    :func:`pyro_vae.evaluate.evaluate` run in a store of their own
    (:func:`pyro_vae.isolation.isolated`), so two VAEs in one process never share parameters.
    """

    def __init__(
        self,
        data_dim: int | None = None,
        latent_dim: int = 20,
        hidden_sizes: Sequence[int] = (400,),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        estimator: str | None = None,
        baseline_beta: float = 0.9,
        *,
        image_shape: Sequence[int] | None = None,
        arch: str = "mlp",
        conv_channels: Sequence[int] = (32, 64),
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        prior: str | None = None,
        prior_components: int | None = None,
        latent: str | None = None,
        categories: int | None = None,
        center_input: bool = False,
        checked: bool = False,
    ) -> None:
        super().__init__()
        if (data_dim is None) == (image_shape is None):
            raise ConfigError("give a VAE either data_dim or image_shape (one of them)")
        if data_dim is not None and not (is_whole(data_dim) and data_dim >= 1):
            raise ConfigError(f"data_dim must be a positive whole number, got {data_dim!r}")
        custom = encoder is not None or decoder is not None
        if not checked:  # a VAE built from a validated TrainConfig is not checked again
            hidden_sizes = check_network_settings(
                latent_dim, hidden_sizes, activation, likelihood, arch, conv_channels
            )
        space, prior, estimator = _latent_settings(latent, prior, categories, estimator,
                                                   baseline_beta, prior_components, latent_dim,
                                                   checked)  # fmt: skip
        shape = image_shape_chw(image_shape) if image_shape is not None else None
        self.image_shape: tuple[int, ...] | None = shape
        self.data_dim = int(data_dim) if data_dim is not None else math.prod(self.image_shape)
        if custom or arch == "conv":
            if self.image_shape is None:
                raise ConfigError(
                    "conv nets and hand-written networks see images as (C, H, W): give "
                    "image_shape instead of data_dim"
                )
            self.event_shape: tuple[int, ...] = self.image_shape
        else:
            self.event_shape = (self.data_dim,)
        self.latent_dim = int(latent_dim)
        self.likelihood = likelihood
        self.estimator = estimator
        self.arch = "custom" if custom else arch
        self.baseline_beta = float(baseline_beta)
        # beta of a beta-VAE: the weight of the latent site's terms (the KL) in the model and the
        # guide. 1 outside training; fit() sets it for each step (pyro_vae.objectives).
        self.kl_weight = 1.0
        self.prior: Prior = make_prior(prior, self.latent_dim, prior_components, self.event_shape,
                                       checked=True, latent=space)  # fmt: skip
        self._prior_has_parameters = any(True for _ in self.prior.parameters())
        if custom:
            self.encoder, self.decoder = self._hand_written(encoder, decoder)
        else:
            self.encoder, self.decoder = self._built_in(arch, hidden_sizes, conv_channels,
                                                        activation)  # fmt: skip
        if center_input:  # the encoder sees x less the training mean (init_output_bias sets it)
            self.encoder = CenteredInput(self.encoder, self.event_shape)
        # the reinforce-nn-baseline's b(x); registered with Pyro in the guide
        self.baseline = (
            Baseline(self.data_dim, event_dims=len(self.event_shape))
            if estimator == "reinforce-nn-baseline"
            else None
        )

    def _hand_written(self, encoder, decoder) -> tuple[nn.Module, nn.Module]:
        if encoder is None or decoder is None:
            raise ConfigError("give both a hand-written encoder and decoder, or neither")
        for name, net in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(net, nn.Module):
                raise ConfigError(f"the {name} must be a torch.nn.Module, got {net!r}")
        self.encoder, self.decoder = encoder, decoder
        self._check_contract()
        return encoder, decoder

    #: whether the model and guide need each image's label (a label-conditioned CVAE's)
    needs_labels = False

    @property
    def latent(self) -> LatentSpace:
        """The space ``z`` lives in, its prior's (:mod:`pyro_vae.latents`)."""
        return self.prior.latent

    @property
    def scale_dim(self) -> int:
        """The size of the encoder's second output: ``Z`` scales, or one concentration."""
        return self.latent.second_output_size(self.latent_dim)

    def _built_in(self, arch, hidden_sizes, conv_channels, activation) -> tuple[nn.Module, ...]:
        z = self.latent.code_size(self.latent_dim)
        if arch == "conv":
            return (
                ConvEncoder(self.image_shape, z, conv_channels, hidden_sizes, activation,
                            self.scale_dim),  # fmt: skip
                ConvDecoder(self.image_shape, z, conv_channels, hidden_sizes, activation,
                            self.likelihood),
            )  # fmt: skip
        return (
            Encoder(self.data_dim, z, hidden_sizes, activation, self.scale_dim),
            Decoder(self.data_dim, z, hidden_sizes, activation, self.likelihood),
        )

    @torch.no_grad()
    def _check_contract(self) -> None:
        """Run a hand-written pair on two blank images; :class:`ConfigError` if it breaks the
        contract of :mod:`pyro_vae.networks`. Eval mode, so batch statistics stay as they are."""
        modes = [m.training for m in self.modules()]
        self.eval()
        try:
            parameter = next(self.encoder.parameters(), None)
            device = parameter.device if parameter is not None else "cpu"
            x = torch.zeros(2, *self.event_shape, device=device)
            loc_scale = _call("encoder", self.encoder, x)
            if _shapes(loc_scale) != self._encoder_shapes(2):
                raise ConfigError(
                    f"the encoder must return {self.latent.encoder_contract(self.latent_dim)}; "
                    f"images {tuple(x.shape)} gave {_shapes(loc_scale)}"
                )
            second = self.latent.second_output
            if second is not None and not (loc_scale[1] > 0).all():
                raise ConfigError(
                    f"the encoder's {second} must be positive (softplus(.) + 1e-5, say)"
                )
            code = self.latent.code_size(self.latent_dim)
            z = torch.zeros(3, 2, code, device=device)  # (particles, batch, code)
            params = _call("decoder", self.decoder, z)
            count = 2 if self.likelihood == "gaussian" else 1
            if _shapes(params) != [(3, 2, *self.event_shape)] * count:
                what = "(mean, scale)" if count == 2 else "(logits,)"
                raise ConfigError(
                    f"the decoder must return {what}, each (..., "
                    f"{', '.join(map(str, self.event_shape))}), for likelihood "
                    f"{self.likelihood!r}; latents {tuple(z.shape)} gave {_shapes(params)}"
                )
        finally:
            for module, mode in zip(self.modules(), modes, strict=True):
                module.training = mode

    def _encoder_shapes(self, batch: int) -> list[tuple[int, int]]:
        """The shapes of the encoder's outputs for ``batch`` images."""
        shapes = [(batch, self.latent.code_size(self.latent_dim))]
        return shapes + ([(batch, self.scale_dim)] if self.scale_dim else [])

    @torch.no_grad()
    def check_on_batches(self, batches: list[torch.Tensor]) -> None:
        """Run a hand-written pair as training will: in training mode, on ``batches`` of real
        images (the first batch, and a smaller last one), checking the outputs' shapes and
        dtype. Copies run it, with the RNGs forked: the networks' weights, batch statistics
        and the run's random streams are left as they were.

        :raises ConfigError: a network that fails on them or breaks the contract, naming it.
        """
        encoder, decoder = copy.deepcopy(self.encoder), copy.deepcopy(self.decoder)
        encoder.train(), decoder.train()
        devices = [x.device] if (x := batches[0]).is_cuda else []
        with torch.random.fork_rng(devices=devices):
            for x in batches:
                what = f"a batch of {len(x)} training images {tuple(x.shape)}"
                loc_scale = _call("encoder", encoder, x, what)
                shapes = _shapes(loc_scale)
                expected = self._encoder_shapes(len(x))
                if shapes != expected:
                    raise ConfigError(
                        f"the encoder must give {expected} for {what}; it gave {shapes}"
                    )
                dtypes = {t.dtype for t in loc_scale}
                if dtypes != {x.dtype}:
                    raise ConfigError(
                        f"the encoder returns {', '.join(sorted(map(str, dtypes)))} for "
                        f"{x.dtype} images; its outputs must be {x.dtype} (the images' dtype)"
                    )
                code = self.latent.point(loc_scale[0])
                params = _call("decoder", decoder, code, f"the latents of {what}")
                items = params if isinstance(params, tuple) else (params,)
                if any(tuple(t.shape) != (len(x), *self.event_shape) for t in items):
                    raise ConfigError(
                        f"the decoder must give (..., {', '.join(map(str, self.event_shape))}) "
                        f"for the latents of {what}; it gave {_shapes(params)}"
                    )
                if {t.dtype for t in items} != {x.dtype}:
                    raise ConfigError(
                        f"the decoder returns {items[0].dtype} for {x.dtype} latents; its "
                        f"outputs must be {x.dtype}"
                    )

    @torch.no_grad()
    def init_output_bias(self, mean_image: torch.Tensor) -> None:
        """Start the decoder at the data's marginal: output bias ``logit(mean pixel)``; and
        centre the encoder's input on ``mean_image`` where it is centred (``center_input``).

        With all weights small, ``p(x|z)`` then begins near the per-pixel marginal of the
        training data rather than at 0.5 everywhere, which saves the first epoch from
        learning the background (Burda et al. 2015 initialize their decoders this way).
        """
        if isinstance(self.encoder, CenteredInput):
            self.encoder.mean.copy_(mean_image.reshape(self.event_shape))
        init = getattr(self.decoder, "init_output_bias", None)
        if init is not None:  # a hand-written decoder may not have one
            init(torch.logit(mean_image.clamp(1e-3, 1 - 1e-3)).reshape(self.event_shape))

    def _run(self, name: str, value: torch.Tensor):
        """``self.encoder(value)`` or ``self.decoder(value)``. A hand-written network's error is
        named (a :class:`ConfigError` whose cause is the network's own exception, traceback
        and all), rather than surfacing from inside Pyro's trace of the model or guide."""
        net = getattr(self, name)
        if self.arch != "custom":
            return net(value)
        try:
            return net(value)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            mode = "training" if net.training else "eval"
            raise ConfigError(
                f"the hand-written {name} ({type(net).__name__}) failed on input of shape "
                f"{tuple(value.shape)} in {mode} mode: {type(e).__name__}: {first}"
            ) from e

    def likelihood_distribution(self, z: torch.Tensor) -> dist.TorchDistribution:
        """``p(x|z)`` with event shape :attr:`event_shape` and batch shape ``z.shape[:-1]``."""
        params = self._run("decoder", z)
        if self.likelihood == "bernoulli":
            return IndependentBernoulli(dist.Bernoulli(logits=params[0]), len(self.event_shape))
        if self.likelihood == "continuous-bernoulli":
            base = dist.ContinuousBernoulli(logits=params[0])
        else:
            base = dist.Normal(*params)
        return base.to_event(len(self.event_shape))

    def model(self, x: torch.Tensor) -> None:
        """``p(z) p(x|z)`` for a batch ``x`` of shape ``(B, *event_shape)``."""
        pyro.module("decoder", self.decoder)
        if self._prior_has_parameters:
            pyro.module("prior", self.prior)
        batch = x.shape[0]
        with pyro.plate("data", batch):
            prior = self.prior.batch_distribution((batch,), self.encoder)
            with self._weighted():
                z = pyro.sample("z", prior)  # (B, Z), or (K, B, Z) under vectorized particles
            pyro.sample("x", self.likelihood_distribution(self.latent.decoder_input(z)), obs=x)

    def prior_distribution(self) -> dist.TorchDistribution:
        """``p(z)``, event shape ``(Z,)``, batch shape ``()``."""
        return self.prior.distribution(self.encoder)

    def guide_distribution(self, x: torch.Tensor) -> dist.TorchDistribution:
        """``q(z|x)`` for images ``x``, ``(B, *event_shape)``, set up for the estimator."""
        loc, scale = _pair(self._run("encoder", x))  # (B, Z) each; (B, 1) on the sphere
        return self.latent.guide(loc, scale, self.estimator)

    def guide(self, x: torch.Tensor) -> None:
        """``q(z|x)`` for a batch ``x``, ``(B, *event_shape)``: ``N(mu(x), diag sigma(x)^2)``,
        or Power Spherical on the sphere."""
        pyro.module("encoder", self.encoder)
        if self.baseline is not None:
            pyro.module("baseline", self.baseline)
        infer = baseline_options(self.estimator, x, self.baseline, self.baseline_beta)
        if self.estimator == "enumerate":  # TraceEnum_ELBO sums over every code
            infer = {"enumerate": "parallel"}
        with pyro.plate("data", x.shape[0]):
            q = self.guide_distribution(x)
            with self._weighted():
                pyro.sample("z", q, infer=infer)

    def _weighted(self):
        """``poutine.scale`` by :attr:`kl_weight` for the latent site, in model and guide alike:
        Pyro's ELBOs then weight ``log p(z) - log q(z|x)``, or the closed-form KL, by beta and
        leave ``log p(x|z)`` as it is (Higgins et al. 2017)."""
        if self.kl_weight == 1.0:
            return contextlib.nullcontext()
        return poutine.scale(scale=self.kl_weight)

    @contextlib.contextmanager
    def weighting_kl(self, kl_weight: float) -> Iterator[None]:
        """Within the block the model and guide weight the KL by ``kl_weight`` (beta)."""
        before, self.kl_weight = self.kl_weight, float(kl_weight)
        try:
            yield
        finally:
            self.kl_weight = before

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's ``(loc, scale)`` for images ``x`` of shape ``(B, *event_shape)``; on
        the sphere, its mean direction (a unit vector) and concentration, ``(B, 1)``."""
        loc, scale = _pair(self._run("encoder", x))
        return self.latent.code(loc), scale

    def hmc_refusal(self, what: str) -> str | None:
        """Why ``what`` (NUTS, an HMC E-step) cannot run on this model's posterior, or
        ``None``."""
        return self.latent.hmc_refusal(what)

    def network_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's outputs on ``x`` and the decoder's at their point (for the check of
        a divergence, :func:`pyro_vae.evaluate.outputs_finite`)."""
        outputs = [t for t in self.encode(x) if t is not None]
        return outputs + list(self.decoder(self.latent.point(outputs[0])))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean image ``E[x|z]``, ``(..., *event_shape)``, for latents ``(..., Z)``."""
        return self.likelihood_distribution(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``E[x | z = mu(x)]``: the mean image decoded from the guide's mean."""
        return self.decode(self.latent.point(self.encode(x)[0]))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images ``E[x|z]`` for ``num_samples`` draws ``z ~ p(z)``, ``(N, *event_shape)``."""
        return self.decode(self.prior.sample(num_samples, generator, self.encoder))
