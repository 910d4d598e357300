"""The priors of pyro_vae.priors: normalized densities, samplers against their moments, the
KL each objective uses with each prior (closed form or Monte Carlo), every estimator with the
hyperspherical guide against closed-form gradients, and run folders with each prior."""

from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.distributions.kl import _kl_normal_normal, kl_divergence

from pyro_vae import VAE, ConfigError, TrainConfig
from pyro_vae.estimators import CONTINUOUS_ESTIMATORS as ESTIMATORS  # these priors' guides
from pyro_vae.evaluate import evaluate
from pyro_vae.latents import guide_distribution
from pyro_vae.objectives import MeanFieldELBO, make_elbo
from pyro_vae.posterior import nuts_posterior
from pyro_vae.priors import (
    DEFAULT_COMPONENTS,
    PRIORS,
    GaussianMixturePrior,
    HypersphericalPrior,
    StandardNormal,
    VampPrior,
    has_closed_form_kl,
    make_prior,
)
from pyro_vae.sphere import HypersphericalUniform, PowerSpherical
from pyro_vae.train import parameter_count

# equalities and closed forms: CI runs these again with another CPU's arithmetic
pytestmark = pytest.mark.numerics


def _tiny_encoder(event_dim: int, latent_dim: int) -> torch.nn.Module:
    from pyro_vae.networks import Encoder

    return Encoder(event_dim, latent_dim, (8,), "tanh")


def _spread(prior) -> None:
    """Move a learned prior away from its start, so that no test passes by symmetry."""
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.5 * torch.randn_like(p))


def _grid_integral(log_density, half_width=9.0, n=500) -> float:
    u = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    z1, z2 = torch.meshgrid(u, u, indexing="ij")
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], -1)
    step = (u[1] - u[0]).item()
    return (log_density(z).exp().sum() * step**2).item()


@pytest.mark.parametrize("name", ["normal", "mixture", "vamp"])
def test_euclidean_priors_integrate_to_one(name, float64):
    encoder = _tiny_encoder(6, 2).double()
    prior = make_prior(name, 2, 4 if name != "normal" else None, (6,)).double()
    _spread(prior)
    p = prior.distribution(encoder)
    assert p.event_shape == (2,) and p.batch_shape == ()
    assert _grid_integral(lambda z: p.log_prob(z)) == pytest.approx(1.0, abs=1e-4)


def test_the_uniform_prior_on_the_circle_integrates_to_one(float64):
    p = HypersphericalPrior(2).double().distribution()
    theta = torch.linspace(0, 2 * math.pi, 2001, dtype=torch.float64)[:-1]
    z = torch.stack([theta.cos(), theta.sin()], -1)
    assert (p.log_prob(z).exp().sum() * 2 * math.pi / 2000).item() == pytest.approx(1.0)


def _mixture_moments(weights, loc, scale):
    mean = (weights[:, None] * loc).sum(0)
    outer = loc[:, :, None] * loc[:, None, :]
    second = (weights[:, None, None] * (torch.diag_embed(scale**2) + outer)).sum(0)
    return mean, second - mean[:, None] * mean[None, :]


def _check_moments(draws, mean, cov):
    """Sample mean and covariance within 5 standard errors of the given ones."""
    n = len(draws)
    assert ((draws.mean(0) - mean).abs() < 5 * (cov.diagonal() / n).sqrt()).all()
    centred = draws - mean
    products = centred[:, :, None] * centred[:, None, :]  # (n, Z, Z)
    se = products.std(0) / math.sqrt(n)
    assert ((products.mean(0) - cov).abs() < 5 * se + 1e-12).all()


