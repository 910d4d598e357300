"""How much memory this process may still allocate on the CPU, and which limit says so.

Loaders check a data set's bytes against :func:`available_memory` before they allocate them,
so that a set that cannot fit is refused in one line naming the limit that binds
(:meth:`MemoryLimit.describe`), not by a ``MemoryError`` in the middle of a read, or the
kernel's OOM killer.

Four limits are read where they can be; the smallest binds:

- **the machine**: its physical memory (``SC_PHYS_PAGES``), all of it rather than what is free
  now, since other processes come and go and a refusal should not depend on them;
- **ulimit -v** (``RLIMIT_AS``) less the process's virtual size (``/proc/self/statm``, field
  1). The limit counts address space, not memory in use: a process that has imported torch
  already holds a few GiB of it (shared libraries, thread stacks, malloc's reserved arenas)
  while it uses far less memory. All of that counts against the limit, so all of it is
  subtracted; what is left is what new allocations may take;
- **ulimit -d** (``RLIMIT_DATA``) less the process's data size (statm field 6: private
  writable mappings, which Linux has counted against this limit since 4.7, and the stack);
- **the cgroup** (a container's or a systemd unit's limit): ``memory.max`` less
  ``memory.current`` (cgroup v2) or ``memory.limit_in_bytes`` less ``memory.usage_in_bytes``
  (v1), for the process's cgroup and each one above it. The usage counts the page cache, which
  the kernel drops before it refuses memory, so the inactive part of it (``inactive_file`` in
  ``memory.stat``) is left out, as ``docker stats`` does.

Where ``/proc/self/statm`` cannot be read (not Linux), a ``ulimit`` counts in full. Each figure
is an upper bound on what one allocation can get: threads started later reserve address space
of their own, and other processes in the cgroup allocate too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

try:
    import resource
except ImportError:  # Windows: no ulimits
    resource = None

__all__ = [
    "MemoryLimit",
    "available_memory",
    "binding_limit",
    "format_bytes",
    "limit_exceeded",
    "memory_limits",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
_NO_CGROUP_LIMIT = 2**62  # v1 writes "no limit" as a page-rounded 2^63 - 1


class MemoryLimit(NamedTuple):
    """One limit on this process's memory.

    ``kind`` is ``"machine"``, ``"ulimit -v"``, ``"ulimit -d"`` or ``"cgroup"``; ``total`` the
    limit itself in bytes, ``available`` what is left of it for new allocations.
    """

    kind: str
    total: int
    available: int

    def describe(self) -> str:
        """The limit for a message: ``this machine has 23.6 GiB``, ``the process's limit
        (ulimit -v) leaves 1.2 GiB of its 4.0 GiB``."""
        left, total = format_bytes(self.available), format_bytes(self.total)
        if self.kind == "machine":
            return f"this machine has {total}"
        if self.kind == "cgroup":
            return f"the memory limit of its cgroup leaves {left} of its {total}"
        return f"the process's limit ({self.kind}) leaves {left} of its {total}"


def format_bytes(count: int) -> str:
    """``23.6 GiB``, ``512.0 MiB``, ``100 bytes``: binary units, one decimal."""
    for unit, power in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 2**power:
            return f"{count / 2**power:,.1f} {unit}"
    return f"{count} bytes"


def memory_limits() -> list[MemoryLimit]:
    """Every limit that can be read, in the order of the module docstring; empty where none
    can."""
    limits = []
    machine = _physical_memory()
    if machine is not None:
        limits.append(MemoryLimit("machine", machine, machine))
    statm = _statm()
    for kind, which, field in (("ulimit -v", "RLIMIT_AS", 0), ("ulimit -d", "RLIMIT_DATA", 5)):
        total = _rlimit(which)
        if total is not None:
            used = statm[field] if statm is not None else 0
            limits.append(MemoryLimit(kind, total, max(0, total - used)))
    limits += _cgroup_limits()
    return limits


def binding_limit() -> MemoryLimit | None:
    """The limit that leaves the least, or ``None`` where no limit can be read."""
    return min(memory_limits(), key=lambda limit: limit.available, default=None)


def available_memory() -> int | None:
    """Bytes this process can still allocate on the CPU: the least that any limit of the
    module docstring leaves, or ``None`` where none can be read."""
    limit = binding_limit()
    return None if limit is None else limit.available


def limit_exceeded(needed: int) -> MemoryLimit | None:
    """The limit that ``needed`` more bytes would break, for the message that refuses them;
    ``None`` when they fit, or when no limit can be read.

    :param needed: bytes about to be allocated.
    """
    limit = binding_limit()
    return limit if limit is not None and needed > limit.available else None


def _physical_memory() -> int | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def _rlimit(name: str) -> int | None:
    if resource is None:
        return None
    try:
        soft = resource.getrlimit(getattr(resource, name))[0]
    except (AttributeError, ValueError, OSError):
        return None
    return None if soft == resource.RLIM_INFINITY or soft < 0 else soft


def _statm() -> tuple[int, ...] | None:
    """``/proc/self/statm`` in bytes: size, resident, shared, text, lib, data + stack, dirty."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
        page_size = os.sysconf("SC_PAGE_SIZE")
        return tuple(int(field) * page_size for field in fields)
    except (OSError, ValueError, AttributeError):
        return None


