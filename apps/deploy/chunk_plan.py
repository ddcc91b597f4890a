"""The content-addressed chunk plan of a bundle: which byte ranges of which files, named by their sha256.

``weights.bin`` is cut at every tensor's start and every streaming group's bounds (the manifest's tensor and group
tables), so a one-tensor change touches one chunk (tensors larger than ``max_chunk`` are cut further on 4 KiB
boundaries). Chunks are named by sha256, not by the manifest's CRC32s: CRC32 detects corruption but is no content
address (collisions are easy to make), so the CRCs are the second, independent check on the board. Every other file is cut every ``max_chunk`` bytes.
The board verifies each chunk's sha256 on arrival and, once assembled, every tensor's CRC32 from the manifest.
The release id is the sha256 of the plan itself: the same bundle deploys to the same release.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import BundleError
from ...runtime.bundle.constants import ALIGNMENT
from ...runtime.bundle.reader import Bundle

MAX_CHUNK = 4 << 20


@dataclass(frozen=True)
class Chunk:
    """One byte range of one file of the bundle."""

    path: str  # relative, '/'-separated
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class ChunkPlan:
    """Every file of a bundle as an ordered list of chunks."""

    root: Path
    files: tuple[tuple[str, int, tuple[Chunk, ...]], ...]  # (path, size, chunks)

    @property
    def chunks(self) -> list[Chunk]:
        return [c for _, _, cs in self.files for c in cs]

    @property
    def nbytes(self) -> int:
        return sum(size for _, size, _ in self.files)

    def to_wire(self) -> list[dict]:
        """The plan as the board agent reads it."""
        return [{"path": p, "size": size, "chunks": [[c.sha256, c.size] for c in cs]} for p, size, cs in self.files]

    @property
    def release_id(self) -> str:
        return hashlib.sha256(json.dumps(self.to_wire(), sort_keys=True).encode()).hexdigest()

    def read(self, c: Chunk) -> bytes:
        with open(self.root / c.path, "rb") as f:
            f.seek(c.offset)
            data = f.read(c.size)
        if len(data) != c.size:
            raise BundleError(f"{self.root / c.path}: changed while deploying (short read at {c.offset}); retry")
        return data


def _ranges_weights(bundle: Bundle, size: int, max_chunk: int) -> list[tuple[int, int]]:
    """Byte ranges covering the whole weights file: one per tensor (from its start to the next tensor's start, so
    its alignment padding rides along), tensors larger than ``max_chunk`` cut on 4 KiB boundaries; bytes before
    the first tensor or between groups are ranges of their own."""
    step = max(ALIGNMENT, max_chunk // ALIGNMENT * ALIGNMENT)
    starts = sorted({int(r["offset"]) for r in bundle.tensors.values()} |
                    {g.offset for g in bundle.groups.values()} | {g.offset + g.nbytes for g in bundle.groups.values()})
    bounds = [0] + [x for x in starts if 0 < x < size] + [size]
    out: list[tuple[int, int]] = []
    for lo, hi in zip(bounds, bounds[1:]):
        out += [(off, min(step, hi - off)) for off in range(lo, hi, step)]
    return out


def _hash(path: Path, ranges: list[tuple[int, int]], rel: str) -> tuple[Chunk, ...]:
    out = []
    with open(path, "rb") as f:
        for off, n in ranges:
            f.seek(off)
            data = f.read(n)
            if len(data) != n:
                raise BundleError(f"{path}: short read at {off} while hashing; the bundle changed")
            out.append(Chunk(rel, off, n, hashlib.sha256(data).hexdigest()))
    return tuple(out)


def plan_bundle(path: str | os.PathLike, max_chunk: int = MAX_CHUNK) -> ChunkPlan:
    """Open and validate the bundle (or pipeline stage share) at ``path`` and hash it into a chunk plan (one read
    of every file)."""
    from ...runtime.cluster.stage_share import open_bundle

    bundle = open_bundle(path)
    root = bundle.path
    files = []
    for f in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        rel = f.relative_to(root).as_posix()
        if f.is_symlink() or not f.resolve().is_relative_to(root.resolve()):
            raise BundleError(f"{f}: a symlink inside the bundle; deploy ships regular files only")
        size = f.stat().st_size
        if f == bundle.weights_path:
            ranges = _ranges_weights(bundle, size, max_chunk)
        else:
            ranges = [(off, min(max_chunk, size - off)) for off in range(0, size, max_chunk)] or [(0, 0)]
        files.append((rel, size, _hash(f, ranges, rel)))
    return ChunkPlan(root, tuple(files))
