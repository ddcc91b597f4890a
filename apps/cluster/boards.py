"""Emulated boards for cluster runs: each board is a network namespace (a veth pair on a bridge, addresses
10.79.0.x inside this machine only), optionally with a tc tbf rate limit on its link, and mpirun reaches it through
an rsh agent (``ip netns exec``) instead of ssh. EMULATED boards: one machine's cores, labelled so in reports."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
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


class EmulatedBoards:
    """``n`` boards as network namespaces on one bridge; a context manager that always removes them."""

    def __init__(self, n: int, rate_mbit: float | None = None) -> None:
        self.n, self.rate = n, rate_mbit
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
            cases = "\n".join(f'  {h}) ns={ns} ;;' for h, ns in zip(self.hosts, self.ns))
            self.agent.write_text(f'#!/bin/sh\nhost="$1"; shift\ncase "$host" in\n{cases}\n  *) echo "unknown '
                                  f'board $host" >&2; exit 1 ;;\nesac\nexec ip netns exec "$ns" /bin/sh -c "$*"\n')
            self.agent.chmod(0o755)
        except Exception:
            self.__exit__()
            raise
        return self

    def cut(self, i: int) -> None:
        """Fault injection: take board ``i``'s link down."""
        _ip("link", "set", self.veth[i], "down")

    def restore(self, i: int) -> None:
        """Bring board ``i``'s link back up."""
        _ip("link", "set", self.veth[i], "up")

    def mpirun_args(self) -> list[str]:
        net = f"{SUBNET}.0/24"
        return ["mpirun", "--allow-run-as-root", "-np", str(self.n), "--host", ",".join(self.hosts),
                "--mca", "plm_rsh_agent", str(self.agent), "--mca", "oob_tcp_if_include", net,
                "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", net, "--mca", "routed", "direct"]

    def __exit__(self, *exc) -> None:
        for ns in self.ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for veth in self.veth:
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
