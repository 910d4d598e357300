import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.poutine.util import site_is_subsample

from pyro_vae import VAE, ConfigError
from pyro_vae.latents import guide_distribution
from pyro_vae.model import IndependentBernoulli, bernoulli_log_density
from pyro_vae.networks import Encoder

# equalities and closed forms: CI runs these again with another CPU's arithmetic
pytestmark = pytest.mark.numerics


def _is_sample(site):
    return site["type"] == "sample" and not site_is_subsample(site)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli", "gaussian"])
def test_model_and_guide_agree_on_sites_and_shapes(likelihood):
    vae = VAE(data_dim=12, latent_dim=3, hidden_sizes=(8, 6), likelihood=likelihood)
    x = torch.bernoulli(torch.full((5, 12), 0.5))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    guide_sites = {n: s for n, s in guide_trace.nodes.items() if _is_sample(s)}
    model_sites = {n: s for n, s in model_trace.nodes.items() if _is_sample(s)}
    assert set(guide_sites) == {"z"} and set(model_sites) == {"z", "x"}
    assert guide_sites["z"]["value"].shape == (5, 3)
    assert model_sites["z"]["value"] is guide_sites["z"]["value"]
    for site in (guide_sites["z"], model_sites["z"], model_sites["x"]):
        assert site["fn"].batch_shape == (5,)
        assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    assert model_sites["x"]["fn"].event_shape == (12,)
    assert model_sites["x"]["is_observed"]
    # every network parameter is a param site, so SVI optimizes all of them
    params = {
        n for t in (guide_trace, model_trace) for n, s in t.nodes.items() if s["type"] == "param"
    }
    assert len(params) == len(list(vae.parameters()))


def test_encoder_scale_is_positive_even_for_extreme_inputs():
    encoder = Encoder(4, 2, (3,))
    with torch.no_grad():
        encoder.raw_scale.bias.fill_(-1e4)
        _, scale = encoder(torch.randn(7, 4))
        assert (scale > 0).all()
        encoder.raw_scale.bias.fill_(1e4)
        _, scale = encoder(torch.randn(7, 4))
        assert torch.isfinite(scale).all()


def test_estimator_switch():
    loc, scale = torch.zeros(3, 2), torch.ones(3, 2)
    reparam, reinforce = guide_distribution(loc, scale), guide_distribution(loc, scale, "reinforce")
    assert reparam.has_rsample and not reinforce.has_rsample
    assert reparam.event_shape == reinforce.event_shape == (2,)
    with pytest.raises(ConfigError, match="unknown estimator"):
        guide_distribution(loc, scale, "magic")


def test_vae_helpers_shapes_and_ranges():
    torch.manual_seed(0)
    vae = VAE(data_dim=12, latent_dim=3, hidden_sizes=(8,))
    x = torch.bernoulli(torch.full((5, 12), 0.5))
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (5, 3)
    recon = vae.reconstruct(x)
    samples = vae.sample(4, generator=torch.Generator().manual_seed(1))
    assert recon.shape == (5, 12) and samples.shape == (4, 12)
    assert ((samples > 0) & (samples < 1)).all()
    again = vae.sample(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(samples, again)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(latent_dim=0), "positive"),
        (dict(hidden_sizes=(0,)), "hidden sizes"),
        (dict(likelihood="poisson"), "unknown likelihood"),
        (dict(activation="sigmoidal"), "unknown activation"),
    ],
)
def test_bad_vae_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        VAE(data_dim=12, **kwargs)


def test_two_vaes_never_share_parameters():
    """Pyro's global param store must not let one VAE's training touch another's parameters."""
    from pyro_vae.train import TrainConfig, fit

    config = TrainConfig(
        dataset="mnist-sample",
        train_size=256,
        epochs=1,
        batch_size=64,
        hidden_sizes=(32,),
        latent_dim=4,
    )
    first = fit(config).vae
    before = [p.detach().clone() for p in first.parameters()]
    second = fit(TrainConfig(**{**config.to_dict(), "seed": 1})).vae
    assert all(torch.equal(a, b) for a, b in zip(before, first.parameters(), strict=True))
    assert not any(
        torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True)
    )
    assert len(pyro.get_param_store()) == 0  # training leaves the global store as it found it
    # and two runs with one seed in one process give the same parameters
    third = fit(config).vae
    assert all(torch.equal(a, b) for a, b in zip(before, third.parameters(), strict=True))


def test_pictures_of_a_vae():
    from matplotlib.figure import Figure

    from pyro_vae.plots import (
        interpolation_figure,
        latent_scatter_figure,
        manifold_figure,
        metrics_figure,
    )

    x = torch.bernoulli(torch.full((30, 12), 0.4))
    labels = torch.arange(30) % 3
    flat = VAE(data_dim=12, latent_dim=2, hidden_sizes=(8,))
    deep = VAE(data_dim=12, latent_dim=5, hidden_sizes=(8,))
    assert isinstance(manifold_figure(flat, (3, 4), num_per_axis=5), Figure)
    with pytest.raises(ConfigError, match="2-D latent space"):
        manifold_figure(deep, (3, 4))
    assert latent_scatter_figure(flat, x, labels).axes[0].get_title().endswith("2-D latent space")
    assert "PCA of the 5-D" in latent_scatter_figure(deep, x, None).axes[0].get_title()
    line = VAE(data_dim=12, latent_dim=1, hidden_sizes=(8,))  # was an IndexError
    for given in (labels, None):
        ax = latent_scatter_figure(line, x, given).axes[0]
        assert ax.get_title().endswith("1-D latent space")
        points = torch.cat([torch.as_tensor(c.get_offsets()) for c in ax.collections])
        assert points.shape == (30, 2)
        assert torch.allclose(points[:, 0].sort().values,
                              line.encode(x)[0][:, 0].double().sort().values)  # fmt: skip
    assert isinstance(interpolation_figure(deep, x[:4].reshape(2, 2, 12), (3, 4), steps=5), Figure)
    history = [{"epoch": 1, "train_elbo": -9.0, "test_elbo": -8.0}]
    assert len(metrics_figure(history).axes[0].lines) == 2


