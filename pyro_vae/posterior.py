"""How far is the amortized guide from the true posterior? NUTS on ``p(z|x)``, read with ArviZ.

For a trained VAE and one image ``x``, the true posterior ``p(z|x) ∝ p(z) p(x|z)`` has no closed
form; Pyro's NUTS samples it with the trained decoder held fixed. ArviZ then gives the
convergence diagnostics (R-hat, effective sample size), and the guide's samples ``q(z|x)`` can
be set against NUTS's. The gap ``log p(x) - ELBO`` equals ``KL(q(z|x) || p(z|x))``: how much
the amortized guide loses on this image.

NUTS's samples are trusted only when the chains agree (R-hat below :data:`R_HAT_MAX`) and hold
enough independent draws (bulk ESS above :data:`ESS_PER_CHAIN_MIN` per chain); otherwise
:func:`check_posterior` says so in :attr:`PosteriorCheck.warnings`.
"""

from __future__ import annotations

import numbers
import textwrap
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyro
import torch
from matplotlib.figure import Figure
from pyro.infer import MCMC, NUTS

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.evaluate import check_images, importance_sampled_log_likelihood
from pyro_vae.isolation import MAX_SEED, isolated
from pyro_vae.model import VAE

if TYPE_CHECKING:
    import arviz as az

__all__ = [
    "ESS_PER_CHAIN_MIN",
    "R_HAT_MAX",
    "PosteriorCheck",
    "check_posterior",
    "nuts_posterior",
    "posterior_figure",
]

# Vehtari et al. (2021): trust the draws when R-hat < 1.01 and bulk ESS > 100 per chain
R_HAT_MAX = 1.01
ESS_PER_CHAIN_MIN = 100


def _arviz():
    # imported on first use: it is slow to import, and announces its next major version
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz

    return arviz


def _one_image(vae: VAE, x) -> torch.Tensor:
    """``x`` as one checked image of shape ``vae.event_shape``, or a :class:`DataError`."""
    if isinstance(x, torch.Tensor) and tuple(x.shape) == tuple(vae.event_shape):
        x = x.unsqueeze(0)
    x = check_images(vae, x, "the image")
    if len(x) != 1:
        shape = ", ".join(map(str, vae.event_shape))
        raise DataError(f"the posterior check takes one image ({shape}), got {len(x)} images")
    return x[0]


def nuts_posterior(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 2,
    seed: int = 0,
    progress: bool = False,
) -> az.InferenceData:
    """Samples of ``p(z|x)`` for one image ``x`` (``(D,)``) by NUTS, as ArviZ ``InferenceData``.

    Chains run one after another from the guide's mean plus noise, each with its own seed; the
    decoder's parameters are constants. The caller's global RNG states (torch, NumPy, Python)
    are restored on return.

    :param progress: show Pyro's progress bar (on stderr), one per chain.
    :raises ConfigError: no draws, no chains, or a negative warm-up.
    """
    refusal = vae.hmc_refusal("nuts")
    if refusal:
        raise ConfigError(refusal)
    x = _one_image(vae, x)
    counts = (num_samples, warmup_steps, num_chains, seed)
    if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in counts):
        raise ConfigError(
            f"draws, warm-up steps, chains and seed must be whole numbers, got {counts}"
        )
    if min(num_samples, num_chains) < 1 or warmup_steps < 0:
        raise ConfigError(
            f"NUTS needs at least one draw and one chain and no negative warm-up, got "
            f"{num_samples} draws, {num_chains} chains, {warmup_steps} warm-up steps"
        )
    if not 0 <= seed <= MAX_SEED - (num_chains - 1):
        raise ConfigError(
            f"chain c is seeded with seed + c: the seed must be from 0 to 2**32 - {num_chains} "
            f"for {num_chains} chains, got {seed}"
        )
    x = x.reshape(1, *vae.event_shape)
    latent_dim = vae.latent_dim

    with torch.no_grad():  # p(z) once: its parameters are constants, as the decoder's are
        prior = vae.prior_distribution().expand([1])

    def model():
        z = pyro.sample("z", prior)
        pyro.sample("x", vae.likelihood_distribution(z), obs=x)

    loc, scale = vae.encode(x)
    chains = []
    for chain in range(num_chains):
        # each chain its own seeded streams (seed + chain) and param store
        with isolated(seed + chain), torch.enable_grad():
            start = {"z": loc + 0.5 * scale * torch.randn_like(loc)}
            mcmc = MCMC(
                NUTS(model),
                num_samples=num_samples,
                warmup_steps=warmup_steps,
                initial_params=start,
                disable_progbar=not progress,
            )
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
    r_hat_max: float  # over latent dimensions; trusted below R_HAT_MAX
    ess_bulk_min: float  # over latent dimensions; trusted above ESS_PER_CHAIN_MIN per chain
    mcse_mean_max: float  # Monte Carlo standard error of the NUTS means
    nuts_mean: list[float]
    nuts_sd: list[float]
    guide_mean: list[float]
    guide_sd: list[float]
    warnings: list[str] = field(default_factory=list)  # why NUTS's draws are not to be trusted

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
    progress: bool = False,
) -> tuple[PosteriorCheck, az.InferenceData]:
    """NUTS on ``p(z|x)``, ArviZ's summary, and the ELBO gap for one image ``x``.

    The NUTS draws are flagged in :attr:`PosteriorCheck.warnings` unless every latent dimension
    has rank-normalized split R-hat below :data:`R_HAT_MAX` (the chains agree) and bulk ESS above
    :data:`ESS_PER_CHAIN_MIN` times ``num_chains`` (enough independent draws for the means and
    their Monte Carlo errors). The caller's global RNG states are restored on return.

    :param progress: show Pyro's progress bar (on stderr) while NUTS runs.
    :raises ConfigError: no draws, no chains, a negative warm-up, or no particles.

    References:

    A. Vehtari, A. Gelman, D. Simpson, B. Carpenter, P.-C. Bürkner (2021), "Rank-normalization,
    folding, and localization: an improved R-hat for assessing convergence of MCMC", Bayesian
    Analysis 16(2).
    """
    x = _one_image(vae, x)
    if not isinstance(num_particles, numbers.Integral) or num_particles < 1:
        raise ConfigError(f"K must be a whole number of at least 1, got {num_particles!r}")
    idata = nuts_posterior(vae, x, num_samples, warmup_steps, num_chains, seed, progress)
    # unrounded: ArviZ's default rounding to 2 decimals would hide R-hat 1.014 > 1.01
    summary = _arviz().summary(idata, var_names=["z"], kind="all", round_to="none")
    r_hat = summary["r_hat"].to_numpy()  # (Z,)
    ess_bulk = summary["ess_bulk"].to_numpy()  # (Z,)
    with isolated(seed, params="inherit"):
        log_px, elbo = importance_sampled_log_likelihood(
            vae.model, vae.guide, x.reshape(1, *vae.event_shape), num_particles
        )
    loc, scale = vae.encode(x.reshape(1, *vae.event_shape))
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
        warnings=_convergence_warnings(r_hat, ess_bulk, num_chains),
    )
    return check, idata