@pytest.mark.parametrize("name", ["mixture", "vamp"])
def test_mixture_samplers_match_their_moments(name, float64):
    encoder = _tiny_encoder(6, 3).double()
    prior = make_prior(name, 3, 4, (6,)).double()
    _spread(prior)
    if name == "mixture":
        weights = torch.softmax(prior.logits, -1)
        loc, scale = prior.loc, torch.nn.functional.softplus(prior.raw_scale) + 1e-5
    else:
        weights = torch.full((4,), 0.25, dtype=torch.float64)
        loc, scale = encoder(prior.pseudo_inputs)
    mean, cov = _mixture_moments(weights, loc.detach(), scale.detach())
    generator = torch.Generator().manual_seed(1)
    draws = prior.sample(40_000, generator, encoder)
    assert draws.shape == (40_000, 3)
    _check_moments(draws, mean, cov)
    # the sampler follows the generator, not the global stream
    state = torch.get_rng_state()
    again = prior.sample(40_000, torch.Generator().manual_seed(1), encoder)
    assert torch.equal(again, draws) and torch.equal(torch.get_rng_state(), state)


def test_the_sphere_prior_samples_uniformly(float64):
    draws = HypersphericalPrior(4).double().sample(40_000, torch.Generator().manual_seed(2))
    assert torch.allclose(draws.norm(dim=-1), torch.ones(40_000, dtype=torch.float64))
    _check_moments(draws, torch.zeros(4, dtype=torch.float64), torch.eye(4) / 4)


def test_vamp_pseudo_inputs_start_as_in_the_paper_and_stay_in_the_unit_interval():
    prior = VampPrior(2, (1, 5, 5), 300)
    u = prior.pseudo_inputs
    assert u.shape == (300, 1, 5, 5) and u.min() >= 0 and u.max() <= 1
    assert u.mean().item() == pytest.approx(0.05, abs=0.002)
    assert u.std().item() == pytest.approx(0.01, rel=0.1)
    with torch.no_grad():
        prior.raw_inputs.fill_(3.0)
    assert prior.pseudo_inputs.max() == 1.0


def test_defaults_and_closed_forms():
    assert GaussianMixturePrior(2).components == DEFAULT_COMPONENTS["mixture"] == 10
    assert VampPrior(2, (4,)).components == DEFAULT_COMPONENTS["vamp"] == 500
    assert [has_closed_form_kl(p) for p in PRIORS] == [True, False, False, True]
    # a fresh mixture is unit Gaussians at N(0, I) draws, with equal weights
    prior = GaussianMixturePrior(3, 4)
    scale = torch.nn.functional.softplus(prior.raw_scale) + 1e-5
    assert torch.allclose(scale, torch.ones(4, 3)) and torch.equal(prior.logits, torch.zeros(4))


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(prior="gamma"), "prior"),
        (dict(prior="normal", prior_components=5), "no components"),
        (dict(prior="hyperspherical", prior_components=5), "no components"),
        (dict(prior="mixture", prior_components=0), "positive whole number"),
        (dict(prior="vamp", prior_components=2.5), "positive whole number"),
        (dict(prior="hyperspherical", latent_dim=1), "latent_dim >= 2"),
    ],
)
def test_refused_prior_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{"latent_dim": 2, **settings}).validate()
    with pytest.raises(ConfigError, match=message):
        VAE(16, **{"latent_dim": 2, **settings})


def _vae(prior: str, estimator: str = "reparam", latent_dim: int = 3) -> VAE:
    components = 3 if prior in DEFAULT_COMPONENTS else None
    vae = VAE(12, latent_dim, (8,), prior=prior, prior_components=components, estimator=estimator)
    _spread(vae.prior)
    return vae


def _loss(elbo, vae, x, seed):
    pyro.set_rng_seed(seed)
    return elbo.differentiable_loss(vae.model, vae.guide, x)


