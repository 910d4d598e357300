"""``make_elbo``: each objective is the Pyro class that computes it."""

from pyro.infer import RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from pyro_vae.objectives import MonteCarloEM, ReweightedWakeSleep, WakeSleep, make_elbo


def test_each_objective_is_its_class():
    assert type(make_elbo("elbo-analytic-kl")) is TraceMeanField_ELBO
    assert type(make_elbo("elbo-analytic-kl", jit=True)).__name__ == "JitTraceMeanField_ELBO"
    assert type(make_elbo("elbo")) is Trace_ELBO
    assert type(make_elbo("elbo", "reinforce-baseline")) is TraceGraph_ELBO
    assert type(make_elbo("iwae", num_particles=5)) is RenyiELBO
    assert type(make_elbo("wake-sleep")) is WakeSleep
    assert type(make_elbo("rws", num_particles=3)) is ReweightedWakeSleep
    assert type(make_elbo("mcem")) is MonteCarloEM
