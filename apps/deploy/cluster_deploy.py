"""`edgespool deploy BUNDLE --cluster dev1,dev2[,...] [--cluster-mode pipeline|tensor]` (issue 19): each board gets
only its share of the model, through the ordinary ssh deploy (content-addressed chunks, resume, CRC check on the
board, atomic ``current`` switch) run once per board.

- pipeline: board r gets the stage share of its layer range (:mod:`edgespool.runtime.cluster.stage_share`): its
  layers, the embedding on the first board, the final norm + head on the last, the tokenizer and kernels. The cut
  is the one ``edgespool run --cluster`` uses (about equal bytes a board) or ``ranges`` (e.g. the cut
  ``edgespool cluster plan`` printed).
- tensor: board r gets its shard bundle (:mod:`edgespool.exporters.tensor_shard`, the shard cache of
  ``run --cluster-mode tensor``), with the bundle's compiled kernels added.

The shares are written once under ``BUNDLE.cluster-shares/`` (or ``work``) and reused while they match the
bundle. What went where is recorded in the device registry's folder (``clusters.json``: per board its release and
the share's path on the board), which ``edgespool run BUNDLE --cluster dev1,dev2`` reads
(:mod:`.cluster_run`)."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...errors import OptionError
from ...runtime.bundle.constants import MANIFEST
from ...runtime.bundle.manifest_schema import CHECKSUM_KEY, manifest_digest
from ...runtime.bundle.reader import Bundle
from .registry import Device, Registry

RECORDS = "clusters.json"


@dataclass
class BoardShare:
    """One board's share: where it was written here and what it holds."""

    device: str
    rank: int
    share: Path
    holds: str  # "layers 0..11 + embedding", "tensor shard 0 of 2"
    layers: tuple[int, int] | None  # pipeline: the stage's layer range


def parse_devices(text: str, registry: Registry) -> list[Device]:
    """``--cluster dev1,dev2``: registered device names in board order (OptionError, one line, naming the first
    unknown or repeated name)."""
    names = [n.strip() for n in text.split(",")]
    if not text.strip() or any(not n for n in names):
        raise OptionError(f"--cluster {text!r}: expected a comma-separated list of device names "
                          "(`edgespool device ls`)")
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup:
        raise OptionError(f"--cluster {text!r}: device {dup!r} is named twice (one share a board)")
    try:
        return [registry.get(n) for n in names]
    except OptionError as e:
        raise OptionError(f"--cluster {text!r}: {e}") from None


def parse_ranges(text: str, num_layers: int, k: int) -> list[tuple[int, int]]:
    """``--cluster-ranges 0:10,10:24``: contiguous layer ranges covering the model, one per board."""
    try:
        ranges = [(int(a), int(b)) for a, _, b in (p.partition(":") for p in text.split(","))]
    except ValueError:
        raise OptionError(f"--cluster-ranges {text!r}: expected A:B,B:C,... (layer ranges)") from None
    ok = ranges and ranges[0][0] == 0 and ranges[-1][1] == num_layers and all(
        a < b for a, b in ranges) and all(x[1] == y[0] for x, y in zip(ranges, ranges[1:]))
    if not ok:
        raise OptionError(f"--cluster-ranges {text!r}: the ranges must be contiguous, non-empty and cover layers "
                          f"0..{num_layers - 1}")
    if len(ranges) != k:
        raise OptionError(f"--cluster-ranges {text!r}: {len(ranges)} ranges for {k} boards")
    return ranges


