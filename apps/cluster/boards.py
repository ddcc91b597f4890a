"""Emulated boards for cluster runs: each board is a network namespace (a veth pair on a bridge, addresses
10.79.0.x inside this machine only), optionally with a tc tbf rate limit on its link, and mpirun reaches it through
an rsh agent (``ip netns exec``) instead of ssh. EMULATED boards: one machine's cores, labelled so in reports.

With :class:`BoardLimits` each board also gets its own rig cgroup (:class:`edgespool.apps.rig.cgroups.RigCgroups`):
a memory limit (page cache included), a blkio read throttle on the disks holding the given paths (its own
"storage": the throttle is per cgroup, so two boards reading the same disk each get the full rate) and a cpuset.
The agent script writes its own pid into the board's ``cgroup.procs`` files before it enters the namespace, so
Open MPI's daemon on that board and the rank it starts live in the board's cgroups. Each board also gets its own
TMPDIR: the boards share this machine's hostname and /tmp, so their daemons would otherwise create the same Open MPI
session directory (/tmp/ompi.HOST.UID/...) at once, and that mkdir race fails now and then with
"orte_session_dir failed" (open-mpi/ompi#8510)."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import RigError

SUBNET = "10.79.0"


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RigError(f"ip {' '.join(args)}: {p.stderr.strip()}")


def netns_reason() -> str | None:
    """Why emulated boards cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "emulated boards need root (network namespaces)"
    if shutil.which("ip") is None or shutil.which("mpirun") is None:
        return "emulated boards need iproute2 and mpirun (apt iproute2 openmpi-bin)"
    return None


@dataclass(frozen=True)
class BoardLimits:
    """Per-board rig cgroup limits: ``memory`` bytes (page cache included), ``read_bps`` bytes/s read from the
    disks backing ``storage`` (paths), ``cpus``: board i runs on CPU ``cpus[i % len(cpus)]`` (one core each; None:
    no cpuset). A None limit is not set."""

    memory: int | None = None
    read_bps: int | None = None
    storage: tuple[str, ...] = ()
    cpus: tuple[int, ...] | None = None


