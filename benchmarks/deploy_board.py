"""A real ssh "board" on this machine, for the deploy tests and benchmarks/deploy_bench.py.

``TestBoard`` creates a network namespace with a veth pair (host 10.R.0.1 <-> board 10.R.0.2), starts OpenSSH's
``sshd`` inside it (own host key, one authorised client key, keys only), optionally under the rpi5 rig limits
(``edgespool rig run --profile rpi5 -- nsenter --net=... sshd -D``: every ssh session, hence the remote edgespool,
inherits the rig's memory cgroup, blkio throttle and cores), and shapes both directions of the link with ``tc tbf``.
``CutProxy`` is a userspace TCP relay on the host side that adds latency (netem is not in this kernel) and can
sever the connection after a given number of client->board bytes (the transfer-kill fault).
Needs root, ``ip``, ``tc`` and ``/usr/sbin/sshd``; :func:`skip_reason` says why not.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def skip_reason() -> str | None:
    """Why a TestBoard cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, sshd)"
    for tool in ("ip", "tc", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not os.path.exists(SSHD):
        return "sshd not installed (apt-get install openssh-server)"
    probe = f"esprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns does not work here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


def keygen(path: Path) -> Path:
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path))
    return path


class TestBoard:
    """A board = a netns running sshd; ``root`` is its device root (a host directory: the namespace isolates the
    network, not the filesystem)."""

    __test__ = False  # not a pytest class

    def __init__(self, work: Path, *, index: int = 0, rate: str | None = None, rig: str | None = None,
                 rig_storage: str | None = None, port: int = 2222) -> None:
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid() % 10000}{index}"
        self.ns = f"esb{tag}"
        self.veth_host, self.veth_board = f"esh{tag}", f"esv{tag}"
        sub = 100 + (os.getpid() + index) % 150
        self.host_ip, self.board_ip = f"10.{sub}.0.1", f"10.{sub}.0.2"
        self.port = port
        self.rate, self.rig, self.rig_storage = rate, rig, rig_storage
        self.root = self.work / "board-root"
        self.client_key = keygen(self.work / "client_key")
        self.host_key = keygen(self.work / "host_key")
        self.proc: subprocess.Popen | None = None
        self._net_up()
        self.start()

    # -- network ---------------------------------------------------------------------------------------------
    def _net_up(self) -> None:
        _sh("ip", "netns", "add", self.ns)
        _sh("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_board)
        _sh("ip", "link", "set", self.veth_board, "netns", self.ns)
        _sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.veth_host)
        _sh("ip", "link", "set", self.veth_host, "up")
        _sh("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.board_ip}/24", "dev", self.veth_board)
        _sh("ip", "netns", "exec", self.ns, "ip", "link", "set", self.veth_board, "up")
        _sh("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
        if self.rate:
            self.shape(self.rate)

    def shape(self, rate: str) -> None:
        """Shape both directions of the link to ``rate`` (tc tbf, e.g. ``100mbit``)."""
        for pre in ([], ["ip", "netns", "exec", self.ns]):
            dev = self.veth_board if pre else self.veth_host
            _sh(*pre, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kb",
                "latency", "400ms")

    def unshape(self) -> None:
        """Remove the rate limit again."""
        for pre in ([], ["ip", "netns", "exec", self.ns]):
            dev = self.veth_board if pre else self.veth_host
            _sh(*pre, "tc", "qdisc", "del", "dev", dev, "root", check=False)

    def wire_bytes(self) -> int:
        """Bytes that crossed the veth pair so far, both directions (kernel counters of the host end)."""
        base = Path("/sys/class/net") / self.veth_host / "statistics"
        return int((base / "tx_bytes").read_text()) + int((base / "rx_bytes").read_text())

    # -- sshd ------------------------------------------------------------------------------------------------
    def _config(self) -> Path:
        (self.work / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        cfg = self.work / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {self.port}", f"ListenAddress {self.board_ip}", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.work / 'authorized_keys'}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no",
            f"PidFile {self.work / 'sshd.pid'}", "MaxStartups 50", "Subsystem sftp /usr/lib/openssh/sftp-server", "",
        ]))
        return cfg

    def start(self) -> None:
        """Start sshd (in the foreground, so killing it ends the board's sessions' parent)."""
        Path("/run/sshd").mkdir(exist_ok=True)
        # nsenter joins only the network namespace (``ip netns exec`` would also remount /sys, hiding the cgroup
        # files the board's preflight reads)
        cmd = ["nsenter", f"--net=/run/netns/{self.ns}", SSHD, "-D", "-e", "-f", str(self._config())]
        if self.rig:
            cmd = [sys.executable, "-m", "edgespool", "rig", "run", "--profile", self.rig,
                   *(["--storage", self.rig_storage] if self.rig_storage else []),
                   "--device-path", str(self.work), "--", *cmd]
        self.log = open(self.work / "sshd.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            r = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-ltn", f"sport = :{self.port}"],
                               capture_output=True, text=True)
            if str(self.port) in r.stdout:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.work / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.1)
        raise RuntimeError("sshd did not start listening")

    def stop(self) -> None:
        """Kill sshd and every session it started (a board power cut, as the client sees it)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, 15)
        except ProcessLookupError:
            pass
        # sshd puts each connection in its own session: a power cut kills every process in the namespace
        pids = _sh("ip", "netns", "pids", self.ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        pidf = self.work / "sshd.pid"
        pidf.unlink(missing_ok=True)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def new_host_key(self) -> None:
        """Replace the board's host key (a reinstalled board, or someone else answering)."""
        for p in (self.host_key, Path(f"{self.host_key}.pub")):
            p.unlink()
        keygen(self.host_key)
        self.restart()

    def close(self) -> None:
        self.stop()
        subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def url(self, port: int | None = None, host: str | None = None) -> str:
        return f"ssh://root@{host or self.board_ip}:{port or self.port}"


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