def _holds(a: int, b: int, L: int) -> str:
    return f"layers {a}..{b - 1}" + (" + embedding" if a == 0 else "") + (" + head" if b == L else "")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _shard_with_kernels(shard: Path, bundle: Bundle, out: Path) -> Path:
    """``shard`` (a shard bundle) plus ``bundle``'s compiled kernels as a bundle at ``out`` (files hard-linked where
    the filesystem allows; reused while its manifest says the same shard and kernels)."""
    m = json.loads((shard / MANIFEST).read_text(encoding="utf-8"))
    m["kernels"] = bundle.manifest["kernels"]
    m[CHECKSUM_KEY] = manifest_digest(m)
    if (out / MANIFEST).is_file():
        try:
            if json.loads((out / MANIFEST).read_text(encoding="utf-8")).get(CHECKSUM_KEY) == m[CHECKSUM_KEY]:
                return out
        except ValueError:
            pass
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in shard.iterdir():
        if f.is_file() and f.name != MANIFEST:
            _link_or_copy(f, tmp / f.name)
    shutil.copytree(bundle.path / "kernels", tmp / "kernels")
    (tmp / MANIFEST).write_text(json.dumps(m, indent=1), encoding="utf-8")
    Bundle(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _stage_current(path: Path, bundle: Bundle, a: int, b: int) -> bool:
    from ...runtime.cluster.stage_share import SECTION, StageBundle

    try:
        sec = StageBundle(path).manifest[SECTION]
    except Exception:  # noqa: BLE001 -- anything unreadable is rewritten
        return False
    return (sec["start"], sec["stop"], sec.get("source_checksum")) == (a, b, bundle.manifest.get(CHECKSUM_KEY))


def write_shares(bundle: Bundle, devices: list[Device], mode: str, ranges: list[tuple[int, int]] | None = None,
                 work: str | None = None) -> list[BoardShare]:
    """Each board's share of ``bundle`` (written once under ``work``, default ``BUNDLE.cluster-shares/``)."""
    from ..cluster.cli_run import even_bytes_ranges
    from ..cluster.solve import head_bytes, layer_bytes

    k, L = len(devices), bundle.config.num_layers
    base = Path(work) if work else bundle.path.resolve().with_name(bundle.path.resolve().name + ".cluster-shares")
    out: list[BoardShare] = []
    if mode == "tensor":
        from ..cluster.tensor_cli import shard_cache

        shards = shard_cache(bundle, k, str(base / "tp-shards") if work else None)
        for r, (dev, p) in enumerate(zip(devices, shards)):
            if bundle.manifest.get("kernels") and (bundle.path / "kernels").is_dir():
                p = _shard_with_kernels(p, bundle, base / f"tensor-{r}-of-{k}")
            out.append(BoardShare(dev.name, r, p, f"tensor shard {r} of {k} (heads, FFN columns, vocabulary rows)",
                                  None))
        return out
    if mode != "pipeline":
        raise OptionError(f"--cluster-mode {mode!r}: pipeline or tensor")
    from ...runtime.cluster.stage_share import write_stage_share

    cut = ranges or even_bytes_ranges(layer_bytes(bundle), head_bytes(bundle), k)
    for r, (dev, (a, b)) in enumerate(zip(devices, cut)):
        p = base / f"stage-{a}-{b}-of-{L}"
        if not _stage_current(p, bundle, a, b):
            try:
                write_stage_share(bundle, a, b, p)
            except PermissionError as e:
                raise OptionError(f"--work: cannot write the shares into {base} ({e.strerror}); pass --work DIR") \
                    from None
        out.append(BoardShare(dev.name, r, p, _holds(a, b, L), (a, b)))
    return out


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (what a deploy of that folder ships)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def record_key(bundle: Bundle, mode: str, names: list[str]) -> str:
    return f"{bundle.manifest.get(CHECKSUM_KEY) or bundle.path.resolve()}|{mode}|{','.join(names)}"


def save_record(registry: Registry, key: str, record: dict[str, Any]) -> None:
    """Remember which release of which share each board holds (``clusters.json`` beside the registry)."""
    path = registry.dir / RECORDS
    try:
        recs = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError:
        recs = {}
    recs[key] = record
    registry.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(recs, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def load_record(registry: Registry, key: str) -> dict[str, Any] | None:
    path = registry.dir / RECORDS
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key) if path.exists() else None
    except ValueError:
        return None


def _board_pythonpath(facts: dict[str, Any], root: str) -> str | None:
    """The PYTHONPATH the board's commands get (the agent's ``env/current``) when edgespool there came from a
    wheel shipped under the device root; None when the board's own install is used."""
    f = (facts.get("edgespool") or {}).get("file") or ""
    return f"{root}/env/current" if f.startswith(root.rstrip("/") + "/env/") else None


def deploy_cluster(bundle_path: str, cluster: str, mode: str, registry: Registry, *, ranges_text: str | None = None,
                   work: str | None = None, memory_budget: int | None = None, keep: int = 3,
                   read_test_bytes: int = 0, retries: int = 2, wheel: Path | None = None,
                   on_board: Callable[[dict[str, Any]], None] | None = None,
                   on_retry: Callable[[int, Exception], None] | None = None) -> dict[str, Any]:
    """Write every board's share and deploy it to that board; returns the JSON report (per board: what it holds,
    share bytes vs the whole bundle, bytes sent) after recording where each share lives on its board."""
    from ...runtime.cluster.tensor import check_tensor_parallel
    from .deploy import deploy_with_retries

    devices = parse_devices(cluster, registry)
    bundle = Bundle(bundle_path)
    if bundle.config is None:
        raise OptionError(f"{bundle_path}: deploy --cluster splits decoder bundles (this one is {bundle.kind!r})")
    k, L = len(devices), bundle.config.num_layers
    if mode == "tensor":
        check_tensor_parallel(bundle.config, k)
        if ranges_text:
            raise OptionError("--cluster-ranges only applies with --cluster-mode pipeline")
        ranges = None
    elif k > L:
        raise OptionError(f"--cluster: {k} boards for a model of {L} layers (at most one board a layer)")
    else:
        ranges = parse_ranges(ranges_text, L, k) if ranges_text else None
    shares = write_shares(bundle, devices, mode, ranges, work)
    whole = tree_bytes(bundle.path)
    boards = []
    for sh, dev in zip(shares, devices):
        res = deploy_with_retries(sh.share, dev, registry, retries=retries, on_retry=on_retry,
                                  memory_budget=memory_budget, keep=keep, read_test_bytes=read_test_bytes,
                                  wheel=wheel)
        root = res.facts["device_root"]
        row = {"device": dev.name, "rank": sh.rank, "holds": sh.holds, "layers": sh.layers,
               "share_bytes": res.bytes_total, "whole_bytes": whole, "bytes_sent": res.bytes_sent,
               "payload_sent": res.payload_sent, "release": res.release, "seconds": res.seconds,
               "path": f"{root}/releases/{res.release}", "python": dev.python,
               "pythonpath": _board_pythonpath(res.facts, root), "host": dev.host,
               "crc_checked_tensors": res.crc_checked_tensors, "local_share": str(sh.share)}
        boards.append(row)
        if on_board:
            on_board(row)
    out = {"bundle": str(bundle.path), "mode": mode, "whole_bytes": whole, "boards": boards,
           "ranges": [list(s.layers) for s in shares] if mode == "pipeline" else None}
    save_record(registry, record_key(bundle, mode, [d.name for d in devices]), out)
    return out

