"""The README's test command works from a clone whose folder name is not a Python identifier and has a space.

The repo root is the `edgespool` package itself (it has an ``__init__.py``); a clone into ``edgespool-main/`` (what
an archive download unpacks to) once made pytest import that ``__init__.py`` under the folder's name and fail to
collect all 811 tests. This test clones the checkout into ``edgespool-main x/`` and runs ``.ci/run`` there (reusing
this venv instead of building a new one: ``EDGESPOOL_CI_SKIP_INSTALL``) with ``--collect-only``: the layering check
and the collection of every test must pass.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgespool

pytestmark = pytest.mark.slow


def _repo() -> Path:
    repo = os.environ.get("EDGESPOOL_REPO")
    if not repo or not (Path(repo) / ".git").exists():
        pytest.skip("EDGESPOOL_REPO (set by .ci/run) does not point at a git checkout")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    if "site-packages" not in str(Path(edgespool.__file__).resolve()):
        pytest.skip("needs edgespool installed from the wheel, as .ci/run does (this is an editable install)")
    return Path(repo)


def test_ci_run_collects_every_test_from_an_oddly_named_clone(tmp_path):
    dest = tmp_path / "edgespool-main x"
    subprocess.run(["git", "clone", "-q", str(_repo()), str(dest)], check=True, capture_output=True)
    env = {**os.environ, "EDGESPOOL_CI_VENV": sys.prefix, "EDGESPOOL_CI_SKIP_INSTALL": "1"}
    p = subprocess.run(["bash", str(dest / ".ci" / "run"), "--collect-only", "-q"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "error" not in out.lower().split("import-linter")[-1].replace("errors.py", ""), out[-3000:]
    assert "KEPT" in out  # the layers contract ran and held
    # `-q -q --collect-only` prints "test_file.py: N" per file
    counts = [re.fullmatch(r"(test_\w+\.py): (\d+)", ln.strip()) for ln in out.splitlines()]
    n = sum(int(m.group(2)) for m in counts if m)
    assert n > 500, out[-3000:]
