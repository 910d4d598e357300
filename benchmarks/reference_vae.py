"""A hand-written PyTorch VAE, the reference pyro_vae is measured against.

No Pyro: the classic MLP VAE (pytorch/examples' ``vae/main.py`` shape) with the negative ELBO
written out: Bernoulli log-likelihood from logits plus the closed-form Gaussian KL
``-1/2 sum(1 + log sigma^2 - mu^2 - sigma^2)``. The importance-sampled log-likelihood is written
out too, so it checks pyro_vae's Pyro-trace-based estimate independently.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def log_weights(vae, x: torch.Tensor, encoded, eps: torch.Tensor, density=None) -> torch.Tensor:
    """``log p(x, z_k) - log q(z_k|x)``, ``(K, B)``, for pyro_vae's networks (any ``vae`` with
    its ``encoder`` and Bernoulli ``decoder``), written out without Pyro: ``encoded`` is the
    encoder's ``(loc, scale)`` for ``x``, ``eps`` the standard normal noise, ``(K, B, Z)``.
    ``log p(x|z)`` is ``-binary_cross_entropy_with_logits`` summed over the pixels, or
    ``density(logits, x)`` if given (e.g. :func:`pyro_vae.model.bernoulli_log_density`)."""
    loc, scale = encoded  # (B, Z) each
    z = loc + scale * eps  # (K, B, Z)
    logits = vae.decoder(z)[0]  # (K, B, D)
    if density is not None:
        log_px_z = density(logits, x.expand_as(logits))
    else:
        log_px_z = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
    log_pz = (-0.5 * z.pow(2) - HALF_LOG_2PI).sum(-1)
    log_qz = (-0.5 * eps.pow(2) - scale.log() - HALF_LOG_2PI).sum(-1)
    return log_px_z + log_pz - log_qz


class ReferenceVAE(nn.Module):
    def __init__(self, data_dim: int = 784, hidden: int = 400, latent_dim: int = 20) -> None:
        super().__init__()
        self.fc1 = nn.Linear(data_dim, hidden)
        self.fc_mu = nn.Linear(hidden, latent_dim)
        self.fc_logvar = nn.Linear(hidden, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, data_dim)

    def encode(self, x):
        h = F.relu(self.fc1(x))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z):
        return self.fc4(F.relu(self.fc3(z)))

    def elbo(self, x):
        """Per-image ELBO, ``(B,)``: one reparameterized sample, analytic KL."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        log_px_z = -F.binary_cross_entropy_with_logits(self.decode_logits(z), x, reduction="none")
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
        return log_px_z.sum(-1) - kl.sum(-1)

    @torch.no_grad()
    def log_weights(self, x, num_particles):
        """``log p(x, z_k) - log q(z_k|x)``, ``(K, B)``."""
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn(num_particles, *mu.shape)
        z = mu + std * eps  # (K, B, Z)
        logits = self.decode_logits(z)
        log_px_z = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * eps.pow(2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_px_z + log_pz - log_qz

    @torch.no_grad()
    def log_likelihood(self, images, num_particles=1000, batch_size=50):
        """Per-image importance-sampled ``log p(x)`` and the mean-log-weight ELBO."""
        lls, elbos = [], []
        for x in images.split(batch_size):
            log_w = self.log_weights(x, num_particles).double()
            lls.append(torch.logsumexp(log_w, 0) - math.log(num_particles))
            elbos.append(log_w.mean(0))
        return torch.cat(lls), torch.cat(elbos)
