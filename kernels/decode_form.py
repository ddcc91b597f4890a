"""The packed decode tiles' form, chosen on this host (issue 12): one row-group stream a tile or four interleaved.

A decode product (one activation row) through the x16 layout reads a call's four 16-row groups either one after
the other as ONE sequential stream (form 1, 6 KiB software prefetch: the default since 2026-12-07, 10-30% faster
a core on the Zen 4 VM) or as four streams a row group apart inside one tile (form 4, 2 KiB prefetch: the older
form, which measured 5-23% faster on an Intel Xeon core at one thread and for the K-quants at 4 threads, while
one stream won for q8_0 at 4 and 16 threads there). Both forms give bit-identical results, so the choice is
speed only, and it depends on the CPU, the format and the thread count: :func:`choose` measures it.

Measurement: for each weight format of the model with at least :data:`MIN_SWEEP_BYTES` of packed weights, a
sweep of one decode product through each weight of that format (in model order, up to :data:`SWEEP_BYTES`: more
than a last-level cache holds, so the sweep reads DRAM as a decode step does) is timed in each form, ``rounds``
interleaved rounds (the form that goes first alternates), medians; form 4 is taken only when it is at least
:data:`MIN_GAIN` faster. Formats with fewer bytes (a Q4_K_M file's few Q5_0 / Q8_0 tensors) follow the format with
the most bytes; a model with less than that in every format keeps the default (its weights sit in the caches). The choice is cached per (CPU model, kernel library, threads, format) in
``~/.cache/edgespool/kernels/decode-forms.json`` (``$EDGESPOOL_KERNEL_CACHE``), so a host measures once.

``$EDGESPOOL_DECODE_FORM``: ``auto`` (default: cached, else measured), ``tune`` (measure again), ``1`` or ``4``
(that form for every format, nothing measured).
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import OptionError

FORMS = (1, 4)
SWEEP_BYTES = 192 << 20  # bytes of weights one timed sweep reads (more than any L3 this targets holds)
MIN_SWEEP_BYTES = 48 << 20  # a format with fewer packed bytes follows the model's main format
MIN_GAIN = 0.03  # form 4 only when this much faster than form 1 (the default)
ROUNDS = 3


def requested() -> str:
    """``$EDGESPOOL_DECODE_FORM`` checked: ``auto``, ``tune``, ``1`` or ``4``."""
    v = os.environ.get("EDGESPOOL_DECODE_FORM", "auto").strip().lower() or "auto"
    if v not in ("auto", "tune", "1", "4"):
        raise OptionError(f"EDGESPOOL_DECODE_FORM={v!r}: use auto, tune, 1 (one row-group stream a decode tile) "
                          "or 4 (four interleaved)")
    return v


def cpu_name() -> str:
    """This CPU's model name (``/proc/cpuinfo``), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "cpu model", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def _cache_file() -> Path:
    root = os.environ.get("EDGESPOOL_KERNEL_CACHE") or Path.home() / ".cache/edgespool/kernels"
    return Path(root) / "decode-forms.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        got = json.loads(path.read_text())
        return got if isinstance(got, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:  # a read-only home: the choice is measured again next time
        pass


def measure(bk: Any, ws: list[Any], rounds: int = ROUNDS) -> dict[int, float]:
    """Median seconds of one decode sweep through ``ws`` (packed weights of one format, one input width each) in
    each form, ``rounds`` interleaved rounds; the pool's form for that format is restored afterwards."""
    scheme = ws[0].scheme
    before = bk.decode_form(scheme)
    xs = {int(w.shape[1]): np.random.default_rng(0).standard_normal((1, int(w.shape[1]))).astype(np.float32)
          for w in ws}
    times: dict[int, list[float]] = {f: [] for f in FORMS}
    try:
        for f in FORMS:  # warm-up: the page tables and the code of both forms
            bk.decode_form(scheme, f)
            bk.linear(xs[int(ws[0].shape[1])], ws[0])
        for r in range(rounds):
            for f in (FORMS if r % 2 == 0 else FORMS[::-1]):
                bk.decode_form(scheme, f)
                t0 = time.perf_counter()
                for w in ws:
                    bk.linear(xs[int(w.shape[1])], w)
                times[f].append(time.perf_counter() - t0)
    finally:
        bk.decode_form(scheme, before)
    return {f: statistics.median(v) for f, v in times.items()}


def choose(bk: Any, weights: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Set the decode form of every packed format among ``weights`` (a model's resident tensors) on ``bk`` (a
    :class:`~edgespool.kernels.c_blocks.BlockKernels`) and return ``{scheme: {"form", "how", "ms": {form: ms}}}``
    (``how``: measured / cached / forced / follows <scheme>)."""
    from .block_pack import PackedQTensor

    want = requested()
    by: dict[str, list[Any]] = {}
    for w in weights:
        if type(w) is PackedQTensor and len(w.shape) == 2:
            by.setdefault(w.scheme, []).append(w)
    if not by or not bk.has_decode_forms:
        return {}
    out: dict[str, dict[str, Any]] = {}
    if want in ("1", "4"):
        for s in by:
            bk.decode_form(s, int(want))
            out[s] = {"form": int(want), "how": "forced ($EDGESPOOL_DECODE_FORM)"}
        return out
    size = {s: sum(int(w.data.nbytes) for w in ws) for s, ws in by.items()}
    main = max(size, key=lambda s: size[s])
    if size[main] < MIN_SWEEP_BYTES:  # a model this small sits in the caches: a sweep would not measure DRAM reads
        return {s: {"form": bk.decode_form(s), "how": "default (too few weights to measure)"} for s in by}
    path = _cache_file()
    cache = _read_cache(path)
    lib = hashlib.sha256(Path(bk.path).read_bytes()).hexdigest()[:16] if Path(bk.path).exists() else str(bk.path)
    changed = False
    for s in sorted(by, key=lambda s: -size[s]):
        if size[s] < MIN_SWEEP_BYTES:
            continue
        key = f"{cpu_name()}|{bk.isa}|{lib}|{bk.threads}|{s}"
        hit = cache.get(key)
        if want == "auto" and isinstance(hit, dict) and hit.get("form") in FORMS:
            bk.decode_form(s, int(hit["form"]))
            out[s] = {"form": int(hit["form"]), "how": "cached", "ms": hit.get("ms")}
            continue
        ws, total = [], 0
        for w in by[s]:
            if total >= SWEEP_BYTES:
                break
            ws.append(w)
            total += int(w.data.nbytes)
        t = measure(bk, ws)
        form = 4 if t[4] < t[1] * (1 - MIN_GAIN) else 1
        bk.decode_form(s, form)
        ms = {str(f): round(v * 1e3, 3) for f, v in t.items()}
        out[s] = {"form": form, "how": "measured", "ms": ms, "sweep_bytes": total}
        cache[key] = {"form": form, "ms": ms, "sweep_bytes": total, "measured": time.strftime("%Y-%m-%d %H:%M")}
        changed = True
    for s in by:
        if s not in out:
            form = out[main]["form"] if main in out else 1
            bk.decode_form(s, form)
            out[s] = {"form": form, "how": f"follows {main}"}
    if changed:
        _write_cache(path, cache)
    return out
