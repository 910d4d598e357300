"""Discrete latents (pyro_vae.discrete): each estimator against the exact gradient, found by
summing over every code of a model small enough to enumerate (three Bernoulli units, or two
groups of three classes, and a tiny decoder), in float64.

The exact ELBO is written here in plain PyTorch, apart from the library: ``sum_z q(z|x) (log
p(x, z) - log q(z|x))`` over all codes, differentiated by autograd. An unbiased estimator's
mean over many seeded draws must lie within 5 standard errors of it in every coordinate; a
deliberately wrong estimator must not (the power check). The relaxed estimators' bias is
measured and must be there: they are not unbiased, and a test that let them pass as such
would hide it.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pytest
import torch
import torch.nn.functional as F

from pyro_vae.discrete import MAX_ENUMERATED, BernoulliCode, CategoricalCode, check_enumerable
from pyro_vae.errors import ConfigError
from pyro_vae.model import VAE
from pyro_vae.objectives import make_elbo

D, C, PIXELS = 3, 3, 6  # Bernoulli units; classes of each of the D - 1 categorical groups
REPEATS, COPIES = 300, 16  # estimates drawn, each the sum over COPIES copies of the images
Z_LIMIT = 5.0  # standard errors


def tiny_vae(latent: str, estimator: str) -> VAE:
    torch.manual_seed(1)
    kw = dict(latent="categorical", categories=C, latent_dim=D - 1) if latent == "categorical" \
        else dict(latent="bernoulli", latent_dim=D)  # fmt: skip
    vae = VAE(PIXELS, hidden_sizes=(5,), activation="tanh", estimator=estimator, **kw).double()
    with torch.no_grad():  # a learned prior away from uniform, so its gradient is not special
        logits = vae.prior.logits
        logits.copy_(torch.linspace(-0.7, 0.9, logits.numel()).reshape(logits.shape))
    return vae


IMAGES = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 1]], dtype=torch.float64)


def codes(vae: VAE) -> torch.Tensor:
    """Every code, ``(M, code_size)`` as the decoder takes it."""
    if vae.latent.categories is None:
        return torch.tensor(list(itertools.product((0.0, 1.0), repeat=vae.latent_dim))).double()
    eye = torch.eye(vae.latent.categories, dtype=torch.float64)
    index = list(itertools.product(range(vae.latent.categories), repeat=vae.latent_dim))
    return eye[torch.tensor(index)].flatten(1)


def log_densities(vae: VAE, x: torch.Tensor):
    """``log q(z|x)`` ``(M, B)`` and ``log p(x, z)`` ``(M, B)`` at every code, plain PyTorch."""
    z = codes(vae)  # (M, S)
    logits = vae.encoder(x)[0]  # (B, S)
    prior = vae.prior.logits.reshape(-1)
    if vae.latent.categories is None:
        log_q = z[:, None] * F.logsigmoid(logits) + (1 - z[:, None]) * F.logsigmoid(-logits)
        log_q = log_q.sum(-1)
        log_pz = (z * F.logsigmoid(prior) + (1 - z) * F.logsigmoid(-prior)).sum(-1)
    else:
        grouped = lambda t: t.reshape(*t.shape[:-1], -1, vae.latent.categories)  # noqa: E731
        log_q = (grouped(z)[:, None] * torch.log_softmax(grouped(logits), -1)).sum((-2, -1))
        log_pz = (grouped(z) * torch.log_softmax(grouped(prior), -1)).sum((-2, -1))
    out = vae.decoder(z)[0][:, None]  # (M, 1, PIXELS)
    log_lik = (x * F.logsigmoid(out) + (1 - x) * F.logsigmoid(-out)).sum(-1)  # (M, B)
    return log_q, log_lik + log_pz[:, None]


def exact_elbo(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    log_q, log_p = log_densities(vae, x)
    return (log_q.exp() * (log_p - log_q)).sum()


def exact_iwae(vae: VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """``E[log 1/K sum_k w_k]`` summed over every K-tuple of codes."""
    log_q, log_p = log_densities(vae, x)
    m = log_q.shape[0]
    total = 0.0
    for tup in itertools.product(range(m), repeat=k):
        index = torch.tensor(tup)
        weight = log_q[index].sum(0).exp()  # (B,)
        bound = torch.logsumexp(log_p[index] - log_q[index], 0) - math.log(k)
        total = total + (weight * bound).sum()
    return total


def parameters(vae: VAE) -> list[torch.Tensor]:
    """The ELBO's parameters: the prior's, the encoder's, the decoder's (not a baseline's)."""
    return [*vae.prior.parameters(), *vae.encoder.parameters(), *vae.decoder.parameters()]


def flat_gradient(vae: VAE) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in parameters(vae)])