@pytest.mark.parametrize("validation", [False, True])
@pytest.mark.parametrize("prior", PRIORS)
def test_the_analytic_kl_objective_uses_the_closed_form_or_switches_to_monte_carlo(
    prior, validation, float64
):
    """With one particle and the same seed both ELBOs draw the same z; the analytic-KL loss
    equals Trace_ELBO's (the Monte Carlo KL) exactly where no closed form exists, and
    -log p(x|z) + KL(q || p) (the closed form) where one does."""
    vae = _vae(prior).double()
    x = torch.bernoulli(torch.rand(5, 12, dtype=torch.float64))
    with pyro.validation_enabled(validation):
        analytic = _loss(MeanFieldELBO(), vae, x, 3)
        monte_carlo = _loss(Trace_ELBO(), vae, x, 3)
        pyro.set_rng_seed(3)
        q = vae.guide_distribution(x)
        z = q.rsample()
    p = vae.prior_distribution()
    reconstruction = vae.likelihood_distribution(z).log_prob(x).sum()
    assert monte_carlo.item() == pytest.approx(
        -(reconstruction + p.log_prob(z).sum() - q.log_prob(z).sum()).item(), rel=1e-10
    )
    if has_closed_form_kl(prior):
        kl = torch.distributions.kl_divergence(q, p.expand([5])).sum()
        assert analytic.item() == pytest.approx((kl - reconstruction).item(), rel=1e-10)
        assert analytic.item() != pytest.approx(monte_carlo.item(), rel=1e-6)
    else:
        assert analytic.item() == pytest.approx(monte_carlo.item(), rel=1e-10)


@pytest.mark.parametrize("prior", PRIORS)
def test_every_objective_and_estimator_trains_the_prior(prior):
    x = torch.bernoulli(torch.rand(6, 12))
    for objective, estimator in [("elbo-analytic-kl", "reparam"), ("iwae", "reparam"),
                                 *(("elbo", e) for e in ESTIMATORS)]:  # fmt: skip
        pyro.clear_param_store()
        vae = _vae(prior, estimator)
        elbo = make_elbo(objective, estimator, 3 if objective == "iwae" else 1)
        loss = elbo.loss_and_grads(vae.model, vae.guide, x)
        assert math.isfinite(loss)
        grads = [p.grad for p in [*vae.encoder.parameters(), *vae.prior.parameters()]]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), (objective, estimator)
        if prior in DEFAULT_COMPONENTS:  # the prior's own parameters learn
            assert any(g.abs().sum() > 0 for g in (p.grad for p in vae.prior.parameters()))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_of_the_sphere_guide_is_unbiased(estimator, float64):
    """grad of E_q[a^T z] - KL(q || uniform) for q = PowerSpherical(mu(w), kappa): the estimator's
    mean gradient within 5 standard errors of the closed form, E_q[z] = mu kappa/(kappa+d-1)."""
    d = 3
    a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    w = torch.tensor([0.3, 0.8, -0.5], dtype=torch.float64, requires_grad=True)
    raw = torch.tensor([1.2], dtype=torch.float64, requires_grad=True)  # concentration

    def objective_closed_form():
        mu, kappa = w / w.norm(), raw
        q = PowerSpherical(mu, kappa[0])
        mean = mu * kappa / (kappa + d - 1)
        return (a * mean).sum() - torch.distributions.kl_divergence(q, HypersphericalUniform(d))

    exact = torch.autograd.grad(objective_closed_form(), [w, raw])
    exact = torch.cat([g.reshape(-1) for g in exact])

    def model():
        with pyro.plate("n", 1):
            z = pyro.sample("z", HypersphericalUniform(d).expand([1]))
            pyro.factor("f", (a * z).sum(-1))

    def guide():
        loc, concentration = pyro.param("w", w.detach()), pyro.param("raw", raw.detach())
        with pyro.plate("n", 1):
            q = guide_distribution(loc[None], concentration[None], estimator, latent="sphere")
            pyro.sample("z", q, infer=_baseline_infer(estimator))

    # the baseline estimators go through TraceGraph_ELBO with one particle at a time
    one_at_a_time = estimator in ("reinforce-baseline", "reinforce-nn-baseline")
    particles = 1 if one_at_a_time else 2000
    batches = 2000 if one_at_a_time else 60
    elbo = make_elbo("elbo", estimator, particles)
    if one_at_a_time:
        for _ in range(300):  # the running average settles first
            elbo.loss(model, guide)
    grads = []
    for _ in range(batches):
        elbo.loss_and_grads(model, guide)
        params = [pyro.param("w").unconstrained(), pyro.param("raw").unconstrained()]
        grads.append(-torch.cat([p.grad for p in params]))
        for p in params:
            p.grad = None
    grads = torch.stack(grads)
    se = grads.std(0) / math.sqrt(batches)
    assert ((grads.mean(0) - exact).abs() < 5 * se + 1e-9).all(), (grads.mean(0), exact, se)


