"""Summaries of a bundle for `edgespool inspect`: per-layer and per-expert sizes, quantisation, totals."""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from .bundle.names import experts_prefix, parse_group
from .bundle.reader import Bundle


def summarize(bundle: Bundle) -> dict[str, Any]:
    """A JSON-ready summary of a decoder bundle (layers, experts, schemes, sizes, files)."""
    m = bundle.manifest
    cfg = bundle.config
    schemes: Counter[str] = Counter()
    scheme_bytes: Counter[str] = Counter()
    for rec in bundle.tensors.values():
        schemes[rec["scheme"]] += 1
        scheme_bytes[rec["scheme"]] += int(rec["nbytes"])
    layers: list[dict[str, Any]] = []
    per_layer_experts: dict[int, list[int]] = defaultdict(list)
    for g in bundle.groups.values():
        n = parse_group(g.name)
        if n.kind == "expert":
            per_layer_experts[n.layer].append(g.nbytes)
    for g in bundle.groups.values():
        n = parse_group(g.name)
        if n.is_layer:
            i = n.layer
            ex = per_layer_experts.get(i, [])
            schemes_l = sorted({bundle.tensors[t]["scheme"] for t in g.tensors if len(bundle.tensors[t]["shape"]) == 2})
            layers.append({"layer": i, "dense_bytes": g.nbytes, "experts": len(ex),
                           "expert_bytes_each": (max(ex) if ex else 0), "experts_bytes": sum(ex),
                           "dense_schemes": schemes_l,
                           "expert_schemes": sorted({bundle.tensors[t]["scheme"] for t in bundle.tensors
                                                     if t.startswith(experts_prefix(i))})})
    files = {p.name: p.stat().st_size for p in sorted(bundle.path.rglob("*")) if p.is_file()}
    return {
        "path": str(bundle.path),
        "schema_version": m["schema_version"],
        "created_by": m.get("created_by"),
        "model": cfg.to_dict() if cfg else None,
        "source": m.get("source"),
        "target": (m.get("target") or {}).get("name"),
        "quant": m.get("quant"),
        "tensors": len(bundle.tensors),
        "groups": len(bundle.groups),
        "weights_bytes": bundle.weights_nbytes,
        "schemes": {k: {"tensors": schemes[k], "bytes": scheme_bytes[k]} for k in sorted(schemes)},
        "embed_bytes": bundle.groups["embed"].nbytes if "embed" in bundle.groups else 0,
        "head_bytes": bundle.groups["head"].nbytes if "head" in bundle.groups else 0,
        "layers": layers,
        "files": files,
        "total_bytes": sum(files.values()),
        "disk_to_weights": sum(files.values()) / bundle.weights_nbytes if bundle.weights_nbytes else 0.0,
        "onnx": m.get("onnx"),
        "kernels": m.get("kernels"),
        "report": m.get("report"),
    }