def gradient(vae: VAE, objective) -> torch.Tensor:
    vae.zero_grad()
    objective.backward()
    return flat_gradient(vae)


def estimates(vae: VAE, estimator: str, k: int = 1, repeats: int = REPEATS) -> torch.Tensor:
    """``repeats`` gradient estimates of the ELBO (the bound for vimco), each the mean over
    ``COPIES`` copies of the images, ``(repeats, P)``."""
    objective = "iwae" if estimator == "vimco" else "elbo"
    elbo = make_elbo(objective, estimator, k)
    x = IMAGES.repeat(COPIES, 1)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    draws = []
    for _ in range(repeats):
        vae.zero_grad()
        elbo.loss_and_grads(vae.model, vae.guide, x)
        draws.append(-flat_gradient(vae) / COPIES)
    return torch.stack(draws)


def z_scores(draws: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    se = draws.std(0) / math.sqrt(len(draws))
    # a coordinate with no spread (the decoder's under enumeration) is held to the rounding of
    # float64 sums of a few hundred terms, relative to its size
    floor = 1e-9 * (1 + exact.abs())
    return (draws.mean(0) - exact).abs() / (se + floor)


UNBIASED = {
    "bernoulli": [
        "reinforce",
        "reinforce-baseline",
        "reinforce-nn-baseline",
        "reinforce-loo",
        "arm",
        "disarm",
    ],  # fmt: skip
    "categorical": ["reinforce", "reinforce-baseline", "reinforce-nn-baseline", "reinforce-loo"],
}


@pytest.mark.parametrize(
    "latent,estimator", [(lat, est) for lat, ests in UNBIASED.items() for est in ests]
)
def test_unbiased_estimators_agree_with_the_exact_gradient(latent, estimator):
    pyro.enable_validation(True)
    vae = tiny_vae(latent, estimator)
    k = 3 if estimator == "reinforce-loo" else 1
    draws = estimates(vae, estimator, k)
    exact = gradient(vae, exact_elbo(vae, IMAGES))
    assert draws.shape[1] == exact.shape[0]
    z = z_scores(draws, exact)
    assert z.max() < Z_LIMIT, (estimator, z.max().item(), z.argmax().item())


def test_vimco_agrees_with_the_exact_gradient_of_the_importance_weighted_bound():
    vae = tiny_vae("bernoulli", "vimco")
    exact = gradient(vae, exact_iwae(vae, IMAGES, 2))
    z = z_scores(estimates(vae, "vimco", 2), exact)
    assert z.max() < Z_LIMIT, z.max().item()
    # and the ELBO's gradient is a different one, which the same test tells apart
    elbo_gradient = gradient(vae, exact_elbo(vae, IMAGES))
    assert z_scores(estimates(vae, "vimco", 2), elbo_gradient).max() > Z_LIMIT


@pytest.mark.numerics
@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
def test_enumeration_is_the_exact_gradient(latent):
    """Pyro's TraceEnum_ELBO over every code: the exact ELBO and its gradient, to rounding."""
    pyro.enable_validation(True)
    vae = tiny_vae(latent, "enumerate")
    elbo = make_elbo("elbo", "enumerate")
    vae.zero_grad()
    loss = elbo.loss_and_grads(vae.model, vae.guide, IMAGES)
    mine = flat_gradient(vae)
    value = exact_elbo(vae, IMAGES)
    exact = gradient(vae, value)
    assert loss == pytest.approx(-value.item(), rel=1e-12)
    torch.testing.assert_close(-mine, exact, rtol=1e-10, atol=1e-12)


def test_a_wrong_estimator_fails_the_same_test():
    """The power check: DisARM without its 1/2 (twice its gradient of the encoder's weights,
    the decoder's as they are) is told apart from the exact gradient by the same test."""
    vae = tiny_vae("bernoulli", "disarm")
    exact = gradient(vae, exact_elbo(vae, IMAGES))
    draws = estimates(vae, "disarm")
    assert z_scores(draws, exact).max() < Z_LIMIT
    first = sum(p.numel() for p in vae.prior.parameters())
    encoder = slice(first, first + sum(p.numel() for p in vae.encoder.parameters()))
    wrong = draws.clone()
    wrong[:, encoder] *= 2.0
    assert z_scores(wrong, exact).max() > Z_LIMIT


@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
@pytest.mark.parametrize("estimator", ["gumbel", "straight-through"])
def test_relaxed_estimators_are_biased_and_their_bias_is_measured(latent, estimator):
    """Gumbel-softmax and straight-through follow another objective's gradient: their mean is
    far from the exact one at temperature 1 (the bias this test measures), and nearer at 0.3
    for gumbel, whose relaxation tightens as the temperature falls."""
    vae = tiny_vae(latent, estimator)
    exact = gradient(vae, exact_elbo(vae, IMAGES))
    draws = estimates(vae, estimator)
    bias = (draws.mean(0) - exact).norm() / exact.norm()
    assert z_scores(draws, exact).max() > Z_LIMIT, bias.item()
    if estimator == "gumbel":
        elbo = make_elbo("elbo", "gumbel", temperature=0.3)
        x = IMAGES.repeat(COPIES, 1)
        pyro.set_rng_seed(0)
        cold = []
        for _ in range(REPEATS):
            vae.zero_grad()
            elbo.loss_and_grads(vae.model, vae.guide, x)
            cold.append(-flat_gradient(vae) / COPIES)
        cold_bias = (torch.stack(cold).mean(0) - exact).norm() / exact.norm()
        assert cold_bias < bias, (cold_bias.item(), bias.item())


@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
def test_straight_through_reports_the_discrete_elbo(latent):
    """Straight-through decodes hard codes, draws of q: its loss is an unbiased estimate of
    minus the ELBO, though its gradient is not that ELBO's."""
    vae = tiny_vae(latent, "straight-through")
    elbo = make_elbo("elbo", "straight-through")
    pyro.set_rng_seed(0)
    losses = torch.tensor([elbo.loss(vae.model, vae.guide, IMAGES) for _ in range(2000)])
    se = losses.std() / math.sqrt(len(losses))
    assert abs(losses.mean() + exact_elbo(vae, IMAGES).item()) < Z_LIMIT * se


def test_enumerable_supports_hold_every_code_once():
    b = BernoulliCode(torch.zeros(2, 4))
    support = b.enumerate_support(expand=False)
    assert support.shape == (16, 1, 4)
    assert len({tuple(row.tolist()) for row in support[:, 0]}) == 16
    c = CategoricalCode(torch.zeros(2, 3, 4))
    support = c.enumerate_support()
    assert support.shape == (64, 2, 3, 4)
    assert (support.sum(-1) == 1).all()
    assert len({tuple(row.flatten().tolist()) for row in support[:, 0]}) == 64
    # the probabilities of all codes sum to one
    logits = torch.randn(2, 3, 4, dtype=torch.float64)
    c = CategoricalCode(logits)
    total = c.log_prob(c.enumerate_support()).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64))


