"""Shared helpers of the API / serving tests: the real SmolLM2-135M-Instruct GGUF exported once per session
(int8, C block kernels for this CPU; ~15 s), skipped when the asset is unavailable offline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def fetched(name: str) -> Path:
    from edgespool.apps.assets import fetch

    try:
        return fetch(name)
    except Exception as e:  # offline and not cached
        if os.environ.get("CI"):
            raise
        pytest.skip(f"asset {name} unavailable: {e}")


def smol_bundle(tmp_path_factory) -> Path:
    """The int8 bundle of SmolLM2-135M-Instruct, exported once into this session's base temp folder."""
    out = tmp_path_factory.getbasetemp() / "smollm2-int8"
    if not (out / "manifest.json").exists():
        from edgespool.exporters.compress import QuantPolicy
        from edgespool.exporters.export import export_model, open_source

        src = open_source(str(fetched("smollm2-135m")))
        try:
            export_model(src, out, policy=QuantPolicy(quant="int8"), onnx=False, progress=False)
        finally:
            src.close()
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``edgespool serve BUNDLE ARGS`` in a subprocess on a free loopback port; :meth:`wait` polls /health."""

    def __init__(self, bundle: Path, *args: str, log: Path | None = None) -> None:
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        out = open(log, "wb") if log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "edgespool", "serve", str(bundle), "--port",
                                      str(self.port), *args], stdout=out, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 120.0) -> list[int]:
        """Poll /health until 200; the status codes seen (a 503 while loading first)."""
        import time

        seen: list[int] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:] if self.log else ""
                raise RuntimeError(f"server exited with {self.proc.returncode}: {tail}")
            try:
                status, _ = self.request("GET", "/health")
                seen.append(status)
                if status == 200:
                    return seen
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"server not ready after {timeout} s")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except Exception:
            self.proc.kill()
            self.proc.wait()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """A raw HTTP request (stdlib http.client): (status, body)."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()
