"""Shared by the deploy tests: the `edgespool` CLI in a subprocess, and a device registry in a test's own folder."""
from __future__ import annotations

import os
import subprocess
import sys

from edgespool.apps.deploy.registry import Registry


def cli(*args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m edgespool ARGS`` (stdout/stderr captured); with ``check`` a non-zero exit fails the test with the
    end of stderr."""
    r = subprocess.run([sys.executable, "-m", "edgespool", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ))
    if check and r.returncode != 0:
        raise AssertionError(f"edgespool {' '.join(map(str, args))} -> {r.returncode}: {r.stderr[-3000:]}")
    return r


def isolated_registry(tmp_path, monkeypatch) -> Registry:
    """A Registry under ``tmp_path/cfg``, the user's ssh config ignored (EDGESPOOL_CONFIG_DIR, EDGESPOOL_SSH_CONFIG)."""
    monkeypatch.setenv("EDGESPOOL_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("EDGESPOOL_SSH_CONFIG", "none")
    return Registry()
