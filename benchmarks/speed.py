"""Training-step time of pyro_vae against hand-written PyTorch with exactly the same networks.

Both sides use pyro_vae's ``Encoder`` and ``Decoder`` (784-400-20 ReLU), the same batches from
``BatchLoader`` and Adam at 1e-3. The hand-written step is the analytic-KL negative ELBO written
out (Bernoulli log-likelihood from logits plus ``-1/2 sum(1 + log s^2 - m^2 - s^2)``) with one
``torch.optim.Adam``; the Pyro step is ``SVI.step`` with the ELBO named, either as
``pyro-vae train`` runs it (pyro_vae's ``JointAdam``, Pyro's per-step validation off) or with
Pyro's stock ``pyro.optim.Adam`` and validation on. Steps are timed
alternately, A B A B ..., in one process, so both sides see the same machine load; the report
is the median of the per-step time ratios::

    python benchmarks/speed.py --data-dir ../shared/data --steps 300
"""

import argparse
import statistics
import time

import pyro
import pyro.optim
import torch
import torch.nn.functional as F
from pyro.infer import SVI

from pyro_vae import VAE
from pyro_vae.data import BatchLoader, load_dataset, prepare_images
from pyro_vae.evaluate import kl_per_dimension
from pyro_vae.objectives import make_elbo
from pyro_vae.train import TrainConfig, make_optimizer


def hand_written_step(vae: VAE, optim: torch.optim.Optimizer):
    def step(x):
        loc, scale = vae.encoder(x)
        z = loc + scale * torch.randn_like(loc)
        logits = vae.decoder(z)[0]
        log_px_z = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        loss = -(log_px_z - kl_per_dimension(loc, scale).sum())
        optim.zero_grad()
        loss.backward()
        optim.step()
        return loss.item()

    return step


def pyro_step(vae: VAE, objective: str, jit: bool, stock: bool):
    config = TrainConfig(objective=objective, jit=jit)
    optim = pyro.optim.Adam({"lr": 1e-3}) if stock else make_optimizer(config)
    svi = SVI(vae.model, vae.guide, optim, make_elbo(objective, jit=jit))
    validate = stock

    def step(x):
        with pyro.validation_enabled(validate):
            return svi.step(x)

    return step


def time_alternately(steps: dict, batches: list, warmup: int = 20) -> dict:
    """Median per-step seconds of each variant, stepping them in turn on the same batch."""
    times = {name: [] for name in steps}
    for i, x in enumerate(batches):
        for name, step in steps.items():
            started = time.perf_counter()
            step(x)
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    args = parser.parse_args()

    data = load_dataset("mnist", args.data_dir)
    train, _ = prepare_images(data, "dynamic", "bernoulli", seed=0)
    variants = {  # label: (objective, jit, stock Pyro optimizer and validation)
        "TraceMeanField_ELBO (the default)": ("elbo-analytic-kl", False, False),
        "Trace_ELBO": ("elbo", False, False),
        "JitTraceMeanField_ELBO": ("elbo-analytic-kl", True, False),
        "JitTrace_ELBO": ("elbo", True, False),
        "TraceMeanField_ELBO, stock pyro.optim.Adam + validation": (
            "elbo-analytic-kl",
            False,
            True,
        ),
        "Trace_ELBO, stock pyro.optim.Adam + validation": ("elbo", False, True),
    }
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print("| batch | pyro_vae step | median ms | hand-written ms | ratio (median of per-step) |")
    print("|---|---|---|---|---|")
    for batch_size in args.batch_sizes:
        loader = BatchLoader(train, batch_size, "dynamic", seed=0)
        batches = []
        epoch = 0
        while len(batches) < args.steps:
            batches += list(loader.epoch(epoch))
            epoch += 1
        batches = [b for b in batches[: args.steps] if len(b) == batch_size]
        for label, (objective, jit, stock) in variants.items():
            pyro.clear_param_store()
            torch.manual_seed(0)
            reference = VAE(784)
            mine = VAE(784)
            mine.load_state_dict(reference.state_dict())
            steps = {
                "hand": hand_written_step(reference, torch.optim.Adam(reference.parameters())),
                "pyro": pyro_step(mine, objective, jit, stock),
            }
            times = time_alternately(steps, batches)
            ratios = [p / h for p, h in zip(times["pyro"], times["hand"], strict=True)]
            print(
                f"| {batch_size} | {label} | {1000 * statistics.median(times['pyro']):.2f} | "
                f"{1000 * statistics.median(times['hand']):.2f} | "
                f"{statistics.median(ratios):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