def test_too_many_codes_to_enumerate_is_one_line():
    check_enumerable(12, None)  # 4096
    with pytest.raises(ConfigError, match="2\\^13, more than 4096"):
        check_enumerable(13, None)
    with pytest.raises(ConfigError, match="10\\^4, more than 4096"):
        check_enumerable(4, 10)
    assert MAX_ENUMERATED == 4096


# ---------------------------------------------------------------------------------------------
# A hand-written PyTorch reference: the same weights and batches, the same steps


def _reference_surrogate(nets, x: torch.Tensor, estimator: str) -> torch.Tensor:
    """Minus the surrogate whose gradient is the estimator's, written out in plain PyTorch,
    drawing from the global stream in the order the library's traces do."""
    encoder, decoder, prior_logits = nets

    def log_p(z):  # log p(x, z) per image, (..., B)
        out = decoder(z)[0]
        log_lik = (x * F.logsigmoid(out) + (1 - x) * F.logsigmoid(-out)).sum(-1)
        prior = z * F.logsigmoid(prior_logits) + (1 - z) * F.logsigmoid(-prior_logits)
        return log_lik + prior.sum(-1)

    def log_q(z, logits):
        return (z * F.logsigmoid(logits) + (1 - z) * F.logsigmoid(-logits)).sum(-1)

    logits = encoder(x)[0]
    z = torch.bernoulli(torch.sigmoid(logits.detach()))  # the guide's draw
    if estimator == "reinforce":  # Williams (1992): f's own score, image by image
        f = log_p(z) - log_q(z, logits)
        return -(log_p(z) + f.detach() * log_q(z, logits)).sum()
    u = torch.rand_like(logits)  # DisARM (Dong et al. 2020), one antithetic pair
    b = (u < torch.sigmoid(logits)).double()
    b_tilde = (u > torch.sigmoid(-logits)).double()
    f = torch.stack([log_p(c) - log_q(c, logits) for c in (b, b_tilde)]).detach()
    factor = (1 - 2 * b_tilde) * (b != b_tilde).double() * torch.sigmoid(logits.abs())
    grad = 0.5 * (f[0] - f[1])[:, None] * factor
    return -((log_p(b) + log_p(b_tilde)) / 2 + (grad.detach() * logits).sum(-1)).sum()