def _convergence_warnings(r_hat: np.ndarray, ess_bulk: np.ndarray, num_chains: int) -> list[str]:
    """One line per failed diagnostic: what was measured, the bar, and what to do."""
    found = []
    # NaN (too few draws, or a chain that never moved) fails too
    worst = int(np.argmax(np.nan_to_num(r_hat, nan=np.inf)))
    if not r_hat[worst] < R_HAT_MAX:
        found.append(
            f"R-hat {r_hat[worst]:.3f} > {R_HAT_MAX} on z{worst}: the chains disagree; "
            "draw more samples (--num-samples) or warm up longer (--warmup)"
        )
    ess_min = ESS_PER_CHAIN_MIN * num_chains
    worst = int(np.argmin(np.nan_to_num(ess_bulk, nan=-np.inf)))
    if not ess_bulk[worst] > ess_min:
        found.append(
            f"bulk ESS {ess_bulk[worst]:.0f} < {ess_min} ({ESS_PER_CHAIN_MIN} per chain x "
            f"{num_chains} chains) on z{worst}: too few independent draws; draw more samples "
            "(--num-samples) or run more chains (--chains)"
        )
    return found


def posterior_figure(
    vae: VAE,
    x: torch.Tensor,
    idata: az.InferenceData,
    num_dims: int = 4,
    seed: int = 0,
    check: PosteriorCheck | None = None,
) -> Figure:
    """Guide samples against NUTS samples, for the latent dimensions where NUTS spreads most.

    The diagonal shows each dimension's marginal (histograms); below it, pairs of dimensions.

    :param check: the :func:`check_posterior` result for the same draws; its warnings, if any,
        are printed in red under the plots, so that an unconverged picture is not taken at
        face value.
    """
    draws = idata.posterior["z"].values.reshape(-1, vae.latent_dim)  # (S, Z)
    loc, scale = vae.encode(x.reshape(1, *vae.event_shape))
    generator = torch.Generator(device=loc.device).manual_seed(seed)
    eps = torch.randn(len(draws), vae.latent_dim, generator=generator, device=loc.device)
    guide = (loc + scale * eps).cpu().numpy()
    dims = np.argsort(-draws.std(0))[: min(num_dims, vae.latent_dim)]
    n = len(dims)
    warned = bool(check and check.warnings)
    width = max(2.6 * n, 5.2) if warned else 2.6 * n  # room for the warnings with one dimension
    alert = _wrap_warnings(check.warnings, width) if warned else ""
    alert_height = 0.16 * (alert.count("\n") + 1) if alert else 0.0  # inches, 'small' text
    fig = Figure(figsize=(width, 2.6 * n + alert_height))
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
    if alert:
        fig.supxlabel(alert, color="red", fontsize="small")  # tight_layout makes room for it
    fig.tight_layout()
    return fig


def _wrap_warnings(lines: list[str], width: float) -> str:
    """The warnings as one block of text, wrapped to a figure ``width`` inches wide."""
    chars = int(width * 14)  # 'small' text is about 8 pt: some 15 characters to the inch
    return "\n".join(
        textwrap.fill(line, chars, subsequent_indent="  ", break_on_hyphens=False) for line in lines
    )
