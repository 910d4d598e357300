"""What the benchmarks share: alternate timing, peak memory, and the machine line of a report."""

import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pyro
import torch


def time_alternately(
    steps: dict[str, Callable], inputs: list, warmup: int = 20, device: str = "cpu"
) -> dict:
    """Seconds of each call, the callables run in turn on each input: A B C, B C A, C A B, ...

    Rotating the order keeps any one of them from always running first (after the data were
    last touched) or last. Calls on the first ``warmup`` inputs are not recorded.
    """
    names = list(steps)
    times = {name: [] for name in names}
    for i, x in enumerate(inputs):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            steps[name](x)
            synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    return times


def median_ratio(times: dict, numerator: str, denominator: str) -> float:
    """The median over rounds of ``time(numerator) / time(denominator)`` in the same round."""
    pairs = zip(times[numerator], times[denominator], strict=True)
    return statistics.median(a / b for a, b in pairs)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


@contextlib.contextmanager
def peak_memory(device: str = "cpu") -> Iterator[dict]:
    """Peak memory the block adds, in MiB, in the yielded dict's ``"peak_mib"`` once it ends.

    CPU: the process's peak resident set (Linux ``VmHWM``, reset through
    ``/proc/self/clear_refs`` on entry) less its resident set on entry. CUDA: the peak of
    ``torch.cuda.memory_allocated`` less its value on entry.
    """
    result: dict = {}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        yield result
        torch.cuda.synchronize()
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        return
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _status_kib("VmRSS")
    yield result
    result["peak_mib"] = (_status_kib("VmHWM") - before) / 1024


def peak_mib_in_fresh_process(command: list[str]) -> float:
    """Run ``command`` (a script that prints ``peak_memory``'s dict as its last line) in a fresh
    Python process and return its ``peak_mib``.

    glibc's allocator keeps freed blocks of up to 32 MB in its heap, where allocations of other
    sizes fragment them, so the resident set drifts with the order of allocations (two runs of
    the same code differed by 700 MiB). The child runs with a fixed mmap threshold: every tensor
    above 64 kB is mapped on allocation and unmapped when freed, so the resident set follows
    the live tensors and the peak is repeatable.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    run = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(run.stdout.strip().splitlines()[-1])["peak_mib"]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine() -> str:
    """One line: the processor, threads, torch and Pyro versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        cpu = found.group(1) if found else cpu
    line = (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, pyro {pyro.__version__}"
    )
    if torch.cuda.is_available():
        line += f", {torch.cuda.get_device_name()}"
    return line