@pytest.mark.numerics
@pytest.mark.parametrize("estimator", ["reinforce", "disarm"])
def test_a_hand_written_reference_takes_the_same_steps(estimator):
    import copy

    from pyro.infer import SVI
    from pyro.optim import Adam

    torch.manual_seed(3)
    vae = VAE(12, latent_dim=4, hidden_sizes=(8,), latent="bernoulli", estimator=estimator,
              activation="tanh").double()  # fmt: skip
    nets = copy.deepcopy((vae.encoder, vae.decoder, vae.prior.logits))
    start = [p.detach().clone() for p in vae.parameters()]
    batches = [torch.bernoulli(torch.full((5, 12), 0.4, dtype=torch.float64)) for _ in range(4)]
    pyro.clear_param_store()
    svi = SVI(vae.model, vae.guide, Adam({"lr": 0.01}), make_elbo("elbo", estimator))
    pyro.set_rng_seed(7)
    for x in batches:
        svi.step(x)
    reference = [*nets[0].parameters(), *nets[1].parameters(), nets[2]]
    optimizer = torch.optim.Adam(reference, lr=0.01)
    pyro.set_rng_seed(7)
    for x in batches:
        optimizer.zero_grad()
        _reference_surrogate(nets, x, estimator).backward()
        optimizer.step()
    mine = [*vae.encoder.parameters(), *vae.decoder.parameters(), vae.prior.logits]
    for a, b in zip(mine, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert all(not torch.equal(a, b) for a, b in zip(vae.parameters(), start, strict=True))