@pytest.mark.parametrize("event_dims", [1, 3], ids=["flat", "CHW"])
def test_independent_bernoulli_is_torchs_bernoulli(event_dims):
    """The likelihood's log density and its gradient equal ``Bernoulli(logits).to_event(n)``'s,
    under broadcasting (K particles against B images) and after Pyro's ``expand``."""
    torch.manual_seed(0)
    shape = (4, 5, 6, 7)[-event_dims - 1 :]  # (B, *event)
    logits = torch.randn(3, *shape, requires_grad=True)  # (K, B, *event)
    x = torch.bernoulli(torch.rand(shape))  # (B, *event)
    mine = IndependentBernoulli(dist.Bernoulli(logits=logits), event_dims)
    torchs = dist.Bernoulli(logits=logits).to_event(event_dims)
    assert mine.batch_shape == torchs.batch_shape and mine.event_shape == torchs.event_shape
    lp, ref = mine.log_prob(x), torchs.log_prob(x)
    assert lp.shape == ref.shape == (3, shape[0])
    torch.testing.assert_close(lp, ref)
    torch.testing.assert_close(
        torch.autograd.grad(lp.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0]
    )
    expanded = mine.expand((2, 3, shape[0]))
    assert type(expanded) is IndependentBernoulli and expanded.batch_shape == (2, 3, shape[0])
    torch.testing.assert_close(expanded.log_prob(x), ref.expand(2, 3, shape[0]))


def test_bernoulli_log_density_against_log1p_in_float64_and_float32():
    """The CPU density against ``x l - max(l, 0) - log1p(exp(-|l|))`` in float64, pixel by
    pixel (``event_dims=0``) and summed, at logits from the middle to the extremes and at
    binary and fractional values. Allowed: a few roundings of the terms, of size ``|l|``, in
    the precision at hand, and in float32 also the rounding of ``1 + exp(-|l|)`` (6e-8 nats a
    pixel)."""
    logits = torch.tensor([-100.0, -30, -17, -10, -1e-3, 0, 1e-3, 2, 10, 17, 30, 100])
    logits = logits.double().reshape(4, 3)
    for value in (torch.zeros_like(logits), torch.ones_like(logits), torch.full_like(logits, 0.3)):
        exact = value * logits - logits.clamp(min=0) - torch.log1p(torch.exp(-logits.abs()))
        for dtype, eps, extra in ((torch.float64, 2.0**-52, 0.0), (torch.float32, 2.0**-23, 6e-8)):
            per_pixel = bernoulli_log_density(logits.to(dtype), value.to(dtype), 0).double()
            bound = 4 * eps * (logits.abs() + 1) + extra
            assert ((per_pixel - exact).abs() <= bound).all(), (dtype, per_pixel - exact)
            summed = bernoulli_log_density(logits.to(dtype), value.to(dtype), 1).double()
            assert ((summed - exact.sum(-1)).abs() <= bound.sum(-1)).all(), (dtype, value[0, 0])
    # x = 1: max(l, 0) - l x cancels exactly; what is left is rounding 1 + exp(-|l|) (half an
    # ulp of 1, absolute) and the logarithm's own
    binary = bernoulli_log_density(logits, torch.ones_like(logits), 0)
    torch.testing.assert_close(binary, -torch.log1p(torch.exp(-logits)), rtol=1e-15, atol=2**-53)


def test_bernoulli_log_density_gradients():
    """Both inputs' gradients, and their gradients, against finite differences (``gradcheck``,
    ``gradgradcheck``), with the value
    broadcast against particles of logits, and the logits' gradient against torch's
    ``binary_cross_entropy_with_logits``."""
    torch.manual_seed(0)
    logits = (4 * torch.randn(3, 2, 5)).double().requires_grad_()  # (K, B, D)
    value = torch.rand(2, 5, dtype=torch.float64, requires_grad=True)  # (B, D)

    def density(logits, value):
        return bernoulli_log_density(*torch.broadcast_tensors(logits, value), 1)

    assert torch.autograd.gradcheck(density, (logits, value))
    assert torch.autograd.gradgradcheck(density, (logits, value))
    x = torch.bernoulli(torch.rand(2, 5, dtype=torch.float64))
    mine = torch.autograd.grad(density(logits, x).square().sum(), logits)[0]
    bce = F.binary_cross_entropy_with_logits(logits, x.expand(3, 2, 5), reduction="none")
    torchs = torch.autograd.grad(bce.sum(-1).square().sum(), logits)[0]
    torch.testing.assert_close(mine, torchs)


def test_independent_bernoulli_checks_the_support_when_validating():
    logits = torch.zeros(2, 3)
    with pyro.validation_enabled(True):
        d = IndependentBernoulli(dist.Bernoulli(logits=logits), 1)
        with pytest.raises(ValueError, match="support"):
            d.log_prob(torch.full((2, 3), 0.5))
    with pyro.validation_enabled(False):
        d = IndependentBernoulli(dist.Bernoulli(logits=logits), 1)
        assert torch.isfinite(d.log_prob(torch.full((2, 3), 0.5))).all()


def test_the_bernoulli_vae_uses_it():
    vae = VAE(30, latent_dim=2, hidden_sizes=(4,))
    assert type(vae.likelihood_distribution(torch.zeros(5, 2))) is IndependentBernoulli
