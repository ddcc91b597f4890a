"""The one schema of manifest.json: every field the runtime trusts is checked here, once, when a bundle opens.

:func:`validate_manifest` checks types and ranges of the whole manifest, that each tensor record's parts agree
with its scheme, shape and dtype (``data`` / ``scale`` shapes from the :class:`~.scheme_base.Scheme`, part bytes =
elements x item size, parts inside the record, records inside the weights file), that the groups tile their
tensors, that a decoder's tensor names and shapes are exactly those its model config implies, that the tokenizer's
BOS/EOS ids lie within the vocabulary, and that the files the manifest names (``weights.file``,
``tokenizer.file``, ``tokenizer.chat_template``) are plain names of regular files inside the bundle folder.

:func:`manifest_digest` is the checksum that covers the manifest itself (written by the bundle writer as
``manifest_sha256``; checked by :meth:`~.reader.Bundle.verify`, i.e. ``edgespool inspect --verify``): the SHA-256 of
the manifest's canonical JSON (sorted keys, no whitespace) without that one key. Bundles written before the
checksum existed have no ``manifest_sha256``: they are still schema-validated, and ``inspect --verify`` says their
manifest is not covered (re-export to cover it).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BundleError
from .config import ModelConfig
from .constants import PART_DTYPES
from .ffn_geometry import LAYOUT as NEURON_BUNDLES
from .ffn_geometry import LAYOUTS, MATRIX, ffn_group, ffn_tensor
from .names import group_of, layer_of

CHECKSUM_KEY = "manifest_sha256"
KINDS = ("decoder", "cnn")
MAX_INT = 2**62  # offsets and sizes: far beyond any file, small enough that sums stay exact


def manifest_digest(m: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``m``'s canonical JSON without :data:`CHECKSUM_KEY`."""
    body = {k: v for k, v in m.items() if k != CHECKSUM_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_file_digest(path: Path, want: Any, field: str) -> None:
    """BundleError when ``path``'s SHA-256 is not ``want`` (``field`` names the manifest key); no-op when the
    manifest records no digest (bundles written before tokenizer files were covered)."""
    if want is None:
        return
    if file_sha256(path) != want:
        raise BundleError(f"{path}: checksum mismatch ({field}: the file was edited or corrupted after export); "
                          "re-export the bundle")


def _int(v: Any, lo: int = 0, hi: int = MAX_INT) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


class ManifestChecker:
    """The manifest's schema checks, one method per part; ``run()`` checks a whole manifest and raises a one-line
    :class:`BundleError` naming the field. Subclassed by bundle kinds with their own tensor sets (a pipeline
    stage's share, ``runtime/cluster/stage_share.py``)."""

    def __init__(self, m: dict[str, Any], bundle_dir: Path, config: ModelConfig | None, mpath: str) -> None:
        self.m, self.dir, self.config, self.where = m, bundle_dir, config, mpath

    def fail(self, field: str, msg: str) -> None:
        raise BundleError(f"{self.where}: field {field}: {msg}; the manifest is corrupt or was edited "
                          "(re-export the bundle)")

    # -- files ------------------------------------------------------------------------------------------------
    def bundle_file(self, field: str, name: Any) -> Path:
        """A file the manifest names: a relative path without ``..`` that stays inside the bundle folder (after
        resolving symlinks) and is a regular file."""
        if not isinstance(name, str) or not name or "\0" in name:
            self.fail(field, f"{name!r} is not a file name")
        p = Path(name)
        if p.is_absolute() or ".." in p.parts:
            self.fail(field, f"{name!r} points outside the bundle folder (only names inside it are allowed)")
        full = self.dir / p
        try:
            real = Path(os.path.realpath(full))
            root = Path(os.path.realpath(self.dir))
            if root != real and root not in real.parents:
                self.fail(field, f"{name!r} resolves to {real}, outside the bundle folder")
            st = os.stat(full)
        except FileNotFoundError:
            what = "weights file" if field == "weights.file" else f"file named by {field}"
            raise BundleError(f"{full}: {what} is missing; re-export the bundle") from None
        except OSError as e:
            raise BundleError(f"{full}: {field} cannot be read ({e.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            self.fail(field, f"{name!r} is not a regular file (a device, FIFO or directory)")
        return full

    # -- the whole manifest -----------------------------------------------------------------------------------
    def run(self) -> None:
        m = self.m
        kind = m.get("kind", "decoder")
        if kind not in KINDS:
            self.fail("kind", f"{kind!r} is unknown (expected one of {', '.join(KINDS)})")
        if CHECKSUM_KEY in m and not (isinstance(m[CHECKSUM_KEY], str) and len(m[CHECKSUM_KEY]) == 64):
            self.fail(CHECKSUM_KEY, "is not a SHA-256 hex digest")
        w = m.get("weights")
        if not isinstance(w, dict):
            self.fail("weights", "is missing or not an object")
        wpath = self.bundle_file("weights.file", w.get("file"))
        size = wpath.stat().st_size
        if not _int(w.get("nbytes")):
            self.fail("weights.nbytes", f"{w.get('nbytes')!r} is not a byte count")
        if "alignment" in w and not (_int(w["alignment"], 1, 1 << 30) and w["alignment"] & (w["alignment"] - 1) == 0):
            self.fail("weights.alignment", f"{w['alignment']!r} is not a power of two")
        tensors = m.get("tensors")
        if not isinstance(tensors, dict):
            self.fail("tensors", "is missing or not an object")
        for name, rec in tensors.items():
            self.tensor(name, rec, size, kind)
        self.groups(tensors)
        if kind == "decoder":
            self.decoder(tensors, self.config)
        tok = m.get("tokenizer")
        if kind == "decoder" or tok is not None:
            self.tokenizer(tok, self.config)

    def tensor(self, name: Any, rec: Any, size: int, kind: str) -> None:
        f = f"tensors[{name!r}]"
        if not isinstance(rec, dict):
            self.fail(f, "is not an object")
        for k in ("group", "scheme"):
            if not isinstance(rec.get(k), str):
                self.fail(f"{f}.{k}", f"{rec.get(k)!r} is not a string")
        shape = rec.get("shape")
        if not (isinstance(shape, list) and 1 <= len(shape) <= 8 and all(_int(d, 1, 1 << 40) for d in shape)):
            self.fail(f"{f}.shape", f"{shape!r} is not a list of 1..8 positive ints")
        off, nb = rec.get("offset"), rec.get("nbytes")
        if not _int(off) or not _int(nb):
            self.fail(f"{f}.offset/nbytes", f"{off!r}/{nb!r} are not byte counts")
        if off + nb > size:
            raise BundleError(f"{self.dir / self.m['weights']['file']}: truncated ({size} bytes) — tensor {name!r} "
                              f"needs bytes up to {off + nb}; re-export the bundle")
        if not _int(rec.get("crc32"), 0, 2**32 - 1):
            self.fail(f"{f}.crc32", f"{rec.get('crc32')!r} is not a CRC32")
        layout = rec.get("layout", MATRIX)
        if layout not in LAYOUTS:
            raise BundleError(f"{self.where}: tensor {name!r} has unknown layout {layout!r} (this edgespool reads "
                              f"{', '.join(LAYOUTS)}); upgrade edgespool or re-export the bundle")
        gs = rec.get("group_size", 0)
        if not _int(gs, 0, 1 << 20):
            self.fail(f"{f}.group_size", f"{gs!r} is not a group size")
        parts = rec.get("parts")
        if not isinstance(parts, dict) or "data" not in parts or not set(parts) <= {"data", "scale"}:
            self.fail(f"{f}.parts", "should hold 'data' and optionally 'scale'")
        ends = []
        for pname, p in parts.items():
            pf = f"{f}.parts.{pname}"
            if not isinstance(p, dict):
                self.fail(pf, "is not an object")
            if p.get("dtype") not in PART_DTYPES:
                raise BundleError(f"{self.where}: tensor {name!r} part {pname!r} has unknown dtype {p.get('dtype')!r}")
            ps = p.get("shape")
            if not (isinstance(ps, list) and len(ps) <= 8 and all(_int(d, 0, 1 << 40) for d in ps)):
                self.fail(f"{pf}.shape", f"{ps!r} is not a list of non-negative ints")
            po, pn = p.get("offset"), p.get("nbytes")
            if not _int(po) or not _int(pn):
                self.fail(f"{pf}.offset/nbytes", f"{po!r}/{pn!r} are not byte counts")
            if int(np.prod(ps, dtype=object) if ps else 1) * np.dtype(p["dtype"]).itemsize != pn:
                self.fail(f"{pf}", f"shape {ps} of {p['dtype']} is not its {pn} bytes")
            if po + pn > nb:
                self.fail(f"{pf}", f"bytes {po}..{po + pn} lie outside the record's {nb} bytes")
            ends.append((po, po + pn))
        ends.sort()
        for (_, e0), (s1, _) in itertools.pairwise(ends):
            if s1 < e0:
                self.fail(f"{f}.parts", "overlap")
        if kind == "decoder" and layout == MATRIX:
            self.scheme_geometry(name, rec, tuple(shape), gs)

    def scheme_geometry(self, name: str, rec: dict[str, Any], shape: tuple[int, ...], gs: int) -> None:
        from .schemes import SCHEMES

        f = f"tensors[{name!r}]"
        sch = SCHEMES.get(rec["scheme"])
        if sch is None:
            self.fail(f"{f}.scheme", f"{rec['scheme']!r} is unknown (known: {', '.join(SCHEMES)})")
        g = sch.group_size(gs)
        if g and (len(shape) != 2 or shape[1] % g):
            self.fail(f"{f}.group_size", f"{gs} does not divide the rows of shape {list(shape)}")
        if len(shape) == 2 and (why := sch.check_width(shape[1], gs)):
            self.fail(f"{f}.shape", why)
        want = {"data": (sch.data_dtype, tuple(sch.data_shape(shape, gs)))}
        if sch.scale_dtype is not None:
            want["scale"] = (sch.scale_dtype, tuple(sch.scale_shape(shape, gs) or ()))
        if set(want) != set(rec["parts"]):
            self.fail(f"{f}.parts", f"scheme {sch.name} stores parts {sorted(want)}, the record has "
                                    f"{sorted(rec['parts'])}")
        for pname, (dt, sh) in want.items():
            p = rec["parts"][pname]
            if p["dtype"] != dt or tuple(p["shape"]) != sh:
                self.fail(f"{f}.parts.{pname}", f"{p['dtype']} {p['shape']} does not match scheme {sch.name} of "
                                                f"shape {list(shape)} ({dt} {list(sh)})")

    def groups(self, tensors: dict[str, Any]) -> None:
        gs = self.m.get("groups")
        if not isinstance(gs, list):
            self.fail("groups", "is missing or not a list")
        seen_t: set[str] = set()
        names: set[str] = set()
        for i, g in enumerate(gs):
            f = f"groups[{i}]"
            if not isinstance(g, dict) or not isinstance(g.get("name"), str) or not isinstance(g.get("tensors"), list):
                self.fail(f, "should be an object with a name and a tensor list")
            if g["name"] in names:
                self.fail(f, f"group {g['name']!r} appears twice")
            names.add(g["name"])
            off, nb = g.get("offset"), g.get("nbytes")
            if not _int(off) or not _int(nb):
                self.fail(f"{f}.offset/nbytes", f"{off!r}/{nb!r} are not byte counts")
            for t in g["tensors"]:
                rec = tensors.get(t) if isinstance(t, str) else None
                if rec is None:
                    self.fail(f"{f}.tensors", f"{t!r} is not a tensor of the manifest")
                if t in seen_t:
                    self.fail(f"{f}.tensors", f"tensor {t!r} is in two groups")
                seen_t.add(t)
                if rec["group"] != g["name"]:
                    self.fail(f"tensors[{t!r}].group", f"{rec['group']!r}, but group {g['name']!r} lists it")
                if rec["offset"] < off or rec["offset"] + rec["nbytes"] > off + nb:
                    self.fail(f"tensors[{t!r}]", f"bytes {rec['offset']}..{rec['offset'] + rec['nbytes']} lie "
                                                 f"outside its group {g['name']!r} ({off}..{off + nb})")
        missing = set(tensors) - seen_t
        if missing:
            self.fail("groups", f"tensor {min(missing)!r} is in no group")

    def decoder(self, tensors: dict[str, Any], cfg: ModelConfig | None) -> None:
        if cfg is None:
            self.fail("model", "is missing")
        want: dict[str, tuple[int, ...]] = {}
        for name, shape in cfg.tensor_shapes().items():
            if ".ffn." in name and tensors.get(ffn_tensor(layer_of(name)), {}).get("layout") == NEURON_BUNDLES:
                if name.endswith(".ffn.gate"):
                    want[ffn_tensor(layer_of(name))] = shape
                continue
            want[name] = shape
        extra = [n for n in tensors if n not in want]
        if extra:
            self.fail(f"tensors[{extra[0]!r}]", "is not a tensor of the model config (names vs model section)")
        missing = [n for n in want if n not in tensors]
        if missing:
            self.fail("tensors", f"tensor {missing[0]!r} of the model config is missing")
        for name, shape in want.items():
            rec = tensors[name]
            if tuple(rec["shape"]) != tuple(shape):
                self.fail(f"tensors[{name!r}].shape", f"{rec['shape']} but the model config implies {list(shape)}")
            grp = ffn_group(layer_of(name)) if rec.get("layout") == NEURON_BUNDLES else group_of(name)
            if rec["group"] != grp:
                self.fail(f"tensors[{name!r}].group", f"{rec['group']!r}, expected {grp!r}")

    def tokenizer(self, tok: Any, cfg: ModelConfig | None) -> None:
        if not isinstance(tok, dict):
            self.fail("tokenizer", "is missing or not an object")
        self.bundle_file("tokenizer.file", tok.get("file"))
        if tok.get("chat_template") is not None:
            self.bundle_file("tokenizer.chat_template", tok["chat_template"])
        for k in ("sha256", "chat_template_sha256"):
            if k in tok and not (isinstance(tok[k], str) and len(tok[k]) == 64):
                self.fail(f"tokenizer.{k}", "is not a SHA-256 hex digest")
        V = cfg.vocab_size if cfg is not None else 1 << 40
        bos = tok.get("bos_token_id")
        if bos is not None and not _int(bos, 0, V - 1):
            self.fail("tokenizer.bos_token_id", f"{bos!r} is not a token id of the vocabulary (0..{V - 1})")
        eos = tok.get("eos_token_ids", [])
        if not isinstance(eos, list) or not all(_int(e, 0, V - 1) for e in eos):
            self.fail("tokenizer.eos_token_ids", f"{eos!r} are not token ids of the vocabulary (0..{V - 1})")
        if "add_bos" in tok and not isinstance(tok["add_bos"], bool):
            self.fail("tokenizer.add_bos", f"{tok['add_bos']!r} is not true/false")
        st = tok.get("special_tokens", {})
        if not isinstance(st, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in st.items()):
            self.fail("tokenizer.special_tokens", "should map names to strings")


def validate_manifest(m: dict[str, Any], bundle_dir: Path, config: ModelConfig | None, where: str) -> None:
    """Check the whole manifest ``m`` of the bundle in ``bundle_dir`` (see the module docstring); ``config`` is
    its parsed (already range-checked) model section. Raises one :class:`BundleError` naming the field."""
    ManifestChecker(m, bundle_dir, config, where).run()


def finite_json(text: str, where: str) -> Any:
    """Parse manifest JSON text refusing NaN/Infinity and over-deep nesting with a :class:`BundleError`."""
    def bad_constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed in a manifest")

    try:
        return json.loads(text, parse_constant=bad_constant)
    except RecursionError:
        raise BundleError(f"{where}: manifest is not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise BundleError(f"{where}: manifest is not valid JSON ({e})") from None


