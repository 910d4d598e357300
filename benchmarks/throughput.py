"""Training throughput of ``pyro-vae train`` in one process against several (torchrun, DDP).

For each network (the default MLP and ``--arch conv``), the same training run on
``--train-size`` MNIST images (dynamically binarized, the defaults otherwise, ``--batch-size``
per process) is made

- in one process, with all of the machine's cores as torch threads;
- under ``torchrun --standalone --nproc_per_node=N`` (gloo), one thread per process;
- with ``--device cuda``, one process on one GPU, when a GPU is here (``--gpu``).

Throughput is training images per second in the last epoch (the run's ``metrics.jsonl``
``seconds``: training steps only, not the validation score or the checkpoint), so the first
epoch's warm-up is left out. Each setting runs ``--repeats`` times and the best is kept::

    python benchmarks/throughput.py --data-dir ../shared/data
    python benchmarks/throughput.py --data-dir ../shared/data --gpu   # on a GPU machine

N processes on N CPU cores compete with each other and with the machine's other work: the
ratio says what DDP costs or gains on this machine, not what a cluster would give.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def run(
    arch: str, procs: int, device: str, args: argparse.Namespace, out: Path, batch: int
) -> float:
    """Images per second of the last epoch of one run."""
    train = ["-m", "pyro_vae", "train", "--arch", arch, "--data-dir", args.data_dir,
             "--train-size", str(args.train_size), "--batch-size", str(batch),
             "--epochs", str(args.epochs), "--device", device, "--no-progress", "--no-plots",
             "--eval-particles", "1", "--eval-images", "10", "--out", str(out)]  # fmt: skip
    env = dict(os.environ)
    if procs > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // procs))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={procs}", *train]  # fmt: skip
    else:
        command = [sys.executable, *train]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last, before = rows[-1], rows[-2]
    steps = last["step"] - before["step"]
    return steps * batch * procs / (last["seconds"] - before["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("PYRO_VAE_DATA_DIR"))
    parser.add_argument("--train-size", type=int, default=12800)
    parser.add_argument("--batch-size", type=int, default=128, help="per process (128)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--procs", type=int, default=2, help="processes for the DDP run (2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--archs", nargs="+", default=["mlp", "conv"])
    parser.add_argument("--gpu", action="store_true", help="also one process on cuda")
    args = parser.parse_args()
    settings = [(1, "cpu"), (args.procs, "cpu")] + ([(1, "cuda")] if args.gpu else [])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}")  # fmt: skip
    print(f"\n{args.train_size} MNIST images, batch {args.batch_size} per process, images/s "
          f"of epoch {args.epochs}, best of {args.repeats}\n")  # fmt: skip
    print("| network | setting | images/s | against 1 CPU process |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            base = None
            for procs, device in settings:
                folders = [Path(tmp) / f"{arch}-{procs}-{device}-{i}" for i in range(args.repeats)]
                best = max(run(arch, procs, device, args, f, args.batch_size) for f in folders)
                base = base or best
                label = f"{procs} process{'es' if procs > 1 else ''}, {device}"
                print(f"| {arch} | {label} | {best:,.0f} | {best / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