def _read_int(path: Path) -> int | None:
    """The number in a cgroup file, ``None`` for ``max`` or an unreadable file."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _inactive_file(folder: Path) -> int:
    """The page cache the kernel would drop first (``memory.stat``), 0 if unreadable."""
    try:
        lines = (folder / "memory.stat").read_text().splitlines()
    except OSError:
        return 0
    stat = dict(line.split(maxsplit=1) for line in lines if " " in line)
    # v1's total_inactive_file counts the sub-groups, as its usage does; v2's inactive_file does
    for key in ("total_inactive_file", "inactive_file"):
        if stat.get(key, "").strip().isdigit():
            return int(stat[key])
    return 0


def _cgroup_limits(
    root: Path = CGROUP_ROOT, proc: Path = Path("/proc/self/cgroup")
) -> list[MemoryLimit]:
    """The memory limits of this process's cgroup and those above it, v2 then v1."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return []
    limits = []
    for line in lines:
        fields = line.split(":", 2)  # hierarchy-ID:controllers:path
        if len(fields) != 3:
            continue
        controllers, path = fields[1], fields[2]
        if controllers == "":  # v2: one unified hierarchy, mounted at root (or root/unified)
            mounts, files = (root, root / "unified"), ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            mounts, files = (root / "memory",), ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        for mount in mounts:
            limits += _hierarchy_limits(mount, path, *files)
    return limits


def _hierarchy_limits(
    mount: Path, path: str, limit_file: str, usage_file: str
) -> list[MemoryLimit]:
    """The limits along ``path`` in one cgroup hierarchy mounted at ``mount``: the cgroup's
    own and its ancestors' (a parent's limit binds its children). In a container the mount
    shows the container's own cgroup as its root, and ``path`` is not found under it: then the
    root alone is read (so too for a path that climbs out of it, ``/../..``, as a container
    without its own cgroup namespace sees its group)."""
    leaf = mount / path.strip("/")
    inside = ".." not in Path(path).parts and leaf.is_dir()
    folders = [leaf, *leaf.parents] if inside else [mount]
    limits = []
    for folder in folders:
        total = _read_int(folder / limit_file)
        if total is not None and total < _NO_CGROUP_LIMIT:
            used = _read_int(folder / usage_file) or 0
            used = max(0, used - _inactive_file(folder))
            limits.append(MemoryLimit("cgroup", total, max(0, total - used)))
        if folder == mount:
            break
    return limits
