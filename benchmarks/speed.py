"""Training-step time of pyro_vae against hand-written PyTorch with exactly the same networks.

Every side uses pyro_vae's ``Encoder`` and ``Decoder`` (784-400-20 ReLU, the same initial
weights), the same dynamically binarized MNIST batches from ``BatchLoader``, and Adam at 1e-3.

Two hand-written PyTorch steps, both the analytic-KL negative ELBO written out
(``F.binary_cross_entropy_with_logits`` plus ``sum -1/2 (1 + log s^2 - m^2 - s^2)``, one
reparameterized sample):

``hand-written``
    ``torch.optim.Adam`` with its defaults, as people write it: the yardstick.
``hand-written, same arithmetic``
    the fused Adam that pyro_vae's optimizer uses and pyro_vae's Bernoulli log density
    (:func:`pyro_vae.model.bernoulli_log_density`, which avoids the CPU's slow ``log1p``): the
    same floating-point work as pyro_vae's step, so the ratio against it is what Pyro's tracing
    costs.

The Pyro steps are ``pyro-vae train``'s step (``pyro.infer.SVI`` with its ELBO and
``JointOptimizer``, validation off) with each ELBO class, and a plain Pyro VAE as Pyro's
tutorial writes it (``pyro.optim.Adam``, Pyro's validation on). Each Pyro step is timed alternately
with the two hand-written ones, in rotating order, in one process; the report gives medians of
the per-round ratios. Peak memory is measured per side in a fresh process (``--memory``)::

    python benchmarks/speed.py --data-dir ../shared/data --steps 300

``--kernels`` times the Bernoulli log-density's kernels alone instead (``log1p`` against
``log``, torch's against pyro_vae's)::

    python benchmarks/speed.py --kernels --batch-sizes 128
"""

import argparse
import cProfile
import json
import pstats
import statistics
import warnings

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
import torch.nn.functional as F
from measure import (
    machine,
    median_ratio,
    peak_memory,
    peak_mib_in_fresh_process,
    synchronize,
    time_alternately,
)
from pyro.infer import SVI, TraceMeanField_ELBO

from pyro_vae import VAE
from pyro_vae.data import BatchLoader, load_dataset, prepare_images
from pyro_vae.evaluate import kl_per_dimension
from pyro_vae.model import bernoulli_log_density
from pyro_vae.objectives import make_elbo
from pyro_vae.train import TrainConfig, make_optimizer

HAND = "hand-written"
SAME = "hand-written, same arithmetic"
ONE = dict(num_particles=1, vectorize_particles=False, max_plate_nesting=1)
# label: the ELBO; None is the plain Pyro VAE
PYRO_VARIANTS = {
    "pyro-vae train (MeanFieldELBO)": lambda: make_elbo("elbo-analytic-kl"),
    "Pyro's TraceMeanField_ELBO": lambda: TraceMeanField_ELBO(**ONE),
    "Trace_ELBO": lambda: make_elbo("elbo"),
    "JitTraceMeanField_ELBO": lambda: make_elbo("elbo-analytic-kl", jit=True),
    "JitTrace_ELBO": lambda: make_elbo("elbo", jit=True),
    "plain Pyro (tutorial style)": None,
}


def hand_written_step(vae: VAE, same: bool):
    """The step as people write it, or (``same``) with pyro_vae's Adam and Bernoulli density."""
    if same:
        optim = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
    else:
        optim = torch.optim.Adam(vae.parameters(), lr=1e-3)

    def step(x):
        loc, scale = vae.encoder(x)  # (B, Z) each
        z = loc + scale * torch.randn_like(loc)
        logits = vae.decoder(z)[0]  # (B, D)
        if same:
            log_px_z = bernoulli_log_density(logits, x, 1).sum()
        else:
            log_px_z = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        loss = -(log_px_z - kl_per_dimension(loc, scale).sum())
        optim.zero_grad()
        loss.backward()
        optim.step()
        return loss.item()

    return step


def pyro_vae_step(vae: VAE, elbo):
    """``pyro-vae train``'s step with an ELBO: ``SVI``, its optimizer, Pyro's validation off."""
    svi = SVI(vae.model, vae.guide, make_optimizer(TrainConfig()), elbo)

    def step(x):
        with pyro.validation_enabled(False):
            return svi.step(x)

    return step


def plain_pyro_step(vae: VAE):
    """A VAE as Pyro's tutorial writes it, on the same networks."""

    def model(x):
        pyro.module("decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 20), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=vae.decoder(z)[0]).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", vae.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = vae.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())

    def step(x):
        with pyro.validation_enabled(True):
            return svi.step(x)

    return step


def make_step(label: str, vae: VAE):
    if label == HAND:
        return hand_written_step(vae, same=False)
    if label == SAME:
        return hand_written_step(vae, same=True)
    if PYRO_VARIANTS[label] is None:
        return plain_pyro_step(vae)
    return pyro_vae_step(vae, PYRO_VARIANTS[label]())


def batches_of(train: torch.Tensor, batch_size: int, steps: int, device: str) -> list:
    loader = BatchLoader(train.to(device), batch_size, "dynamic", seed=0)
    batches, epoch = [], 0
    while len(batches) < steps:
        batches += [b for b in loader.epoch(epoch) if len(b) == batch_size]
        epoch += 1
    return batches[:steps]


def fresh_vaes(count: int, device: str) -> list[VAE]:
    torch.manual_seed(0)
    first = VAE(784).to(device)
    others = [VAE(784).to(device) for _ in range(count - 1)]
    for vae in others:
        vae.load_state_dict(first.state_dict())
    return [first, *others]


