"""NUTS on p(z|x) through ArviZ, against self-normalized importance sampling of p(z|x)."""

import math

import pyro
import pytest
import torch

from pyro_vae.model import VAE
from pyro_vae.posterior import check_posterior, posterior_figure


@pytest.fixture(scope="module")
def checked():
    pyro.set_rng_seed(3)
    vae = VAE(data_dim=8, latent_dim=2, hidden_sizes=(6,)).eval()
    with torch.no_grad():
        vae.decoder.out.weight.mul_(4.0)  # a decoder that makes the posterior differ from q
    x = torch.bernoulli(torch.full((8,), 0.5))
    check, idata = check_posterior(vae, x, num_samples=400, warmup_steps=300, num_particles=4000)
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
