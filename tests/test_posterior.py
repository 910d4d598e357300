"""NUTS on p(z|x) through ArviZ, against self-normalized importance sampling of p(z|x)."""

import math
import random

import numpy as np
import pyro
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import same_color

from pyro_vae.errors import ConfigError
from pyro_vae.model import VAE
from pyro_vae.posterior import (
    ESS_PER_CHAIN_MIN,
    R_HAT_MAX,
    check_posterior,
    nuts_posterior,
    posterior_figure,
)


@pytest.fixture(scope="module")
def checked():
    pyro.set_rng_seed(3)
    vae = VAE(data_dim=8, latent_dim=2, hidden_sizes=(6,)).eval()
    with torch.no_grad():
        vae.decoder.out.weight.mul_(4.0)  # a decoder that makes the posterior differ from q
    x = torch.bernoulli(torch.full((8,), 0.5))
    check, idata = check_posterior(vae, x, num_samples=400, warmup_steps=300, num_particles=4000)
    return vae, x, check, idata


@pytest.fixture(scope="module")
def unconverged():
    """Four chains of 20 draws and no warm-up: NUTS has neither adapted nor mixed."""
    pyro.set_rng_seed(3)
    vae = VAE(data_dim=8, latent_dim=2, hidden_sizes=(6,)).eval()
    x = torch.bernoulli(torch.full((8,), 0.5))
    check, idata = check_posterior(
        vae, x, num_samples=20, warmup_steps=0, num_chains=4, num_particles=10, seed=5
    )
    return vae, x, check, idata


def test_nuts_matches_importance_sampling_of_the_posterior(checked):
    vae, x, check, idata = checked
    assert idata.posterior["z"].shape == (2, 400, 2)  # chains, draws, latent
    assert check.r_hat_max < 1.05 and check.ess_bulk_min > 100
    # self-normalized importance sampling from the guide: E_p(z|x)[z] = E_q[w z] / E_q[w]
    torch.manual_seed(0)
    loc, scale = vae.encode(x.reshape(1, -1))
    q = torch.distributions.Normal(loc[0], scale[0])
    z = q.sample((50000,))  # (S, 2)
    with torch.no_grad():
        log_w = (
            torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
            + vae.likelihood_distribution(z).log_prob(x)
            - q.log_prob(z).sum(-1)
        )
    w = torch.softmax(log_w, 0)
    snis_mean = (w[:, None] * z).sum(0)
    ess = 1 / (w**2).sum()
    snis_sd = ((w[:, None] * (z - snis_mean) ** 2).sum(0)).sqrt()
    assert ess > 1000
    for d in range(2):
        se = math.sqrt(check.mcse_mean_max**2 + (snis_sd[d] ** 2 / ess).item())
        assert abs(check.nuts_mean[d] - snis_mean[d].item()) < 5 * se, (d, check, snis_mean)
        assert abs(check.nuts_sd[d] - snis_sd[d].item()) < 0.15 * snis_sd[d].item()


def test_gap_is_the_kl_to_the_posterior(checked):
    vae, x, check, _ = checked
    assert check.gap == pytest.approx(check.log_likelihood - check.elbo)
    assert check.gap > 0  # the guide is not the posterior
    assert check.guide_sd != pytest.approx(check.nuts_sd, rel=0.05)


def test_posterior_figure(checked):
    vae, x, _, idata = checked
    fig = posterior_figure(vae, x, idata)
    assert len(fig.axes) == 3  # 2 marginals + 1 pair


def test_well_mixed_chains_raise_no_warning(checked):
    _, _, check, _ = checked
    assert check.r_hat_max < R_HAT_MAX
    assert check.ess_bulk_min > 2 * ESS_PER_CHAIN_MIN
    assert check.warnings == []


def test_unconverged_chains_raise_warnings(unconverged):
    _, _, check, _ = unconverged
    assert check.r_hat_max > R_HAT_MAX and check.ess_bulk_min < 4 * ESS_PER_CHAIN_MIN
    r_hat, ess = check.warnings
    assert r_hat.startswith(f"R-hat {check.r_hat_max:.3f} > 1.01 on z")
    assert "--num-samples" in r_hat and "--warmup" in r_hat
    assert ess.startswith(f"bulk ESS {check.ess_bulk_min:.0f} < 400 (100 per chain x 4 chains)")
    assert "--num-samples" in ess
    assert all("\n" not in line for line in check.warnings)


def test_check_posterior_leaves_the_global_rng_as_found():
    vae = VAE(data_dim=8, latent_dim=2, hidden_sizes=(6,)).eval()
    x = torch.bernoulli(torch.full((8,), 0.5))
    pyro.set_rng_seed(123)
    before = torch.get_rng_state(), np.random.get_state(), random.getstate()
    first, _ = check_posterior(vae, x, num_samples=10, warmup_steps=10, num_particles=10)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), before[1], strict=True))
    assert random.getstate() == before[2]
    torch.rand(5)  # the caller's RNG moved on: the result depends on the seed alone
    again, _ = check_posterior(vae, x, num_samples=10, warmup_steps=10, num_particles=10)
    assert again == first


def test_progress_bar_only_when_asked(capfd, monkeypatch):
    monkeypatch.delenv("CI", raising=False)  # Pyro hides its MCMC bar wherever CI is set
    vae = VAE(data_dim=8, latent_dim=2, hidden_sizes=(6,)).eval()
    x = torch.bernoulli(torch.full((8,), 0.5))
    nuts_posterior(vae, x, num_samples=5, warmup_steps=5, num_chains=1)
    assert "Sample" not in capfd.readouterr().err
    nuts_posterior(vae, x, num_samples=5, warmup_steps=5, num_chains=1, progress=True)
    assert "Sample" in capfd.readouterr().err


def _red_texts(fig):
    return [t for t in fig.texts if same_color(t.get_color(), "red")]


def test_posterior_figure_shows_warnings_off_the_axes(unconverged):
    vae, x, check, idata = unconverged
    fig = posterior_figure(vae, x, idata, check=check)
    (alert,) = _red_texts(fig)
    assert alert.get_text().split() == " ".join(check.warnings).split()
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    box = alert.get_window_extent(renderer)
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_tightbbox(renderer)), ax
    (title,) = (t for t in fig.texts if t is not alert)
    assert not box.overlaps(title.get_window_extent(renderer))


def test_posterior_figure_without_warnings_has_no_red_text(checked, unconverged):
    vae, x, check, idata = checked
    assert _red_texts(posterior_figure(vae, x, idata, check=check)) == []
    vae, x, _, idata = unconverged
    assert _red_texts(posterior_figure(vae, x, idata)) == []


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"num_samples": 0}, id="no draws"),
        pytest.param({"num_chains": 0}, id="no chains"),
        pytest.param({"warmup_steps": -1}, id="negative warm-up"),
    ],
)
def test_nuts_settings_out_of_range_are_config_errors(bad):
    vae = VAE(data_dim=8, latent_dim=2, hidden_sizes=(6,)).eval()
    with pytest.raises(ConfigError, match="NUTS needs"):
        check_posterior(vae, torch.zeros(8), **{"num_samples": 5, "warmup_steps": 5, **bad})
