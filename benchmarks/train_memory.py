"""Peak memory of one epoch of ``pyro-vae train`` on MNIST, against pytorch/examples' VAE.

The peak is the whole process's peak resident set (``ru_maxrss``), so it counts PyTorch and
Pyro's code and libraries as well as data, networks and evaluation. Each measurement is a
fresh process, run ``--repeats`` times in turn (A B C, A B C, ...); the table gives the median
and every repeat. The sides:

``pyro-vae train (this checkout)``
    ``python -m pyro_vae train --dataset mnist --epochs 1 --no-plots --no-progress
    --eval-images 1000 --eval-particles 100`` with ``PYRO_VAE_OFFLINE=1``.
``pyro-vae train (REV)``, with ``--before REV``
    the same command on an older commit, checked out with ``git worktree add --detach`` into a
    temporary folder (removed at the end) and imported through ``PYTHONPATH``; a dry run
    prints ``pyro_vae.__file__`` first and stops if another copy would be imported (the venv
    holds this checkout as an editable install, whose finder Python consults after
    ``PYTHONPATH``).
``pytorch/examples VAE``
    ``benchmarks/pytorch_examples_vae.py --epochs 1``: ``vae/main.py``'s data loading, network,
    training epoch and test pass, without pyro_vae.

How a peak is read: each command runs under a small wrapper process (no torch) that runs it
as its only child and reports ``getrusage(RUSAGE_CHILDREN).ru_maxrss``, the kernel's record of
the child's peak, kept after it exits. The wrapper matters: when a process is exec'd Linux folds
the resident set it was forked with into its ``ru_maxrss``, so a child started from this script
(which has imported torch) would never report less than this script's own few hundred MiB.
Through the wrapper that floor is the wrapper's ~12 MiB. (``VmHWM`` in ``/proc/PID/status``,
read from outside, is the alternative; it can only be read while the child lives, and its last
moments would be missed.) ``ru_maxrss`` is the largest of the child and any process it waited
for, not a sum; neither side starts workers. The allocator runs with its defaults, as for a
user.

Those last moments count: after Python's ``atexit`` handlers, libc's ``exit()`` runs the exit
handlers and static destructors of torch's native libraries, which lift the resident set by up
to ~125 MiB (``python -c "import torch"`` peaks at 508 MiB before exit and 633 MiB in
``ru_maxrss``; ending with ``os._exit`` instead keeps it at 508). So the child is
started through a launcher (``python -c LAUNCHER -m pyro_vae ...`` or ``... SCRIPT ...``,
``runpy`` as ``python -m`` and ``python SCRIPT`` do) whose ``atexit`` handler, registered
first and so run last, also records ``VmHWM``: the column "before exit", the peak of the work
itself. ``ru_maxrss`` is the larger of that and the peak during teardown::

    python benchmarks/train_memory.py --data-dir ../shared/data --before 04c85b3 --repeats 3

``--quick`` measures the same commands on small work (``--dataset mnist-sample --train-size
512 --eval-images 100``; the reference stops each pass after 4 batches) so a test runs it in
seconds.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import machine

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parent / "pytorch_examples_vae.py"
REFERENCE_LABEL = "pytorch/examples VAE"

# Runs its arguments as one child and prints that child's peak resident set as its last line.
WRAPPER = """\
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("\\n" + json.dumps({"returncode": code, "peak_kib": peak_kib}), flush=True)
"""

# Runs "-m MODULE ARGS..." or "SCRIPT ARGS..." as python would, and writes VmHWM (KiB) into
# $TRAIN_MEMORY_VMHWM once every other atexit handler has run.
LAUNCHER = """\
import atexit, os, re, runpy, sys

def record():
    with open("/proc/self/status") as f:
        kib = re.search(r"^VmHWM:\\s+(\\d+) kB", f.read(), re.M).group(1)
    with open(os.environ["TRAIN_MEMORY_VMHWM"], "w") as f:
        f.write(kib)