class CutProxy:
    """Relay 127.0.0.1:<port> -> board, adding ``delay_s`` of one-way latency in each direction; the next
    connection after ``cut_after`` is set is severed (both sockets shut down) after that many client bytes."""

    def __init__(self, target: tuple[str, int], *, delay_s: float = 0.0) -> None:
        self.target = target
        self.delay_s = delay_s
        self.cut_after: int | None = None
        self.cuts = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, timeout=10)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            state = {"up": 0, "limit": self.cut_after}
            self.cut_after = None
            threading.Thread(target=self._pump, args=(c, u, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, state, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, upstream: bool) -> None:
        """Copy src -> dst; with a delay, a sender thread forwards each piece ``delay_s`` after it arrived (a
        one-way latency that does not cap throughput)."""
        import queue

        q: queue.Queue = queue.Queue()

        def sender() -> None:
            try:
                while True:
                    due, b = q.get()
                    if b is None:
                        break
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    dst.sendall(b)
            except OSError:
                pass
            finally:
                _close(src, dst)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                if upstream and state["limit"] is not None:
                    room = state["limit"] - state["up"]
                    if len(b) >= room:
                        q.put((time.monotonic() + self.delay_s, b[:max(room, 0)]))
                        self.cuts += 1
                        break
                    state["up"] += len(b)
                q.put((time.monotonic() + self.delay_s, b))
        except OSError:
            pass
        q.put((0.0, None))

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def modify_one_tensor(src: Path, dst: Path, name: str) -> None:
    """Copy bundle ``src`` to ``dst`` with tensor ``name``'s int8 data changed (CRC32, and the manifest checksum
    where the bundle has one, updated)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    rec = m["tensors"][name]
    with open(dst / "weights.bin", "r+b") as f:
        p = rec["parts"]["data"]
        f.seek(rec["offset"] + p["offset"])
        data = bytearray(f.read(p["nbytes"]))
        data[:16] = bytes((b + 1) % 256 for b in data[:16])
        f.seek(rec["offset"] + p["offset"])
        f.write(data)
        crc = 0
        for part in rec["parts"].values():
            f.seek(rec["offset"] + part["offset"])
            crc = zlib.crc32(f.read(part["nbytes"]), crc)
    rec["crc32"] = crc
    if "manifest_sha256" in m:  # bundles that checksum their manifest: re-seal it as the writer does
        from ..runtime.bundle.manifest_schema import CHECKSUM_KEY, manifest_digest

        m[CHECKSUM_KEY] = manifest_digest(m)
    (dst / "manifest.json").write_text(json.dumps(m))
