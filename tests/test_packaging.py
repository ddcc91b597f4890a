"""Every package of the source tree ships in the wheel: each folder with an ``__init__.py`` is listed in
pyproject.toml's ``packages`` and is importable from the installed edgespool (a folder missing there is absent
from the wheel, and import-linter's layers then name a module that does not exist)."""
from __future__ import annotations

import importlib
import os
import tomllib
from pathlib import Path

import pytest

SKIP = {"tests", "build", "docs", "dist"}  # top-level folders that are not part of the package


def _repo() -> Path:
    repo = os.environ.get("EDGESPOOL_REPO")
    if not repo or not (Path(repo) / "pyproject.toml").is_file():
        pytest.skip("EDGESPOOL_REPO (set by .ci/run) does not point at the source checkout")
    return Path(repo)


def test_every_package_folder_is_listed_and_installed():
    repo = _repo()
    listed = set(tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tracked = set()
    for root, dirs, files in os.walk(repo):
        rel = Path(root).relative_to(repo)
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (rel == Path(".") and d in SKIP)]
        if "__init__.py" in files:
            tracked.add(".".join(("edgespool",) + rel.parts))
    assert tracked - listed == set(), f"package folders missing from pyproject.toml packages: {sorted(tracked - listed)}"
    for name in sorted(tracked):
        importlib.import_module(name)  # the installed wheel has it


def test_every_data_file_the_package_needs_is_installed():
    """Each file beside the code that the code reads at run time (C sources and headers compiled at export, linker
    scripts, web pages, word lists) is in the installed edgespool too: a header missing from ``package-data`` made
    every kernel build of a fresh install fail with "compilation terminated"."""
    import edgespool

    repo = _repo()
    installed = Path(edgespool.__file__).parent
    data_dirs = [Path("kernels/c_src"), Path("exporters/cnn/c_src"), Path("apps/web"), Path("apps/data")]
    missing = []
    for d in data_dirs:
        for f in sorted((repo / d).glob("*")):
            if f.is_file() and not f.name.startswith(".") and f.suffix != ".pyc":
                if not (installed / d / f.name).is_file():
                    missing.append(str(d / f.name))
    assert not missing, f"files missing from the installed package (add them to pyproject's package-data): {missing}"


def test_installed_package_is_this_checkout():
    """The installed edgespool's modules are this checkout's, byte for byte: a wheel built from another folder
    (pip once read a checkout path ending in "[ci2]" as extras and built a stale sibling) fails here by name."""
    import edgespool

    repo = _repo()
    installed = Path(edgespool.__file__).parent
    stale = []
    for root, dirs, files in os.walk(repo):
        rel = Path(root).relative_to(repo)
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (rel == Path(".") and d in SKIP)]
        if "__init__.py" not in files:
            continue
        for f in sorted(files):
            if f.endswith(".py"):
                got = installed / rel / f
                if not got.is_file() or got.read_bytes() != (Path(root) / f).read_bytes():
                    stale.append(str(rel / f))
    assert not stale, f"the installed edgespool ({installed}) is not this checkout: {stale[:5]} differ or are missing"