def _baseline_infer(estimator):
    from pyro_vae.estimators import baseline_options

    if estimator == "reinforce-nn-baseline":  # an untrained baseline "network", b(x) = 3

        class Constant(torch.nn.Module):
            def forward(self, x):
                return torch.tensor(3.0, dtype=torch.float64)

        return baseline_options(estimator, torch.zeros(1, 1, dtype=torch.float64), Constant())
    return baseline_options(estimator)


def test_the_sphere_guide_follows_the_encoder():
    vae = _vae("hyperspherical", latent_dim=4)
    x = torch.rand(5, 12)
    loc, concentration = vae.encode(x)
    assert loc.shape == (5, 4) and concentration.shape == (5, 1)
    assert torch.allclose(loc.norm(dim=-1), torch.ones(5))
    q = vae.guide_distribution(x)
    assert isinstance(q, PowerSpherical) and q.batch_shape == (5,) and q.event_shape == (4,)
    assert torch.allclose(q.loc, loc) and torch.allclose(q.concentration, concentration[:, 0])
    z = vae.prior.sample(100, torch.Generator().manual_seed(5))
    assert torch.allclose(z.norm(dim=-1), torch.ones(100))
    images = vae.sample(100, torch.Generator().manual_seed(5))
    assert torch.allclose(images, vae.decode(z))


def test_a_hand_written_encoder_for_the_sphere_returns_one_concentration():
    class Enc(torch.nn.Module):
        def __init__(self, width):
            super().__init__()
            self.a, self.b = torch.nn.Linear(12, 3), torch.nn.Linear(12, width)

        def forward(self, x):
            x = x.flatten(1)
            return self.a(x), torch.nn.functional.softplus(self.b(x)) + 1e-3

    class Dec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 12)

        def forward(self, z):
            return (self.a(z).reshape(*z.shape[:-1], 1, 3, 4),)

    VAE(image_shape=(3, 4), latent_dim=3, encoder=Enc(1), decoder=Dec(), prior="hyperspherical")
    with pytest.raises(ConfigError, match=r"\(loc, concentration\), \(B, 3\) and \(B, 1\)"):
        VAE(image_shape=(3, 4), latent_dim=3, encoder=Enc(3), decoder=Dec(),
            prior="hyperspherical")  # fmt: skip
    with pytest.raises(ConfigError, match=r"\(loc, scale\), each \(B, 3\)"):
        VAE(image_shape=(3, 4), latent_dim=3, encoder=Enc(1), decoder=Dec())


@pytest.mark.parametrize("prior", PRIORS)
def test_parameter_count_matches_the_built_vae(prior):
    from pyro_vae.train import build_vae

    config = TrainConfig(latent_dim=3, hidden_sizes=(16,), prior=prior,
                         prior_components=4 if prior in DEFAULT_COMPONENTS else None)  # fmt: skip
    vae = build_vae(config, (5, 5))
    assert parameter_count(config, (5, 5)) == sum(p.numel() for p in vae.parameters())
    extra = {"normal": 0, "hyperspherical": 0, "mixture": 4 + 2 * 4 * 3, "vamp": 4 * 25}[prior]
    assert sum(p.numel() for p in vae.prior.parameters()) == extra


def test_the_nuts_check_refuses_the_sphere():
    with pytest.raises(ConfigError, match="unit sphere"):
        nuts_posterior(_vae("hyperspherical"), torch.rand(12), 5, 5, 1)


