"""Gradient estimators against hand-derived gradients, as in Pyro's tests/infer/test_gradient.py.

The conjugate model: ``z ~ N(0, 1)``, ``x | z ~ N(z, 1)``, with the guide ``q(z) = N(m, s^2)``
for each of ``B`` images under a data plate. With ``f = log p(x, z) - log q(z)``,
``eps = (z - m) / s`` and the closed-form ELBO gradient ``(x - 2m, 1/s - 2s)``, one sample
gives, per image (d/dm, d/ds):

- reparam:        ``(x - 2z,                (x - 2z) eps + 1/s)``
- stl:            ``(x - 2z + eps/s,        (x - 2z) eps + eps^2/s)``
- reinforce:      ``f * (eps/s,  (eps^2 - 1)/s)``,  and ``(f - b) * ...`` with a baseline ``b``.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.estimators import CONTINUOUS_ESTIMATORS as ESTIMATORS  # a Gaussian guide's
from pyro_vae.estimators import baseline_options
from pyro_vae.gradients import gradient_samples, gradient_statistics
from pyro_vae.latents import guide_distribution
from pyro_vae.model import VAE
from pyro_vae.networks import Baseline
from pyro_vae.objectives import make_elbo

# equalities and closed forms: CI runs these again with another CPU's arithmetic
pytestmark = pytest.mark.numerics

B = 4000  # images, all alike: one call draws B independent single-sample gradients
X, M, S = 0.8, 0.3, 0.7


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def make_guide(estimator, draws, baseline_net=None):
    def guide(x):
        m = pyro.param("m", torch.full_like(x, M))
        s = pyro.param("s", torch.full_like(x, S))  # unconstrained: gradients are d/ds
        if baseline_net is not None:
            pyro.module("baseline", baseline_net)
        infer = baseline_options(estimator, x, baseline_net, baseline_beta=0.5)
        with pyro.plate("data", x.shape[0]):
            draws.append(pyro.sample("z", guide_distribution(m, s, estimator), infer=infer))

    return guide


def one_step(estimator, x, baseline_net=None):
    """Gradients of the summed ELBO for one draw per image, the draw, and the baseline used."""
    draws = []
    store = pyro.get_param_store()
    avg_name = "__baseline_avg_downstream_cost_z"
    b = store[avg_name].detach().clone() if avg_name in store else torch.zeros(x.shape[0])
    if baseline_net is not None:  # the average plus the network
        b = b + baseline_net(x).detach()
    for name in ("m", "s"):
        if name in store:
            store[name].grad = None
    make_elbo("elbo", estimator).loss_and_grads(
        model, make_guide(estimator, draws, baseline_net), x
    )
    dm, ds = (-store[name].grad.squeeze(-1) for name in ("m", "s"))
    return dm, ds, draws[0].detach().squeeze(-1), b


def expected_single_sample(estimator, z, b):
    x, m, s = X, M, S
    eps = (z - m) / s
    log_p = dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(torch.tensor(x))
    f = log_p - dist.Normal(m, s).log_prob(z)
    if estimator == "reparam":
        return x - 2 * z, (x - 2 * z) * eps + 1 / s
    if estimator == "stl":
        return x - 2 * z + eps / s, (x - 2 * z) * eps + eps**2 / s
    weight = f - b if "baseline" in estimator else f
    return weight * eps / s, weight * (eps**2 - 1) / s


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_single_sample_gradient_matches_hand_derivation(estimator, float64):
    x = torch.full((B, 1), X)
    net = Baseline(1, (4,)).double() if estimator == "reinforce-nn-baseline" else None
    for _ in range(3):  # the decaying average changes from call to call
        dm, ds, z, b = one_step(estimator, x, net)
        want_dm, want_ds = expected_single_sample(estimator, z, b)
        torch.testing.assert_close(dm, want_dm, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ds, want_ds, rtol=1e-9, atol=1e-9)


def test_nn_baseline_is_trained_on_the_squared_error(float64):
    x = torch.full((B, 1), X)
    net = Baseline(1, (4,)).double()
    dm, ds, z, b = one_step("reinforce-nn-baseline", x, net)
    eps = (z - M) / S
    f = (
        dist.Normal(0.0, 1.0).log_prob(z)
        + dist.Normal(z, 1.0).log_prob(torch.tensor(X))
        - dist.Normal(M, S).log_prob(z)
    )
    assert torch.allclose(dm, (f - b) * eps / S)
    # d/d(out.bias) of sum (f - b)^2 is -2 sum (f - b)
    torch.testing.assert_close(net.out.bias.grad, (-2 * (f - b).sum()).reshape(1))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_mean_gradient_matches_the_closed_form_elbo_gradient(estimator, float64):
    x = torch.full((B, 1), X)
    net = Baseline(1, (4,)).double() if estimator == "reinforce-nn-baseline" else None
    for _ in range(5):  # warm the baseline up
        one_step(estimator, x, net)
    dm, ds, _, _ = one_step(estimator, x, net)
    for sample, exact in ((dm, X - 2 * M), (ds, 1 / S - 2 * S)):
        se = sample.std() / math.sqrt(B)
        assert abs(sample.mean() - exact) < 5 * se, (estimator, sample.mean(), exact, se)


@pytest.fixture(scope="module")
def small_vae_gradients():
    pyro.set_rng_seed(0)
    data = torch.bernoulli(torch.rand(32, 20) * 0.8 + 0.1)
    vae = VAE(data_dim=20, latent_dim=3, hidden_sizes=(16,))
    vae.init_output_bias(data.mean(0))
    reference = gradient_samples(vae, data, "reparam", num_samples=2000)
    samples = {e: gradient_samples(vae, data, e, num_samples=800, warmup=200) for e in ESTIMATORS}
    return reference, samples


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimators_agree_in_expectation_on_a_vae(small_vae_gradients, estimator):
    reference, samples = small_vae_gradients
    for part in ("encoder", "decoder"):
        ref, est = getattr(reference, part).double(), getattr(samples[estimator], part).double()
        diff = est.mean(0) - ref.mean(0)
        se = (est.var(0) / est.shape[0] + ref.var(0) / ref.shape[0]).sqrt()
        z = diff / se.clamp_min(1e-12)
        assert z.abs().max() < 5.5, (estimator, part, z.abs().max())  # every coordinate
        # and along the reference direction, a one-dimensional test at 5 standard errors
        u = ref.mean(0) / ref.mean(0).norm()
        a, b = est @ u, ref @ u
        se_u = math.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 5 * se_u, (estimator, part, a.mean(), b.mean(), se_u)


def test_variance_ordering_on_a_vae(small_vae_gradients):
    _, samples = small_vae_gradients
    var = {e: gradient_statistics(s.encoder)["total_variance"] for e, s in samples.items()}
    assert var["reinforce"] > 5 * var["reparam"]
    assert var["reinforce-baseline"] < var["reinforce"]
    assert var["reinforce-nn-baseline"] < var["reinforce"]
    dec = {e: gradient_statistics(s.decoder)["total_variance"] for e, s in samples.items()}
    # the decoder's gradient is pathwise in every estimator: same distribution
    assert 0.8 < dec["reinforce"] / dec["reparam"] < 1.25


def test_gradient_statistics_on_known_samples():
    g = torch.tensor([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0], [2.0, -1.0]])
    stats = gradient_statistics(g, reference=torch.tensor([2.0, 2.0]))
    assert stats["total_variance"] == pytest.approx(2 / 3 + 6)
    assert stats["snr"] == pytest.approx(math.sqrt(8) / math.sqrt(2 / 3 + 6))
    assert stats["cosine"] == pytest.approx(1.0) and stats["relative_error"] == pytest.approx(0)
