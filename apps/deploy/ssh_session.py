"""One ssh connection to a board running :mod:`.board_agent` (the OpenSSH client binary, no paramiko).

The client runs ``ssh ... -- python3 -c <bootstrap>``; the bootstrap reads the agent's source from stdin and runs it;
frames then flow over the same stdin/stdout. OpenSSH does host-key checking against edgespool's own known_hosts
(``StrictHostKeyChecking=yes``; ``accept-new`` only when the user asked for it), authenticates with keys or the
agent only (``BatchMode=yes``, passwords and keyboard-interactive off). ssh's own failures are mapped to one-line
:class:`DeployError` messages that name the device; nothing secret is logged (key contents never pass through here).
"""
from __future__ import annotations

import json
import os
import shlex
import struct
import subprocess
import threading
import zlib
from collections import deque
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from ...errors import DeployError
from .registry import Device

PROTOCOL = 1
_BOOT = ("import sys;b=sys.stdin.buffer;n=int(b.readline());"
         "exec(compile(b.read(n),'edgespool-board-agent','exec'))")


def agent_source() -> bytes:
    """The board agent's source (shipped inside the package, sent on every connection)."""
    return resources.files(__package__).joinpath("board_agent.py").read_bytes()


def ssh_argv(dev: Device, known_hosts: Path, accept_new: bool = False, connect_timeout: int = 10) -> list[str]:
    """The ssh command line for ``dev`` (remote command not included)."""
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "PasswordAuthentication=no",
            "-o", "KbdInteractiveAuthentication=no",
            "-o", f"StrictHostKeyChecking={'accept-new' if accept_new else 'yes'}",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "CheckHostIP=no", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-p", str(dev.port)]
    cfg = os.environ.get("EDGESPOOL_SSH_CONFIG")
    if cfg:
        argv[1:1] = ["-F", cfg]
    if dev.identity:
        argv += ["-i", os.path.expanduser(dev.identity), "-o", "IdentitiesOnly=yes"]
    return argv + [f"{dev.user}@{dev.host}", "--"]


class ConnectionLost(DeployError):
    """The ssh connection dropped or was refused mid-way (worth a retry: the board keeps what it received); host-key,
    authentication and preflight failures are plain DeployErrors."""


def explain_ssh_failure(dev: Device, known_hosts: Path, stderr: str, rc: int | None) -> str:
    """One line saying why ssh failed, from its stderr."""
    s = stderr
    where = f"device {dev.name!r} ({dev.url})"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in s or "Host key for" in s and "has changed" in s:
        return (f"{where}: its host key CHANGED since it was added — refused (a reinstalled board or a "
                f"man-in-the-middle); if you trust the new key remove {dev.known_hosts_name} from {known_hosts} and "
                "run `edgespool device add ... --accept-new` again")
    if "Host key verification failed" in s or "No ED25519 host key is known" in s or "host key is known" in s:
        return (f"{where}: its host key is unknown — refused; check the board's fingerprint and add it with "
                "`edgespool device add NAME URL --accept-new`")
    if "Permission denied" in s:
        return (f"{where}: authentication refused (keys or ssh-agent only; pass --identity KEY at `device add`, or "
                "load the key into ssh-agent)")
    if "Connection refused" in s:
        return f"{where}: connection refused (is sshd running on port {dev.port}?)"
    if "timed out" in s or "No route to host" in s or "Could not resolve" in s or "Network is unreachable" in s:
        last = s.strip().splitlines()[-1] if s.strip() else "unreachable"
        return f"{where}: unreachable ({last.strip()})"
    last = next((ln.strip() for ln in reversed(s.strip().splitlines()) if ln.strip()), "")
    return (f"{where}: connection lost ({last or f'ssh exited with {rc}'}); rerun the same command to resume — "
            "chunks already on the board are kept")


class Session:
    """A live connection to the board agent. Use as a context manager; every request returns the agent's reply
    (a dict) or raises :class:`DeployError` with the agent's or ssh's one-line reason."""

    def __init__(self, dev: Device, known_hosts: Path, *, accept_new: bool = False, connect_timeout: int = 10) -> None:
        self.dev = dev
        self.known_hosts = known_hosts
        known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        remote = f"{shlex.quote(dev.python)} -c {shlex.quote(_BOOT)}"
        self.proc = subprocess.Popen(ssh_argv(dev, known_hosts, accept_new, connect_timeout) + [remote],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     bufsize=0)
        self._err: deque[str] = deque(maxlen=60)
        self._err_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._err_thread.start()
        self.bytes_sent = 0  # bytes of the chunks sent (before compression)
        self.payload_sent = 0  # what those chunks took on the connection (after compression)
        src = agent_source()
        self._write(b"%d\n" % len(src) + src)
        hello = self.request("hello", root=dev.root, protocol=PROTOCOL)
        self.root: str = hello["root"]

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            self._err.append(line.decode("utf-8", "replace"))

    def _fail(self) -> DeployError:
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._err_thread.join(timeout=2)
        msg = explain_ssh_failure(self.dev, self.known_hosts, "".join(self._err), rc)
        return ConnectionLost(msg) if "connection lost" in msg or "connection refused" in msg else DeployError(msg)

    def _write(self, data: bytes | memoryview) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
        except (BrokenPipeError, ConnectionResetError, ValueError):
            raise self._fail() from None

    def _read_exact(self, n: int) -> bytes:
        assert self.proc.stdout is not None
        buf = bytearray()
        while len(buf) < n:
            b = self.proc.stdout.read(n - len(buf))
            if not b:
                raise self._fail()
            buf += b
        return bytes(buf)

    def _send(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode("utf-8")
        self._write(struct.pack(">I", len(data)) + data)

    def _recv(self) -> dict[str, Any]:
        (n,) = struct.unpack(">I", self._read_exact(4))
        return json.loads(self._read_exact(n).decode("utf-8"))

    def _reply(self, res: dict[str, Any]) -> dict[str, Any]:
        if not res.get("ok"):
            raise DeployError(f"device {self.dev.name!r}: {res.get('error', 'request failed')}")
        return res

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request, wait for its reply."""
        self._send({"op": op, **fields})
        return self._reply(self._recv())

    def put(self, sha: str, data: bytes | memoryview) -> dict[str, Any]:
        """Send one chunk and wait for the board's acknowledgement."""
        self.put_nowait(sha, data)
        return self.collect()

    def put_nowait(self, sha: str, data: bytes | memoryview, compress: bool = False) -> None:
        """Send one chunk without waiting; its reply is read later by :meth:`collect` (in order). ``compress``:
        send it zlib-coded when that saves at least a tenth (text files: manifest, tokenizer)."""
        payload, extra = data, {}
        if compress:
            z = zlib.compress(data, 6)
            if len(z) < 0.9 * len(data):
                payload, extra = z, {"encoding": "zlib"}
        self._send({"op": "put", "sha": sha, "size": len(payload), **extra})
        self._write(payload)
        self.bytes_sent += len(data)
        self.payload_sent += len(payload)

    def collect(self) -> dict[str, Any]:
        """The reply to the oldest request sent with :meth:`put_nowait`."""
        return self._reply(self._recv())

    def stream(self, op: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Send a request whose reply is preceded by ``{"stream": ..., "data": ...}`` frames; yields those, then the
        final reply (a dict without ``stream``)."""
        self._send({"op": op, **fields})
        while True:
            res = self._recv()
            if "stream" in res:
                yield res
                continue
            yield self._reply(res)
            return

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