def test_the_nuts_check_samples_the_vae_prior_when_the_image_says_nothing():
    """A decoder that ignores z: p(z|x) = p(z), so NUTS must draw from the mixture prior."""
    vae = _vae("mixture", latent_dim=2)
    with torch.no_grad():
        for p in vae.decoder.out.parameters():
            p.zero_()
        vae.prior.loc.add_(3.0)  # far from N(0, I)
    weights = torch.softmax(vae.prior.logits, -1).detach()
    scale = (torch.nn.functional.softplus(vae.prior.raw_scale) + 1e-5).detach()
    mean, _ = _mixture_moments(weights, vae.prior.loc.detach(), scale)
    draws = nuts_posterior(vae, torch.bernoulli(torch.full((12,), 0.5)), 300, 150, 2, seed=4)
    z = torch.as_tensor(draws.posterior["z"].values).reshape(-1, 2)
    # a loose check (NUTS draws are correlated): the mixture's mean, not the origin's N(0, I)
    assert (z.mean(0) - mean).abs().max() < 0.35, (z.mean(0), mean)


@pytest.mark.parametrize("prior", PRIORS[1:])
def test_run_folders_with_each_prior_evaluate_plot_and_resume(prior, tmp_path, capsys):
    from pyro_vae.cli import main

    flags = ["--dataset", "mnist-sample", "--train-size", "256", "--batch-size", "64",
             "--hidden-sizes", "32", "--latent-dim", "2", "--prior", prior, "--no-progress",
             "--eval-particles", "20", "--eval-images", "50"]  # fmt: skip
    if prior in DEFAULT_COMPONENTS:
        flags += ["--prior-components", "5"]
    assert main(["train", *flags, "--epochs", "2", "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *flags, "--epochs", "1", "--out", str(tmp_path / "split")]) == 0
    assert main(["train", *flags, "--epochs", "2", "--resume", str(tmp_path / "split")]) == 0
    from pyro_vae.checkpoint import load_checkpoint

    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert whole["model"].keys() == split["model"].keys()
    assert any(k.startswith("prior.") for k in whole["model"]) == (prior != "hyperspherical")
    for k in whole["model"]:
        assert torch.equal(whole["model"][k], split["model"][k]), k
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "whole"), "-K", "20", "--num-images", "50"]) == 0
    out = capsys.readouterr().out
    assert "active units" in out and "of 2" in out
    scores = json.loads((tmp_path / "whole" / "evaluation.json").read_text())
    assert scores["kl_per_dim"] == [] and math.isfinite(scores["kl"]) and scores["kl"] > 0
    assert main(["plot", str(tmp_path / "whole")]) == 0
    for name in ("samples", "reconstructions", "latent_scatter", "interpolation", "manifold"):
        assert (tmp_path / "whole" / f"{name}.png").stat().st_size > 1000


def test_the_evaluation_kl_is_the_closed_form_on_the_sphere_and_one_draw_otherwise(float64):
    x = torch.bernoulli(torch.rand(400, 12, dtype=torch.float64))
    sphere = _vae("hyperspherical").double()
    result = evaluate(sphere, x, 10)
    loc, kappa = sphere.encode(x)
    closed = torch.distributions.kl_divergence(PowerSpherical(loc, kappa[:, 0]),
                                               HypersphericalUniform(3)).mean()  # fmt: skip
    assert result.kl == pytest.approx(closed.item(), rel=1e-9)
    # the mixture: one draw per image, an unbiased estimate of E_x KL; against 200 draws each
    mixture = _vae("mixture").double()
    result = evaluate(mixture, x, 10)
    q = mixture.guide_distribution(x)
    z = q.sample((200,))
    many = (q.log_prob(z) - mixture.prior_distribution().log_prob(z)).mean(0)  # (N,)
    one_draw_se = (q.log_prob(z) - mixture.prior_distribution().log_prob(z))[0].std() / 20
    assert abs(result.kl - many.mean().item()) < 5 * one_draw_se.item()


