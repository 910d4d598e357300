"""The VAE as a Pyro model and guide.

Generative model (Kingma & Welling 2013)::

    z ~ N(0, I)                       # p(z), z in R^Z
    x | z ~ p(x | decoder(z))         # Bernoulli, continuous Bernoulli or Gaussian per pixel

Guide (the amortized variational posterior)::

    z | x ~ N(mu(x), diag(sigma(x)^2))    # mu, sigma = encoder(x)

Both run under one ``pyro.plate("data")`` over the batch, so every image has its own latent and
Pyro scales and scores them image by image.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.checks import is_whole
from pyro_vae.errors import ConfigError
from pyro_vae.estimators import baseline_options, check_estimator, guide_distribution
from pyro_vae.networks import Baseline, Decoder, Encoder, check_network_settings

__all__ = ["VAE"]


class VAE(nn.Module):
    """A variational autoencoder with Pyro ``model`` and ``guide`` methods.

    :param data_dim: pixels per (flattened) image.
    :param latent_dim: dimension ``Z`` of the latent code.
    :param hidden_sizes: hidden layer widths of the encoder; the decoder mirrors them.
    :param activation: ``relu``, ``tanh``, ``softplus`` or ``elu``.
    :param likelihood: ``bernoulli``, ``continuous-bernoulli`` or ``gaussian``.
    :param estimator: how the guide's sample is differentiated (see :mod:`pyro_vae.estimators`).
    :param baseline_beta: decay of the ``reinforce-baseline`` running average.

    The networks are registered with ``pyro.module`` as ``"encoder"`` and ``"decoder"`` in
    Pyro's global param store; :func:`pyro_vae.train.fit` and :func:`pyro_vae.evaluate.evaluate`
    run in a store of their own (:func:`pyro_vae.isolation.isolated`), so two VAEs in one
    process never share parameters.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int = 20,
        hidden_sizes: Sequence[int] = (400,),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        estimator: str = "reparam",
        baseline_beta: float = 0.9,
    ) -> None:
        super().__init__()

        if not (is_whole(data_dim) and data_dim >= 1):
            raise ConfigError(f"data_dim must be a positive whole number, got {data_dim!r}")
        hidden_sizes = check_network_settings(latent_dim, hidden_sizes, activation, likelihood)
        check_estimator(estimator, baseline_beta)
        self.data_dim = int(data_dim)
        self.latent_dim = int(latent_dim)
        self.likelihood = likelihood
        self.estimator = estimator
        self.encoder = Encoder(self.data_dim, self.latent_dim, hidden_sizes, activation)
        self.decoder = Decoder(self.data_dim, self.latent_dim, hidden_sizes, activation, likelihood)
        self.baseline_beta = float(baseline_beta)
        # the reinforce-nn-baseline's b(x); registered with Pyro in the guide
        self.baseline = Baseline(self.data_dim) if estimator == "reinforce-nn-baseline" else None

    @torch.no_grad()
    def init_output_bias(self, mean_image: torch.Tensor) -> None:
        """Start the decoder at the data's marginal: output bias ``logit(mean pixel)``.

        With all weights small, ``p(x|z)`` then begins near the per-pixel marginal of the
        training data rather than at 0.5 everywhere, which saves the first epoch from
        learning the background (Burda et al. 2015 initialize their decoders this way).
        """
        logits = torch.logit(mean_image.clamp(1e-3, 1 - 1e-3))
        self.decoder.out.bias[: self.data_dim] = logits.to(self.decoder.out.bias)

    def likelihood_distribution(self, z: torch.Tensor) -> dist.TorchDistribution:
        """``p(x|z)`` with event shape ``(D,)`` and batch shape ``z.shape[:-1]``."""
        params = self.decoder(z)
        if self.likelihood == "bernoulli":
            base = dist.Bernoulli(logits=params[0])
        elif self.likelihood == "continuous-bernoulli":
            base = dist.ContinuousBernoulli(logits=params[0])
        else:
            base = dist.Normal(*params)
        return base.to_event(1)

    def model(self, x: torch.Tensor) -> None:
        """``p(z) p(x|z)`` for a batch ``x`` of shape ``(B, D)``."""
        pyro.module("decoder", self.decoder)
        batch = x.shape[0]
        with pyro.plate("data", batch):
            prior = dist.Normal(x.new_zeros(batch, self.latent_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)  # (B, Z), or (K, B, Z) under vectorized particles
            pyro.sample("x", self.likelihood_distribution(z), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """``q(z|x) = N(mu(x), diag sigma(x)^2)`` for a batch ``x`` of shape ``(B, D)``."""
        pyro.module("encoder", self.encoder)
        if self.baseline is not None:
            pyro.module("baseline", self.baseline)
        infer = baseline_options(self.estimator, x, self.baseline, self.baseline_beta)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)  # (B, Z) each
            pyro.sample("z", guide_distribution(loc, scale, self.estimator), infer=infer)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's ``(loc, scale)`` for images ``x`` of shape ``(B, D)``."""
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean image ``E[x|z]``, ``(..., D)``, for latents ``z`` of shape ``(..., Z)``."""
        return self.likelihood_distribution(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``E[x | z = mu(x)]``: the mean image decoded from the guide's mean."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images ``E[x|z]`` for ``num_samples`` draws ``z ~ p(z)``, shape ``(N, D)``."""
        device = next(self.parameters()).device
        z = torch.randn(num_samples, self.latent_dim, generator=generator, device=device)
        return self.decode(z)