class EmulatedBoards:
    """``n`` boards as network namespaces on one bridge; a context manager that always removes them (and their
    rig cgroups, when ``limits`` are given: see :class:`BoardLimits`)."""

    def __init__(self, n: int, rate_mbit: float | None = None, limits: BoardLimits | None = None) -> None:
        self.n, self.rate, self.limits = n, rate_mbit, limits
        self.cgroups: list = []  # one RigCgroups per board (with limits)
        self.mechanisms: list[str] = []  # what enforces each limit (for reports)
        tag = secrets.token_hex(2)
        self.bridge = f"esc{tag}"
        self.ns = [f"esc{tag}n{i}" for i in range(n)]
        self.veth = [f"esc{tag}v{i}" for i in range(n)]
        self.hosts = [f"{SUBNET}.{i + 2}" for i in range(n)]
        self.dir = Path(tempfile.mkdtemp(prefix="edgespool-cluster-"))
        self.agent = self.dir / "agent.sh"

    def __enter__(self) -> "EmulatedBoards":
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{SUBNET}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for ns, veth, host in zip(self.ns, self.veth, self.hosts):
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{host}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                if self.rate:
                    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
                                    "rate", f"{self.rate}mbit", "burst", f"{max(32, int(self.rate * 1000 // 8 // 100))}kb", "latency", "50ms"], check=True,
                                   capture_output=True)
            procs = self._make_cgroups() if self.limits is not None else [[] for _ in self.ns]
            cases = "\n".join(f'  {h}) ns={ns}; procs="{" ".join(pf)}"; tmp={self.dir / f"board{i}"} ;;'
                              for i, (h, ns, pf) in enumerate(zip(self.hosts, self.ns, procs)))
            self.agent.write_text(f'#!/bin/sh\nhost="$1"; shift\ncase "$host" in\n{cases}\n  *) echo "unknown '
                                  f'board $host" >&2; exit 1 ;;\nesac\n'
                                  'for f in $procs; do echo $$ > "$f" || exit 1; done\n'
                                  'mkdir -p "$tmp" && export TMPDIR="$tmp"\n'
                                  'exec ip netns exec "$ns" /bin/sh -c "$*"\n')
            self.agent.chmod(0o755)
        except Exception:
            self.__exit__()
            raise
        return self

    def _make_cgroups(self) -> list[list[str]]:
        """One rig cgroup per board with the limits set; returns each board's ``cgroup.procs`` files."""
        from ..rig.blockdev import devices_for_paths
        from ..rig.cgroups import RigCgroups

        lim = self.limits
        assert lim is not None
        want = tuple(c for c, v in (("memory", lim.memory), ("blkio", lim.read_bps), ("cpuset", lim.cpus)) if v)
        devices: list = []
        if lim.read_bps:
            gone = [p for p in lim.storage if not os.path.exists(p)]
            if gone:
                raise RigError(f"board read throttle: {gone[0]}: no such file or directory")
            devices, unbacked = devices_for_paths(list(lim.storage))
            if unbacked or not devices:
                raise RigError(f"board read throttle: no block device backs {', '.join(unbacked) or 'no path'} "
                               "(tmpfs?): put the bundle on a disk")
        for i in range(self.n):
            cg = RigCgroups(want).create()
            self.cgroups.append(cg)
            if cg.unavailable:
                raise RigError("board cgroups: " + "; ".join(f"{c}: {w}" for c, w in cg.unavailable.items()))
            mech = []
            if lim.memory:
                mech.append(cg.set_memory(int(lim.memory)))
            if lim.read_bps:
                mech.append(cg.set_read_throttle(devices, int(lim.read_bps), None))
            if lim.cpus:
                mech.append(cg.set_cpus([lim.cpus[i % len(lim.cpus)]]))
            if i == 0:
                self.mechanisms = [m.replace(f"cpuset.cpus={lim.cpus[0]}", "cpuset.cpus=<one core a board>")
                                   if lim.cpus else m for m in mech]
        return [cg.procs_files for cg in self.cgroups]

    def board_stats(self) -> list[dict]:
        """Each board's cgroup usage so far (peak memory incl. page cache, OOM kills, bytes read per disk)."""
        return [cg.stats().__dict__ for cg in self.cgroups]

    def cut(self, i: int) -> None:
        """Fault injection: take board ``i``'s link down."""
        _ip("link", "set", self.veth[i], "down")

    def restore(self, i: int) -> None:
        """Bring board ``i``'s link back up."""
        _ip("link", "set", self.veth[i], "up")

    def mpirun_args(self) -> list[str]:
        """mpirun options reaching the boards. ``rtc ^hwloc``: Open MPI 4.1's daemon shares its hwloc topology
        through a shared-memory segment mapped at a guessed address hole and segfaults there now and then
        (hwloc_shmem_topology_write, seen in 3 of 4 launches with a cpuset); without it nothing is lost here."""
        net = f"{SUBNET}.0/24"
        return ["mpirun", "--allow-run-as-root", "-np", str(self.n), "--host", ",".join(self.hosts),
                "--mca", "plm_rsh_agent", str(self.agent), "--mca", "oob_tcp_if_include", net,
                "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", net, "--mca", "routed", "direct",
                "--mca", "rtc", "^hwloc"] \
            + (["--bind-to", "none"] if self.limits is not None and self.limits.cpus else [])

    def __exit__(self, *exc) -> None:
        errors = []
        for cg in self.cgroups:  # kills what is left on the board, removes its groups
            try:
                cg.destroy()
            except RigError as e:
                errors.append(str(e))
        self.cgroups = []
        for ns in self.ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for veth in self.veth:
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors and (not exc or exc[0] is None):  # never mask the exception that ended the block
            raise RigError("; ".join(errors))
