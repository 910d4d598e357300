"""``MeanFieldELBO`` against Pyro's ``TraceMeanField_ELBO``: the same loss and the same
gradients from the same draws, on the VAE and on small programs that reach each branch (a
closed-form KL, a Monte Carlo KL, an observed site, a subsampled plate, a mask, an auxiliary
guide site, vectorized particles), with Pyro's validation off (the lean path) and on (Pyro's
own path)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE
from pyro_vae.objectives import (
    MeanFieldELBO,
    MonteCarloEM,
    ReweightedWakeSleep,
    WakeSleep,
    make_elbo,
)

# equalities and closed forms: CI runs these again with another CPU's arithmetic
pytestmark = pytest.mark.numerics


def _vae_program():
    torch.manual_seed(0)
    vae = VAE(30, latent_dim=3, hidden_sizes=(8,))
    x = torch.bernoulli(torch.rand(5, 30))
    return vae.model, vae.guide, (x,), list(vae.parameters())


def _branches_program():
    """A global latent with a closed-form KL (Normal), one without (a Normal guide against a
    Student-t prior), a local latent and an observed site under a subsampled, masked plate,
    and an auxiliary guide site."""
    loc = torch.tensor([0.3, -0.2], requires_grad=True)
    log_scale = torch.tensor([-0.1, 0.2], requires_grad=True)
    local = torch.tensor([0.1, 0.4, -0.3, 0.2, 0.0, -0.5], requires_grad=True)
    data = torch.tensor([0.5, -1.0, 2.0, 0.1, 0.7, -0.4])
    chosen, keep = torch.tensor([0, 2, 5]), torch.tensor([True, False, True])

    def model(data):
        a = pyro.sample("a", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        b = pyro.sample("b", dist.StudentT(3.0, 0.0, 1.0))
        with pyro.plate("data", 6, subsample=chosen) as idx, pyro.poutine.mask(mask=keep):
            c = pyro.sample("c", dist.Normal(0.0, 2.0))
            pyro.sample("x", dist.Normal(a.sum() + b + c, 1.0), obs=data[idx])

    def guide(data):
        pyro.sample("a", dist.Normal(loc, log_scale.exp()).to_event(1))
        pyro.sample("aux", dist.Normal(loc[0], 1.0), infer={"is_auxiliary": True})
        pyro.sample("b", dist.Normal(loc[1], log_scale[1].exp()))
        with pyro.plate("data", 6, subsample=chosen) as idx, pyro.poutine.mask(mask=keep):
            pyro.sample("c", dist.Normal(local[idx], 0.5))

    return model, guide, (data,), [loc, log_scale, local]


PROGRAMS = {"vae": _vae_program, "branches": _branches_program}


def _loss_and_grads(elbo, program, seed, validation):
    model, guide, args, params = program()
    pyro.clear_param_store()
    torch.manual_seed(seed)
    with pyro.validation_enabled(validation):
        loss = elbo.differentiable_loss(model, guide, *args)
    grads = torch.autograd.grad(loss, params)
    return loss.detach(), grads


@pytest.mark.parametrize("validation", [False, True], ids=["lean", "validated"])
@pytest.mark.parametrize("particles", [1, 3], ids=["K=1", "K=3-vectorized"])
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_mean_field_elbo_is_pyros(name, particles, validation):
    kwargs = dict(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    for seed in (0, 1):
        mine = _loss_and_grads(MeanFieldELBO(**kwargs), PROGRAMS[name], seed, validation)
        pyros = _loss_and_grads(TraceMeanField_ELBO(**kwargs), PROGRAMS[name], seed, validation)
        torch.testing.assert_close(mine[0], pyros[0], rtol=1e-6, atol=1e-6)
        for a, b in zip(mine[1], pyros[1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    other = _loss_and_grads(MeanFieldELBO(**kwargs), PROGRAMS[name], 2, validation)
    assert not torch.allclose(other[0], mine[0])  # another draw: another estimate


def test_mean_field_elbo_loss_and_grads_match_pyros_in_svi():
    """``loss_and_grads`` (what ``SVI.step`` calls): the same float and the same gradients."""
    results = []
    for elbo in (MeanFieldELBO(max_plate_nesting=1), TraceMeanField_ELBO(max_plate_nesting=1)):
        model, guide, args, params = _vae_program()
        pyro.clear_param_store()
        torch.manual_seed(3)
        with pyro.validation_enabled(False):
            loss = elbo.loss_and_grads(model, guide, *args)
        results.append((loss, [p.grad.clone() for p in params]))
    (loss, grads), (pyro_loss, pyro_grads) = results
    assert isinstance(loss, float) and loss == pytest.approx(pyro_loss, rel=1e-6)
    for a, b in zip(grads, pyro_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_each_objective_is_its_class():
    assert type(make_elbo("elbo-analytic-kl")) is MeanFieldELBO
    assert type(make_elbo("elbo-analytic-kl", jit=True)).__name__ == "JitTraceMeanField_ELBO"
    assert type(make_elbo("elbo")) is Trace_ELBO
    assert type(make_elbo("elbo", "reinforce-baseline")) is TraceGraph_ELBO
    assert type(make_elbo("iwae", num_particles=5)) is RenyiELBO
    assert type(make_elbo("wake-sleep")) is WakeSleep
    assert type(make_elbo("rws", num_particles=3)) is ReweightedWakeSleep
    assert type(make_elbo("mcem")) is MonteCarloEM


@pytest.mark.parametrize(
    "name, parameters",
    [
        ("_get_trace", ["self", "model", "guide", "args", "kwargs"]),
        ("_differentiable_loss_particle", ["self", "model_trace", "guide_trace"]),
    ],
)
def test_the_private_methods_it_overrides_are_still_pyros(name, parameters):
    """MeanFieldELBO overrides two private methods of Pyro's class (it buys about 6% of the
    default step, docs/benchmarks.md): each must still be defined by Pyro's TraceMeanField_ELBO
    (or a class it derives from) with the same parameters, else the override calls nothing or
    is called wrongly. A Pyro that renames or changes them fails here, not in a run."""
    import inspect

    owner = next(c for c in TraceMeanField_ELBO.__mro__ if name in vars(c))
    assert owner.__module__.startswith("pyro.infer")
    assert list(inspect.signature(getattr(owner, name)).parameters) == parameters
    assert getattr(MeanFieldELBO, name) is not getattr(owner, name)  # it is overridden