def measure_memory(label: str, batches: list, device: str) -> float:
    """Peak MiB that building the model and optimizer and taking the steps add (this process)."""
    pyro.clear_param_store()
    with peak_memory(device) as peak:
        step = make_step(label, fresh_vaes(1, device)[0])
        for x in batches:
            step(x)
        synchronize(device)
    return peak["peak_mib"]


def memory_in_fresh_process(args, label: str, batch_size: int) -> float:
    command = [__file__, "--memory", label, "--batch-sizes", str(batch_size)]
    command += ["--device", args.device] + (["--data-dir", args.data_dir] if args.data_dir else [])
    return peak_mib_in_fresh_process(command)


def profile(label: str, batches: list, rows: int = 25) -> None:
    """One side's steps (after 20 untimed) under ``cProfile`` (Python functions) and then under
    torch's profiler (operators, with call counts), the costliest first."""
    pyro.clear_param_store()
    step = make_step(label, fresh_vaes(1, "cpu")[0])
    for x in batches[:20]:
        step(x)
    profiler = cProfile.Profile()
    profiler.enable()
    for x in batches[20:]:
        step(x)
    profiler.disable()
    print(f"{label}: {len(batches) - 20} steps")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(rows)
    with torch.profiler.profile() as operators:
        for x in batches[20:]:
            step(x)
    print(operators.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def kernels(batch_size: int, steps: int, device: str) -> None:
    """The Bernoulli log-density's kernels on a ``(batch_size, 784)`` array of logits, timed
    alternately: ``log1p`` against ``log``, and torch's ``binary_cross_entropy_with_logits``
    against pyro_vae's ``bernoulli_log_density``, each summed over the pixels, forward and
    backward."""
    torch.manual_seed(0)
    logits = torch.randn(batch_size, 784, device=device, requires_grad=True)
    x = torch.bernoulli(torch.rand(batch_size, 784, device=device))
    plain = logits.detach().abs()

    def backward(log_px):
        log_px.sum().backward()
        logits.grad = None

    sides = {
        "log1p": lambda _: torch.log1p(plain),
        "log": lambda _: torch.log(plain),
        "binary_cross_entropy_with_logits, forward and backward": lambda _: backward(
            -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        ),
        "bernoulli_log_density, forward and backward": lambda _: backward(
            bernoulli_log_density(logits, x, 1)
        ),
    }
    times = time_alternately(sides, [None] * (steps + 20), device=device)
    print(f"median of {steps} rounds, ({batch_size}, 784) float32 on {device}\n")
    print("| kernel | µs |\n|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {1e6 * statistics.median(seconds):.0f} |")
    names = list(sides)
    print(f"\nlog1p / log: {median_ratio(times, names[0], names[1]):.2f}; "
          f"bernoulli_log_density / binary_cross_entropy_with_logits: "
          f"{median_ratio(times, names[3], names[2]):.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=300, help="rounds timed, 20 more untimed")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--variants", nargs="+", choices=list(PYRO_VARIANTS), metavar="LABEL")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory processes")
    parser.add_argument("--profile", metavar="LABEL", help="cProfile this side's steps instead")
    parser.add_argument(
        "--kernels", action="store_true", help="time the Bernoulli density's kernels instead"
    )
    parser.add_argument("--memory", metavar="LABEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*torch.jit.trace.*deprecated")
    if args.kernels:
        kernels(args.batch_sizes[0], args.steps, args.device)
        return

    data = load_dataset("mnist", args.data_dir)
    train, _ = prepare_images(data, "dynamic", "bernoulli", seed=0)
    if args.profile:
        profile(args.profile, batches_of(train, args.batch_sizes[0], args.steps + 20, "cpu"))
        return
    if args.memory:  # a child process: one side, 50 steps, one JSON line
        batches = batches_of(train, args.batch_sizes[0], 50, args.device)
        print(json.dumps({"peak_mib": measure_memory(args.memory, batches, args.device)}))
        return

    print(machine())
    print(f"median of {args.steps} per-round step-time ratios; peak MiB over 50 steps\n")
    print(f"| batch | pyro_vae step | ms | {HAND} ms | ratio | {SAME} ms | ratio | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    variants = args.variants or list(PYRO_VARIANTS)
    for batch_size in args.batch_sizes:
        batches = batches_of(train, batch_size, args.steps + 20, args.device)
        for label in variants:
            pyro.clear_param_store()
            sides = (label, HAND, SAME)
            vaes = fresh_vaes(len(sides), args.device)
            steps = {side: make_step(side, vae) for side, vae in zip(sides, vaes, strict=True)}
            times = time_alternately(steps, batches, device=args.device)
            ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
            memory = (
                "" if args.no_memory else f"{memory_in_fresh_process(args, label, batch_size):.0f}"
            )
            print(
                f"| {batch_size} | {label} | {ms[label]:.2f} | {ms[HAND]:.2f} | "
                f"{median_ratio(times, label, HAND):.3f} | {ms[SAME]:.2f} | "
                f"{median_ratio(times, label, SAME):.3f} | {memory} |",
                flush=True,
            )
        if not args.no_memory:
            hand = [f"{memory_in_fresh_process(args, h, batch_size):.0f}" for h in (HAND, SAME)]
            print(f"| {batch_size} | peak MiB of {HAND} / {SAME} | | | | | | {' / '.join(hand)} |")


if __name__ == "__main__":
    main()
