"""The latent space as one concept: each prior names its space, and the model, the evaluation,
the pictures and the posterior check ask the space, never which one it is."""

import pytest
import torch

from pyro_vae import VAE, evaluate
from pyro_vae.errors import ConfigError
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.latents import GAUSSIAN, LATENT_SPACES, SPHERE, Gaussian, guide_distribution
from pyro_vae.plots import interpolation_figure, latent_scatter_figure, manifold_figure
from pyro_vae.posterior import check_posterior
from pyro_vae.priors import PRIORS, latent_of, make_prior


@pytest.mark.parametrize("prior", PRIORS)
def test_each_prior_names_its_latent_space(prior):
    expected = SPHERE if prior == "hyperspherical" else GAUSSIAN
    assert latent_of(prior) is expected
    assert make_prior(prior, 3, event_shape=(4, 4)).latent is expected
    assert VAE(16, latent_dim=3, hidden_sizes=(8,), prior=prior).latent is expected


@pytest.mark.parametrize(
    "space, estimator",
    [(space, e) for space in LATENT_SPACES.values() for e in space.estimators],
    ids=[f"{name}-{e}" for name, space in LATENT_SPACES.items() for e in space.estimators],
)
def test_the_guide_is_the_spaces_under_each_estimator(space, estimator):
    loc = torch.randn(5, space.code_size(3))
    second = torch.rand(5, space.second_output_size(3)) + 0.5 if space.second_output else None
    q = guide_distribution(loc, second, estimator, space.name)
    z = q.sample()
    shape = (5, 3) if space.categories is None else (5, 3, space.categories)
    assert z.shape == shape and q.log_prob(z).shape == (5,)
    # the pathwise estimators sample with a path, the score-function ones without; a
    # discrete guide has none (its estimators are ELBO classes, pyro_vae.discrete)
    assert q.has_rsample == (estimator in ("reparam", "stl"))
    if space is SPHERE:
        torch.testing.assert_close(z.norm(dim=-1), torch.ones(5))
    if space.discrete:
        torch.testing.assert_close(space.decoder_input(z).sum(-1), z.flatten(1).sum(-1))


@pytest.mark.parametrize("space", list(LATENT_SPACES.values()), ids=list(LATENT_SPACES))
def test_an_estimator_of_another_space_is_refused(space):
    for estimator in ESTIMATORS:
        if estimator not in space.estimators:
            with pytest.raises(ConfigError, match=f"estimator '{estimator}'"):
                guide_distribution(torch.zeros(1, space.code_size(2)), None, estimator,
                                   space.name)  # fmt: skip


def test_an_unknown_latent_space_is_refused():
    with pytest.raises(ConfigError, match="unknown latent space"):
        guide_distribution(torch.zeros(1, 2), torch.ones(1, 2), latent="torus")


class Recording(Gaussian):
    """A Gaussian space that notes which of its questions were asked."""

    def __init__(self):
        self.asked = set()

    def __getattribute__(self, name):
        if name in ("guide", "code", "draw_and_mean", "manifold", "scatter", "interpolate",
                    "hmc_refusal", "second_output_size", "encoder_contract"):  # fmt: skip
            object.__getattribute__(self, "asked").add(name)
        return object.__getattribute__(self, name)


def test_the_package_asks_the_latent_space(monkeypatch):
    """A new member of the family (a Bernoulli space, say) is one class: every part of the
    package that depends on the kind of z goes through these questions."""
    recording = Recording()
    torch.manual_seed(0)
    vae = VAE(16, latent_dim=2, hidden_sizes=(8,))
    monkeypatch.setattr(type(vae.prior), "latent", recording)
    x = torch.bernoulli(torch.rand(6, 16))
    vae.guide_distribution(x)
    evaluate(vae, x, num_particles=3)
    manifold_figure(vae, (4, 4), num_per_axis=3)
    latent_scatter_figure(vae, x)
    interpolation_figure(vae, x[:2].reshape(1, 2, 16), (4, 4), steps=3)
    check_posterior(vae, x[0], 0, num_samples=2, warmup_steps=2, num_chains=1, num_particles=2)
    assert {"guide", "code", "draw_and_mean", "manifold", "scatter", "interpolate",
            "hmc_refusal"} <= recording.asked  # fmt: skip


def test_the_sphere_refuses_hmc_and_a_circle_smaller_than_two():
    assert GAUSSIAN.hmc_refusal("nuts") is None and GAUSSIAN.hmc_refusal("mcem") is None
    assert "NUTS" in SPHERE.hmc_refusal("nuts") and "mcem" in SPHERE.hmc_refusal("mcem")
    with pytest.raises(ConfigError, match="latent_dim >= 2"):
        SPHERE.check_dim(1)
    GAUSSIAN.check_dim(1)


def test_the_spheres_evaluation_draw_and_mean_are_power_sphericals():
    loc, kappa = torch.tensor([[3.0, 4.0]]), torch.tensor([[10.0]])
    torch.manual_seed(1)
    z, mean = SPHERE.draw_and_mean(loc, kappa)
    q = SPHERE.guide(loc, kappa, "reparam")
    torch.manual_seed(1)
    torch.testing.assert_close(z, q.sample())
    torch.testing.assert_close(mean, q.mean)
    # E[z] = mu kappa / (kappa + d - 1) for the Power Spherical distribution
    torch.testing.assert_close(mean, torch.tensor([[0.6, 0.8]]) * 10 / 11)