atexit.register(record)
if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def peak_mib(command: list[str], env: dict, cwd: str) -> dict:
    """Peaks of ``command`` (``[sys.executable, ...]``) in MiB, run as the only child of a fresh
    wrapper: ``"peak_mib"``, its ``ru_maxrss``; ``"before_exit_mib"``, its ``VmHWM`` after the
    last ``atexit`` handler (``None`` if it left without running them); and ``"seconds"``."""
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile("r", dir=cwd) as vmhwm:
        run = subprocess.run(
            [sys.executable, "-c", WRAPPER, sys.executable, "-c", LAUNCHER, *command[1:]],
            capture_output=True,
            text=True,
            env={**env, "TRAIN_MEMORY_VMHWM": vmhwm.name},
            cwd=cwd,
        )
        before_exit = vmhwm.read().strip()
    seconds = time.perf_counter() - started
    lines = run.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if run.returncode == 0 and lines else {"returncode": None}
    if result["returncode"] != 0:
        tail = (run.stdout + run.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed ({result['returncode']}):\n{tail}")
    return {
        "peak_mib": result["peak_kib"] / 1024,
        "before_exit_mib": int(before_exit) / 1024 if before_exit else None,
        "seconds": seconds,
    }


def _mib(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def pyro_vae_command(data_dir: str, out: str, quick: bool) -> list[str]:
    command = [sys.executable, "-m", "pyro_vae", "train", "--epochs", "1", "--out", out]
    if quick:
        command += ["--dataset", "mnist-sample", "--train-size", "512", "--eval-images", "100"]
    else:
        command += ["--dataset", "mnist", "--eval-images", "1000"]
    return command + [
        "--data-dir",
        data_dir,
        "--eval-particles",
        "100",
        "--no-plots",
        "--no-progress",
    ]


def reference_command(data_dir: str, quick: bool) -> list[str]:
    command = [sys.executable, str(REFERENCE), "--data-dir", data_dir, "--epochs", "1"]
    return command + (["--max-batches", "4"] if quick else [])


def pyro_vae_env(source: Path) -> dict:
    """The environment that makes ``python -m pyro_vae`` import the package in ``source``."""
    return {**os.environ, "PYRO_VAE_OFFLINE": "1", "PYTHONPATH": str(source)}


def check_imports(source: Path, cwd: str) -> str:
    """``pyro_vae.__file__`` as the measured command would import it; an error unless it lies
    in ``source``."""
    found = subprocess.run(
        [sys.executable, "-c", "import pyro_vae; print(pyro_vae.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=pyro_vae_env(source),
        cwd=cwd,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(source.resolve()):
        raise RuntimeError(f"{source} is not the pyro_vae imported: {found}")
    return found


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def measure(args, scratch: str) -> list[dict]:
    sources = {"pyro-vae train (this checkout)": ROOT}
    if args.before:
        tree = Path(scratch) / "before"
        git("worktree", "add", "--detach", str(tree), args.before)
        sources[f"pyro-vae train ({git('rev-parse', '--short', args.before)})"] = tree
    cwd = tempfile.mkdtemp(dir=scratch)  # empty, so -m finds no pyro_vae in the working folder
    sides = {}
    for label, source in sources.items():
        print(f"{label} imports {check_imports(source, cwd)}", file=sys.stderr)
        out = Path(scratch) / f"run-{len(sides)}"  # the run folder, removed after each run
        command = pyro_vae_command(args.data_dir, str(out), args.quick)
        sides[label] = (command, pyro_vae_env(source), out)
    sides[REFERENCE_LABEL] = (reference_command(args.data_dir, args.quick), dict(os.environ), None)

    runs = {label: [] for label in sides}
    for repeat in range(args.repeats):
        for label, (command, env, out) in sides.items():
            run = peak_mib(command, env, cwd)
            runs[label].append(run)
            print(
                f"  {repeat + 1}/{args.repeats} {label}: {run['peak_mib']:.0f} MiB, "
                f"before exit {_mib(run['before_exit_mib'])} MiB, {run['seconds']:.0f} s",
                file=sys.stderr,
            )
            if out is not None:
                shutil.rmtree(out)
    rows = []
    for label, (command, _, _) in sides.items():
        peaks = [run["peak_mib"] for run in runs[label]]
        before_exit = [run["before_exit_mib"] for run in runs[label]]
        rows.append(
            {
                "label": label,
                "command": " ".join(command),
                "peaks_mib": peaks,
                "median_mib": statistics.median(peaks),
                "median_gb": statistics.median(peaks) * 2**20 / 1e9,
                "before_exit_mib": before_exit,
                "median_before_exit_mib": None
                if None in before_exit
                else statistics.median(before_exit),
                "seconds": [run["seconds"] for run in runs[label]],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("PYRO_VAE_DATA_DIR"),
        help="data root holding MNIST/raw (default $PYRO_VAE_DATA_DIR)",
    )
    parser.add_argument("--before", metavar="REV", help="also measure this commit's pyro-vae")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per side (3)")
    parser.add_argument("--quick", action="store_true", help="small work, for tests")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("--data-dir is needed (or $PYRO_VAE_DATA_DIR): MNIST for the reference")

    scratch = tempfile.mkdtemp(prefix="pyro-vae-train-memory-")
    try:
        rows = measure(args, scratch)
    finally:
        if args.before and (Path(scratch) / "before").exists():
            git("worktree", "remove", "--force", str(Path(scratch) / "before"))
        shutil.rmtree(scratch, ignore_errors=True)

    reference = next(row["median_mib"] for row in rows if row["label"] == REFERENCE_LABEL)
    print(machine())
    work = "quick: mnist-sample, 4 batches" if args.quick else "MNIST, one epoch"
    print(f"{work}; peak resident set (ru_maxrss) of each fresh process, {args.repeats} repeats\n")
    print(
        "| command | median MiB | median GB | each repeat, MiB | / pytorch/examples "
        "| before exit: median MiB | each repeat, MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        each = ", ".join(_mib(mib) for mib in row["peaks_mib"])
        each_before = ", ".join(_mib(mib) for mib in row["before_exit_mib"])
        print(
            f"| {row['label']} | {row['median_mib']:.0f} | {row['median_gb']:.2f} | {each} | "
            f"{row['median_mib'] / reference:.2f} | {_mib(row['median_before_exit_mib'])} | "
            f"{each_before} |"
        )
    print(
        "\nGB: 10^9 bytes. Before exit: VmHWM after the last atexit handler, before torch's "
        "libraries tear down. Commands (pyro-vae with PYRO_VAE_OFFLINE=1):"
    )
    for row in rows:
        print(f"  {row['label']}: {row['command']}")
    return rows


if __name__ == "__main__":
    main()
