"""How far is the amortized guide from the true posterior? NUTS on ``p(z|x)``, read with ArviZ.

For a trained VAE and one image ``x``, the true posterior ``p(z|x) ∝ p(z) p(x|z)`` has no closed
form; Pyro's NUTS samples it with the trained decoder held fixed. ArviZ then gives the
convergence diagnostics (R-hat, effective sample size), and the guide's samples ``q(z|x)`` can
be set against NUTS's. The gap ``log p(x) - ELBO`` equals ``KL(q(z|x) || p(z|x))``: how much
the amortized guide loses on this image.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro.infer import MCMC, NUTS

from pyro_vae.evaluate import importance_sampled_log_likelihood
from pyro_vae.model import VAE

if TYPE_CHECKING:
    import arviz as az

__all__ = ["PosteriorCheck", "check_posterior", "nuts_posterior", "posterior_figure"]


def _arviz():
    # imported on first use: it is slow to import, and announces its next major version
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz

    return arviz


def nuts_posterior(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 2,
    seed: int = 0,
) -> az.InferenceData:
    """Samples of ``p(z|x)`` for one image ``x`` (``(D,)``) by NUTS, as ArviZ ``InferenceData``.

    Chains run one after another from the guide's mean plus noise, each with its own seed; the
    decoder's parameters are constants.
    """
    x = x.reshape(1, -1)
    latent_dim = vae.latent_dim

    def model():
        z = pyro.sample("z", dist.Normal(x.new_zeros(1, latent_dim), 1.0).to_event(1))
        pyro.sample("x", vae.likelihood_distribution(z), obs=x)

    loc, scale = vae.encode(x)
    chains = []
    for chain in range(num_chains):
        pyro.set_rng_seed(seed + chain)
        start = {"z": loc + 0.5 * scale * torch.randn_like(loc)}
        mcmc = MCMC(
            NUTS(model),
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            initial_params=start,
            disable_progbar=True,
        )
        with pyro.get_param_store().scope(), torch.enable_grad():
            mcmc.run()
        chains.append(mcmc.get_samples()["z"].reshape(num_samples, latent_dim))
    draws = torch.stack(chains).detach().cpu().numpy()  # (chains, draws, Z)
    return _arviz().from_dict(posterior={"z": draws}, dims={"z": ["latent"]})


@dataclass
class PosteriorCheck:
    """One image: the guide against the true posterior, in nats and in samples."""

    index: int
    elbo: float  # E_q[log p(x,z) - log q(z|x)], K importance samples
    log_likelihood: float  # importance-sampled log p(x), the same K samples
    gap: float  # log p(x) - ELBO = KL(q(z|x) || p(z|x)) >= 0, up to Monte Carlo error
    r_hat_max: float  # over latent dimensions; below 1.01 is the usual bar
    ess_bulk_min: float
    mcse_mean_max: float  # Monte Carlo standard error of the NUTS means
    nuts_mean: list[float]
    nuts_sd: list[float]
    guide_mean: list[float]
    guide_sd: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def check_posterior(
    vae: VAE,
    x: torch.Tensor,
    index: int = 0,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 2,
    num_particles: int = 5000,
    seed: int = 0,
) -> tuple[PosteriorCheck, az.InferenceData]:
    """NUTS on ``p(z|x)``, ArviZ's summary, and the ELBO gap for one image ``x``."""
    idata = nuts_posterior(vae, x, num_samples, warmup_steps, num_chains, seed)
    summary = _arviz().summary(idata, var_names=["z"], kind="all")
    pyro.set_rng_seed(seed)
    log_px, elbo = importance_sampled_log_likelihood(
        vae.model, vae.guide, x.reshape(1, -1), num_particles
    )
    loc, scale = vae.encode(x.reshape(1, -1))
    draws = idata.posterior["z"].values.reshape(-1, vae.latent_dim)
    check = PosteriorCheck(
        index=index,
        elbo=elbo.item(),
        log_likelihood=log_px.item(),
        gap=(log_px - elbo).item(),
        r_hat_max=float(summary["r_hat"].max()),
        ess_bulk_min=float(summary["ess_bulk"].min()),
        mcse_mean_max=float(summary["mcse_mean"].max()),
        nuts_mean=draws.mean(0).tolist(),
        nuts_sd=draws.std(0).tolist(),
        guide_mean=loc[0].tolist(),
        guide_sd=scale[0].tolist(),
    )
    return check, idata


def posterior_figure(
    vae: VAE, x: torch.Tensor, idata: az.InferenceData, num_dims: int = 4, seed: int = 0
) -> Figure:
    """Guide samples against NUTS samples, for the latent dimensions where NUTS spreads most.

    The diagonal shows each dimension's marginal (histograms); below it, pairs of dimensions.
    """
    draws = idata.posterior["z"].values.reshape(-1, vae.latent_dim)  # (S, Z)
    loc, scale = vae.encode(x.reshape(1, -1))
    generator = torch.Generator(device=loc.device).manual_seed(seed)
    eps = torch.randn(len(draws), vae.latent_dim, generator=generator, device=loc.device)
    guide = (loc + scale * eps).cpu().numpy()
    dims = np.argsort(-draws.std(0))[: min(num_dims, vae.latent_dim)]
    n = len(dims)
    fig = Figure(figsize=(2.6 * n, 2.6 * n))
    for row, i in enumerate(dims):
        for col, j in enumerate(dims[: row + 1]):
            ax = fig.add_subplot(n, n, row * n + col + 1)
            if i == j:
                bins = np.linspace(
                    min(draws[:, i].min(), guide[:, i].min()),
                    max(draws[:, i].max(), guide[:, i].max()),
                    30,
                )
                ax.hist(draws[:, i], bins, density=True, alpha=0.5, label="NUTS p(z|x)")
                ax.hist(guide[:, i], bins, density=True, alpha=0.5, label="guide q(z|x)")
                if row == 0:
                    ax.legend(fontsize="small")
            else:
                ax.scatter(draws[:, j], draws[:, i], s=2, alpha=0.3, label="NUTS")
                ax.scatter(guide[:, j], guide[:, i], s=2, alpha=0.3, label="guide")
            if row == n - 1:
                ax.set_xlabel(f"z{j}")
            if col == 0:
                ax.set_ylabel(f"z{i}")
    fig.suptitle("guide q(z|x) against NUTS samples of p(z|x)")
    fig.tight_layout()
    return fig
