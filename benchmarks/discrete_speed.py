"""Training-step time of each discrete-latent estimator against hand-written PyTorch steps on
the same networks and batches.

The model is the "nonlinear" one of the ARM and DisARM experiments (784-200-200, 200 Bernoulli
units, LeakyReLU(0.3), mirrored decoder), the same initial weights on every side, batches of 50
binarized-MNIST images, Adam at 1e-4. Two hand-written steps, written out in plain PyTorch as
the reference in ``tests/test_discrete.py`` is (which takes pyro_vae's steps to 1e-10), except
that DisARM's pair goes through the decoder in one pass and no unused code is drawn:

``hand REINFORCE``
    one draw an image, the surrogate ``log p(x, z) + stop(f) log q(z|x)``;
``hand DisARM``
    one antithetic pair an image, the DisARM gradient of the logits, the pair's mean
    ``log p(x, b)`` for the decoder.

Each pyro_vae estimator's step (``pyro.infer.SVI`` with its ELBO and the library's optimizer,
Pyro's validation off, as ``pyro-vae train`` runs it) is timed alternately with the two
hand-written steps, in rotating order, in one process; the table gives medians of the
per-round ratios. The goal is REINFORCE within 1.5 times the hand-written REINFORCE, DisARM
within 1.5 times the hand-written DisARM::

    python benchmarks/discrete_speed.py --data-dir ../shared/data --steps 300
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys

import pyro
import torch
import torch.nn.functional as F
from measure import machine, median_ratio, time_alternately
from pyro.infer import SVI

from pyro_vae import VAE
from pyro_vae.build import make_optimizer
from pyro_vae.config import TrainConfig
from pyro_vae.data import load_dataset
from pyro_vae.objectives import make_elbo

ESTIMATORS = ["reinforce", "reinforce-baseline", "reinforce-nn-baseline", "reinforce-loo",
              "vimco", "arm", "disarm", "gumbel", "straight-through"]  # fmt: skip
DRAWS = {"reinforce-loo": 2, "vimco": 2}
HAND_REINFORCE, HAND_DISARM = "hand REINFORCE", "hand DisARM"
LR = 1e-4


def fresh_vae(estimator: str, hidden: tuple[int, ...], latent_dim: int) -> VAE:
    torch.manual_seed(0)
    return VAE(784, latent_dim=latent_dim, hidden_sizes=hidden, activation="leaky-relu",
               latent="bernoulli", estimator=estimator)  # fmt: skip


def hand_step(vae: VAE, disarm: bool):
    """A plain PyTorch step on the VAE's own modules (``tests/test_discrete.py``'s
    reference), with torch's Adam."""
    encoder, decoder, prior_logits = vae.encoder, vae.decoder, vae.prior.logits
    optim = torch.optim.Adam(vae.parameters(), lr=LR)

    def log_p(x, z):
        out = decoder(z)[0]
        log_lik = (x * F.logsigmoid(out) + (1 - x) * F.logsigmoid(-out)).sum(-1)
        prior = z * F.logsigmoid(prior_logits) + (1 - z) * F.logsigmoid(-prior_logits)
        return log_lik + prior.sum(-1)

    def log_q(z, logits):
        return (z * F.logsigmoid(logits) + (1 - z) * F.logsigmoid(-logits)).sum(-1)

    def step(x):
        logits = encoder(x)[0]
        if not disarm:
            z = torch.bernoulli(torch.sigmoid(logits.detach()))
            lp, lq = log_p(x, z), log_q(z, logits)
            loss = -(lp + (lp - lq).detach() * lq).sum()
        else:
            u = torch.rand_like(logits)
            b = (u < torch.sigmoid(logits)).float()
            b_tilde = (u > torch.sigmoid(-logits)).float()
            log_pb, log_pt = log_p(x, torch.stack([b, b_tilde]))  # both codes in one pass
            with torch.no_grad():
                f = log_pb - log_q(b, logits), log_pt - log_q(b_tilde, logits)
                factor = (1 - 2 * b_tilde) * (b != b_tilde).float() * torch.sigmoid(logits.abs())
                grad = 0.5 * (f[0] - f[1])[:, None] * factor
            loss = -((log_pb + log_pt) / 2 + (grad * logits).sum(-1)).sum()
        optim.zero_grad()
        loss.backward()
        optim.step()
        return loss.item()

    return step


def pyro_vae_step(vae: VAE, estimator: str):
    objective = "iwae" if estimator == "vimco" else "elbo"
    config = TrainConfig(learning_rate=LR, latent="bernoulli", estimator=estimator)
    svi = SVI(vae.model, vae.guide, make_optimizer(config),
              make_elbo(objective, estimator, DRAWS.get(estimator, 1)))  # fmt: skip

    def step(x):
        with pyro.validation_enabled(False):
            return svi.step(x)

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--estimators", nargs="+", default=ESTIMATORS, choices=ESTIMATORS)
    p.add_argument("--quick", action="store_true", help="a small network on mnist-sample")
    args = p.parse_args(argv)
    hidden, latent_dim = ((16,), 8) if args.quick else ((200, 200), 200)
    if args.quick:
        data = load_dataset("mnist-sample")
        train = torch.bernoulli(data.train_images.float() / 255, generator=torch.Generator()
                                .manual_seed(0))  # fmt: skip
    else:
        train = load_dataset("binarized-mnist", args.data_dir).train_images
    batches = list(train[: 50 * (args.steps + 20)].split(50))
    print(machine())
    print(f"median of {len(batches) - 20} per-round step-time ratios, batch 50\n")
    print(f"| estimator | ms | {HAND_REINFORCE} ms | ratio | {HAND_DISARM} ms | ratio |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for estimator in args.estimators:
        pyro.clear_param_store()
        mine = fresh_vae(estimator, hidden, latent_dim)
        reference = fresh_vae("disarm", hidden, latent_dim)
        steps = {
            estimator: pyro_vae_step(mine, estimator),
            HAND_REINFORCE: hand_step(copy.deepcopy(reference), disarm=False),
            HAND_DISARM: hand_step(copy.deepcopy(reference), disarm=True),
        }
        times = time_alternately(steps, batches)
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        rows[estimator] = (median_ratio(times, estimator, HAND_REINFORCE),
                           median_ratio(times, estimator, HAND_DISARM))  # fmt: skip
        print(f"| `{estimator}` | {ms[estimator]:.2f} | {ms[HAND_REINFORCE]:.2f} | "
              f"{rows[estimator][0]:.2f} | {ms[HAND_DISARM]:.2f} | {rows[estimator][1]:.2f} |",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