@pytest.mark.parametrize("prior", PRIORS)
def test_the_model_scores_z_under_the_prior(prior, float64):
    """The model's latent site against log p(z) written out from the prior's parameters."""
    vae = _vae(prior).double()
    x = torch.bernoulli(torch.rand(4, 12, dtype=torch.float64))
    trace = pyro.poutine.trace(vae.model).get_trace(x)
    site = trace.nodes["z"]
    z = site["value"]
    normal = torch.distributions.Normal
    if prior == "normal":
        expected = normal(0.0, 1.0).log_prob(z).sum(-1)
    elif prior == "hyperspherical":
        expected = torch.full((4,), -math.log(4 * math.pi), dtype=torch.float64)  # S^2's area
    else:
        if prior == "mixture":
            log_w = torch.log_softmax(vae.prior.logits, -1)
            loc, scale = vae.prior.loc, torch.nn.functional.softplus(vae.prior.raw_scale) + 1e-5
        else:
            log_w = torch.full((3,), -math.log(3), dtype=torch.float64)
            loc, scale = vae.encoder(vae.prior.raw_inputs.clamp(0, 1))
        parts = normal(loc, scale).log_prob(z[:, None, :]).sum(-1)  # (B, K)
        expected = torch.logsumexp(log_w + parts, -1)
    assert torch.allclose(site["fn"].log_prob(z), expected, rtol=1e-10)


def test_active_units_on_the_sphere_count_the_guide_mean_not_its_direction():
    """A guide near the uniform distribution (kappa ~ 0) has E_q[z] ~ 0 for every image, so no
    unit is active, although its mean directions still vary with the image."""
    vae = _vae("hyperspherical", latent_dim=3)
    x = torch.bernoulli(torch.rand(300, 12))
    for bias, expected in ((-30.0, 0), (30.0, 3)):
        with torch.no_grad():
            vae.encoder.raw_scale.weight.zero_()
            vae.encoder.raw_scale.bias.fill_(bias)
        result = evaluate(vae, x, 5)
        assert result.active_units == expected, (bias, result.active_units)
    assert (vae.encode(x)[0].var(0) > 0.01).all()  # the directions spread either way


def test_standard_normal_kl_is_torchs_normal_normal_kl():
    """The KL from a Gaussian to the ``normal`` prior's :class:`StandardNormal` equals torch's
    Normal-Normal formula at loc 0 and scale 1, with its gradients, also when the prior's
    batch shape broadcasts against the guide's; ``kl_divergence`` dispatches to it."""
    torch.manual_seed(0)
    loc = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    scale = (0.1 + torch.rand(4, 3, dtype=torch.float64)).requires_grad_()
    q = dist.Normal(loc, scale)
    for prior_shape in ((4, 3), (3,)):
        zeros = torch.zeros(prior_shape, dtype=torch.float64)
        mine = kl_divergence(q, StandardNormal(zeros, zeros + 1))
        torchs = _kl_normal_normal(q, torch.distributions.Normal(zeros, zeros + 1))
        assert mine.shape == torchs.shape == (4, 3)
        torch.testing.assert_close(mine, torchs, rtol=1e-12, atol=1e-12)
        weights = torch.randn(4, 3, dtype=torch.float64)
        grads = [torch.autograd.grad((kl * weights).sum(), (loc, scale)) for kl in (mine, torchs)]
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(AssertionError):  # a wrong formula would show (the check can fail)
        torch.testing.assert_close(kl_divergence(q, dist.Normal(0.0, 2.0)), mine)


def test_normal_prior_reuses_its_batch_distribution():
    """The ``normal`` prior builds ``N(0, I)`` once per batch shape, device, dtype and
    validation setting, and the distribution is the standard normal of that shape."""
    prior = make_prior("normal", 3)
    with pyro.validation_enabled(False):
        d = prior.batch_distribution((5,))
        assert prior.batch_distribution([5]) is d
        assert prior.batch_distribution((6,)) is not d
    assert type(d.base_dist) is StandardNormal
    assert d.batch_shape == (5,) and d.event_shape == (3,)
    assert torch.equal(d.base_dist.loc, torch.zeros(5, 3))
    assert torch.equal(d.base_dist.scale, torch.ones(5, 3))
    with pyro.validation_enabled(True):
        checked = prior.batch_distribution((5,))
        assert checked is not d and checked.base_dist._validate_args
    assert prior.double().batch_distribution((5,)).base_dist.loc.dtype == torch.float64
    assert prior.distribution().batch_shape == () and prior.distribution().event_shape == (3,)
