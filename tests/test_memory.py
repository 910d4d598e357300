"""What this process may still allocate (pyro_vae.memory): each limit read from files and
``getrlimit`` faked in ``tmp_path`` and by monkeypatching, and one real ``ulimit -v`` in a
subprocess, whose figure is checked by allocating on either side of it."""

import json
import subprocess
import sys
import textwrap

import pytest

from pyro_vae import memory
from pyro_vae.memory import MemoryLimit

GiB, MiB = 2**30, 2**20


def fake_process(monkeypatch, machine=None, rlimits=None, statm=None, cgroups=()):
    """Limits as given: ``rlimits`` maps ``"RLIMIT_AS"``/``"RLIMIT_DATA"`` to bytes; ``statm``
    is ``(virtual size, data size)`` in bytes, or None for a /proc that cannot be read."""
    rlimits = rlimits or {}
    monkeypatch.setattr(memory, "_physical_memory", lambda: machine)
    monkeypatch.setattr(memory, "_rlimit", rlimits.get)
    fields = None if statm is None else (statm[0], 0, 0, 0, 0, statm[1], 0)
    monkeypatch.setattr(memory, "_statm", lambda: fields)
    monkeypatch.setattr(memory, "_cgroup_limits", lambda: list(cgroups))


@pytest.mark.parametrize(
    "setup, available, described",
    [
        pytest.param(
            {"machine": 24 * GiB},
            24 * GiB,
            "this machine has 24.0 GiB",
            id="machine only",
        ),
        pytest.param(
            {"machine": 24 * GiB, "rlimits": {"RLIMIT_AS": 4 * GiB}, "statm": (3 * GiB, GiB)},
            1 * GiB,
            "the process's limit (ulimit -v) leaves 1.0 GiB of its 4.0 GiB",
            id="ulimit -v less the virtual size",
        ),
        pytest.param(
            {"machine": 24 * GiB, "rlimits": {"RLIMIT_DATA": 2 * GiB}, "statm": (9 * GiB, GiB)},
            1 * GiB,
            "the process's limit (ulimit -d) leaves 1.0 GiB of its 2.0 GiB",
            id="ulimit -d less the data size",
        ),
        pytest.param(
            {"machine": 24 * GiB, "rlimits": {"RLIMIT_AS": 4 * GiB}, "statm": None},
            4 * GiB,
            "the process's limit (ulimit -v) leaves 4.0 GiB of its 4.0 GiB",
            id="ulimit -v without /proc",
        ),
        pytest.param(
            {"machine": 24 * GiB, "rlimits": {"RLIMIT_AS": 2 * GiB}, "statm": (3 * GiB, GiB)},
            0,
            "the process's limit (ulimit -v) leaves 0 bytes of its 2.0 GiB",
            id="ulimit -v already used up",
        ),
        pytest.param(
            {
                "machine": 24 * GiB,
                "rlimits": {"RLIMIT_AS": 64 * GiB},
                "statm": (3 * GiB, GiB),
                "cgroups": [MemoryLimit("cgroup", 8 * GiB, 512 * MiB)],
            },
            512 * MiB,
            "the memory limit of its cgroup leaves 512.0 MiB of its 8.0 GiB",
            id="cgroup binds",
        ),
        pytest.param(
            {"machine": 8 * GiB, "rlimits": {"RLIMIT_AS": 64 * GiB}, "statm": (3 * GiB, GiB)},
            8 * GiB,
            "this machine has 8.0 GiB",
            id="a ulimit above the machine",
        ),
    ],
)
def test_the_least_limit_binds_and_says_which(monkeypatch, setup, available, described):
    fake_process(monkeypatch, **setup)
    assert memory.available_memory() == available
    assert memory.binding_limit().describe() == described


def test_nothing_readable_is_none(monkeypatch):
    fake_process(monkeypatch)
    assert memory.available_memory() is None and memory.binding_limit() is None
    assert memory.limit_exceeded(10**15) is None  # nothing to check against: not refused


def test_limit_exceeded_is_the_binding_limit_or_none(monkeypatch):
    fake_process(monkeypatch, machine=24 * GiB, rlimits={"RLIMIT_AS": 4 * GiB}, statm=(3 * GiB, 0))
    assert memory.limit_exceeded(GiB) is None
    exceeded = memory.limit_exceeded(GiB + 1)
    assert exceeded.kind == "ulimit -v" and exceeded.available == GiB


