"""What the rig does where it cannot use cgroups (not root, read-only or missing controllers, ``--emulate``).

- cores: ``sched_setaffinity`` on the child (kernel-enforced, but the command could widen it again);
- memory: ``RLIMIT_AS`` (caps virtual address space, not resident memory, and not page cache: allocations fail with
  MemoryError/ENOMEM instead of an OOM kill; runtimes that reserve big virtual ranges may fail early);
- storage speed: ``EDGESPOOL_IO_BANDWIDTH`` / ``EDGESPOOL_IO_IOPS`` in the child's environment, honoured by
  edgespool's weight reader through :func:`edgespool.runtime.bundle.ratelimit.from_env` (other programs ignore it);
- measurement: ``wait4`` rusage (max RSS of the largest process, blocks read from any device).
"""
from __future__ import annotations

import os
import resource

from ...runtime.bundle.ratelimit import ENV_BANDWIDTH, ENV_IOPS


def pick_cpus(n: int) -> list[int]:
    """The first ``n`` CPUs this process may run on (sorted), i.e. the set a rig run with ``--cores n`` uses."""
    return sorted(os.sched_getaffinity(0))[:n]


def io_env(bandwidth: int | None, iops: int | None) -> dict[str, str]:
    """Environment variables that make edgespool's reader emulate the storage speed."""
    env = {}
    if bandwidth:
        env[ENV_BANDWIDTH] = str(int(bandwidth))
    if iops:
        env[ENV_IOPS] = str(int(iops))
    return env


def apply_in_child(cpus: list[int] | None, address_space: int | None) -> None:
    """Run in the forked child before exec: set CPU affinity and RLIMIT_AS (async-signal-safe enough for fork)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    if address_space:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
