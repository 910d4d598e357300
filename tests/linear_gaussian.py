"""A linear-Gaussian model and guide with closed-form wake-sleep gradients, shared by the
wake-sleep and reweighted wake-sleep tests: z ~ N(0, 1), x | z ~ N(w z + b, SIGMA^2), and the
guide q(z|x) = N(a x + c, S^2), every parameter a scalar in Pyro's param store."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

SIGMA, S = 0.7, 0.5  # the model's noise and the guide's scale, fixed


def model(x):
    w = pyro.param("w", torch.tensor(1.3))
    b = pyro.param("b", torch.tensor(-0.4))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(w * z + b, SIGMA), obs=x)


def guide(x):
    a = pyro.param("a", torch.tensor(0.6))
    c = pyro.param("c", torch.tensor(0.2))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(a * x + c, S))
