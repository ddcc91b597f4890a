"""A pipeline stage's share of a bundle (issue 19, ``edgespool deploy --cluster``): the bundle cut down to what one
board of a pipeline-parallel run reads -- layers ``[start, stop)``, the embedding on the first stage, the final
norm + head on the last (a tied head is the embedding table: the last stage then holds it too) -- plus what every
board needs (the model config, the tokenizer, the compiled kernels).

On disk a share is a bundle directory whose ``manifest.json`` lists only the share's tensors and groups (their
offsets in the share's own, smaller ``weights.bin``) and carries a ``pipeline_stage`` section (``start``, ``stop``,
``num_layers``, the groups, the source manifest's checksum). A plain :class:`~edgespool.runtime.bundle.reader.Bundle`
refuses it (the model config's other tensors are missing); :class:`StageBundle` opens it with the same schema
checks except that the tensor set must be EXACTLY the stage's, so the ordinary machinery (``open_stage``,
``plan_memory(stage=...)``, ``StreamingWeights``) runs on it unchanged. Written by :func:`write_stage_share`."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ...errors import BundleError, OptionError
from ..bundle.constants import ALIGNMENT, MANIFEST, MAX_MANIFEST_BYTES, align_up
from ..bundle.manifest_schema import (
    CHECKSUM_KEY,
    ManifestChecker,
    finite_json,
    manifest_digest,
)
from ..bundle.names import EMBED, FINAL_NORM, LM_HEAD
from ..bundle.reader import Bundle, GroupInfo

SECTION = "pipeline_stage"


def _stage_role(sec: dict[str, Any], num_layers: int):
    from ...schedulers.stage_role import StageRole

    return StageRole.of_range(int(sec["start"]), int(sec["stop"]), num_layers)


class _StageChecker(ManifestChecker):
    """The manifest schema of a stage share: a decoder's checks, with the tensor set restricted to the stage's."""

    def decoder(self, tensors: dict[str, Any], cfg) -> None:
        sec = self.m.get(SECTION)
        if not isinstance(sec, dict) or not all(isinstance(sec.get(k), int) for k in ("start", "stop", "num_layers")):
            self.fail(SECTION, "is missing or has no integer start / stop / num_layers")
        if cfg is None or sec["num_layers"] != cfg.num_layers:
            self.fail(f"{SECTION}.num_layers", f"{sec['num_layers']!r} is not the model config's layer count")
        try:
            role = _stage_role(sec, cfg.num_layers)
        except OptionError as e:
            self.fail(SECTION, str(e))
        from ..bundle.names import group_of

        tied = cfg.tie_word_embeddings
        want = {n for n in cfg.tensor_shapes() if role.has_group(group_of(n), tied)}
        if set(tensors) != want:
            odd = sorted(set(tensors) ^ want)[0]
            self.fail("tensors", f"tensor {odd!r} is {'missing from' if odd in want else 'not part of'} the "
                                 f"stage's share (layers {role.start}..{role.stop - 1})")
        for name, shape in cfg.tensor_shapes().items():
            if name in tensors and tuple(tensors[name]["shape"]) != tuple(shape):
                self.fail(f"tensors[{name!r}].shape", f"{tensors[name]['shape']} but the model config implies "
                                                      f"{list(shape)}")


class _ShareTensors(dict):
    """The share's tensor records (iteration, ``len``, ``items``: only those in the share's weights file); a
    lookup by name also finds the metadata of the model's edge tensors the share does not hold (``embed``,
    ``norm``, ``lm_head``: their shapes and sizes, which the memory planner reads for every stage)."""

    def __init__(self, present: dict[str, Any], absent: dict[str, Any]) -> None:
        super().__init__(present)
        self.absent = absent

    def __missing__(self, name: str) -> Any:
        if name in self.absent:
            return self.absent[name]
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self.absent


class StageBundle(Bundle):
    """A stage share opened like a bundle (see the module docstring); ``stage`` is its
    :class:`~edgespool.schedulers.stage_role.StageRole`."""

    def __init__(self, path: str | os.PathLike) -> None:
        from ..bundle.config import ModelConfig

        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{self.path}: not a stage share (no {MANIFEST})")
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath}: larger than any manifest; not an edgespool stage share")
        try:
            m = finite_json(mpath.read_bytes().decode("utf-8"), str(mpath))
        except UnicodeDecodeError as e:
            raise BundleError(f"{mpath}: manifest is not valid JSON ({e})") from None
        if not isinstance(m, dict) or m.get("kind", "decoder") != "decoder" or not isinstance(m.get("model"), dict):
            raise BundleError(f"{mpath}: not a decoder stage share")
        if not isinstance(m.get(SECTION), dict):
            raise BundleError(f"{mpath}: no {SECTION} section; not a pipeline stage share")
        self.manifest = m
        self.kind = "decoder"
        self.config = ModelConfig.from_dict(m["model"], str(mpath))
        _StageChecker(m, self.path, self.config, str(mpath)).run()
        absent = m[SECTION].get("edge_records") or {}
        if not isinstance(absent, dict) or set(absent) & set(m["tensors"]):
            raise BundleError(f"{mpath}: field {SECTION}.edge_records: not records of tensors outside the share")
        self.groups = {g["name"]: GroupInfo(g["name"], int(g["offset"]), int(g["nbytes"]), tuple(g["tensors"]))
                       for g in m["groups"]}
        self.weights_path = self.path / m["weights"]["file"]
        self.tensors = m["tensors"]
        self._check_weights_file()
        self.tensors = _ShareTensors(m["tensors"], absent)
        self.stage = _stage_role(m[SECTION], self.config.num_layers)


def open_bundle(path: str | os.PathLike) -> Bundle:
    """A :class:`StageBundle` when ``path`` holds a stage share, else a :class:`Bundle`."""
    mpath = Path(path) / MANIFEST
    try:
        share = mpath.is_file() and mpath.stat().st_size <= MAX_MANIFEST_BYTES and \
            SECTION in (json.loads(mpath.read_bytes()) or {})
    except (OSError, ValueError, TypeError):
        share = False  # Bundle() says what is wrong with it
    return StageBundle(path) if share else Bundle(path)


def stage_groups(bundle: Bundle, start: int, stop: int) -> list[str]:
    """The groups of ``bundle`` that layers ``[start, stop)`` read, in file order."""
    from ...schedulers.stage_role import StageRole

    role = StageRole.of_range(start, stop, bundle.config.num_layers)
    tied = bundle.config.tie_word_embeddings
    return [g for g in sorted(bundle.groups, key=lambda g: bundle.groups[g].offset) if role.has_group(g, tied)]


def write_stage_share(bundle: Bundle, start: int, stop: int, out_dir: str | os.PathLike) -> Path:
    """Write the share of layers ``[start, stop)`` of ``bundle`` at ``out_dir`` (replaced when it exists): the
    stage's groups byte for byte (their tensors keep their CRC32s), the tokenizer files and the compiled kernels;
    returns its path. OptionError for a range outside the model; BundleError for a bundle that is a share."""
    if SECTION in bundle.manifest or bundle.config is None:
        raise BundleError(f"{bundle.path}: cut stage shares from a whole decoder bundle")
    groups = stage_groups(bundle, start, stop)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    m = json.loads(json.dumps(bundle.manifest))
    new_groups, new_tensors, cursor = [], {}, 0
    with open(bundle.weights_path, "rb") as src, open(tmp / m["weights"]["file"], "wb") as dst:
        for g in groups:
            info = bundle.groups[g]
            cursor = align_up(cursor, ALIGNMENT)
            dst.seek(cursor)
            src.seek(info.offset)
            left = info.nbytes
            while left:
                b = src.read(min(left, 4 << 20))
                if not b:
                    raise BundleError(f"{bundle.weights_path}: truncated inside group {g!r}")
                dst.write(b)
                left -= len(b)
            for t in info.tensors:
                rec = dict(m["tensors"][t])
                rec["offset"] = int(rec["offset"]) - info.offset + cursor
                new_tensors[t] = rec
            new_groups.append({**next(x for x in m["groups"] if x["name"] == g), "offset": cursor})
            cursor += info.nbytes
        dst.truncate(cursor)
    m["groups"], m["tensors"] = new_groups, new_tensors
    m["weights"] = {**m["weights"], "nbytes": cursor}
    m[SECTION] = {"start": int(start), "stop": int(stop), "num_layers": bundle.config.num_layers,
                  "groups": groups, "source_checksum": bundle.manifest.get(CHECKSUM_KEY),
                  "edge_records": {n: bundle.tensors[n] for n in (EMBED, FINAL_NORM, LM_HEAD)
                                   if n in bundle.tensors and n not in new_tensors}}
    m.pop("onnx", None)  # the ONNX lowering is of the whole model: not shipped with a share
    m[CHECKSUM_KEY] = manifest_digest(m)
    tok = m.get("tokenizer") or {}
    for f in (tok.get("file"), tok.get("chat_template")):
        if f:
            shutil.copy2(bundle.path / f, tmp / f)
    if (bundle.path / "kernels").is_dir():
        shutil.copytree(bundle.path / "kernels", tmp / "kernels")
    (tmp / MANIFEST).write_text(json.dumps(m, indent=1), encoding="utf-8")
    StageBundle(tmp)  # the share opens (schema, sizes) before it replaces anything
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