@pytest.mark.parametrize(
    "count, text",
    [
        pytest.param(0, "0 bytes", id="0"),
        pytest.param(1023, "1023 bytes", id="bytes"),
        pytest.param(1536, "1.5 KiB", id="KiB"),
        pytest.param(int(23.6 * GiB), "23.6 GiB", id="GiB"),
        pytest.param(5 * 2**40, "5.0 TiB", id="TiB"),
    ],
)
def test_format_bytes(count, text):
    assert memory.format_bytes(count) == text


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_reads_the_group_and_those_above_it(tmp_path):
    root = tmp_path / "sys"
    write(tmp_path / "cgroup", "0::/user.slice/app\n")
    write(root / "user.slice" / "app" / "memory.max", "max\n")  # no limit of its own
    write(root / "user.slice" / "app" / "memory.current", f"{GiB}\n")
    write(root / "user.slice" / "memory.max", f"{4 * GiB}\n")
    write(root / "user.slice" / "memory.current", f"{3 * GiB}\n")
    # the page cache the kernel drops first does not count as used
    write(root / "user.slice" / "memory.stat", f"anon 1\ninactive_file {GiB}\nactive_file 5\n")
    limits = memory._cgroup_limits(root, tmp_path / "cgroup")
    assert limits == [MemoryLimit("cgroup", 4 * GiB, 2 * GiB)]


@pytest.mark.parametrize("path", ["/", "/..", "/not/here"])
def test_cgroup_v2_in_a_container_reads_the_mount_root(tmp_path, path):
    root = tmp_path / "sys"
    write(tmp_path / "cgroup", f"0::{path}\n")
    write(tmp_path / "memory.max", f"{GiB}\n")  # outside the mount: never read
    write(root / "memory.max", f"{2 * GiB}\n")
    write(root / "memory.current", f"{GiB // 2}\n")
    limits = memory._cgroup_limits(root, tmp_path / "cgroup")
    assert limits == [MemoryLimit("cgroup", 2 * GiB, 3 * GiB // 2)]


def test_cgroup_v1_and_its_no_limit_value(tmp_path):
    root = tmp_path / "sys"
    write(tmp_path / "cgroup", "12:cpu,cpuacct:/x\n4:memory:/docker/abc\n")
    group = root / "memory" / "docker" / "abc"
    write(group / "memory.limit_in_bytes", f"{GiB}\n")
    write(group / "memory.usage_in_bytes", f"{GiB // 2}\n")
    write(group / "memory.stat", f"total_inactive_file {GiB // 4}\ninactive_file 0\n")
    write(root / "memory" / "docker" / "memory.limit_in_bytes", "9223372036854771712\n")
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    limits = memory._cgroup_limits(root, tmp_path / "cgroup")
    assert limits == [MemoryLimit("cgroup", GiB, 3 * GiB // 4)]


def test_no_cgroup_file_is_no_limit(tmp_path):
    assert memory._cgroup_limits(tmp_path, tmp_path / "missing") == []
    write(tmp_path / "cgroup", "garbage\n0::/a\n")
    assert memory._cgroup_limits(tmp_path / "sys", tmp_path / "cgroup") == []


# memory.py is loaded from its file, so that the subprocess imports neither torch nor the
# package: its address space stays small, and the limit below leaves room to allocate
PROBE = textwrap.dedent(
    """
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("memory", sys.argv[1])
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    limit = memory.binding_limit()
    fits = below = None
    try:
        block = bytearray(limit.available - 96 * 2**20)
        del block
        fits = True
    except MemoryError:
        fits = False
    try:
        block = bytearray(limit.available + 96 * 2**20)
        del block
        below = False
    except MemoryError:
        below = True
    print(json.dumps([limit.kind, limit.total, limit.available, limit.describe(), fits, below]))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ulimit -v and /proc: Linux")
@pytest.mark.parametrize("flag, kind", [("-v", "ulimit -v"), ("-d", "ulimit -d")])
def test_a_real_ulimit_binds_and_its_figure_is_what_can_be_allocated(flag, kind):
    if (memory.available_memory() or 0) < 2 * GiB:
        pytest.skip("less than 2 GiB left: a 512 MiB ulimit might not be the limit that binds")
    kib = 512 * 1024  # 512 MiB
    command = f'ulimit {flag} {kib} && exec "$0" -c "$1" "$2"'
    result = subprocess.run(
        ["bash", "-c", command, sys.executable, PROBE, memory.__file__],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found, total, available, described, fits, below = json.loads(result.stdout)
    assert found == kind and total == kib * 1024
    # a bare Python holds some tens of MiB of address space
    assert 256 * MiB < available < total
    assert described.startswith(f"the process's limit ({kind}) leaves ")
    # 96 MiB less than the figure can be allocated; 96 MiB more cannot
    assert fits and below
