"""BundleWriter: a state machine that writes a bundle directory and refuses out-of-order calls.

Order: ``BundleWriter(out_dir, ...)`` -> ``add_tensor`` for every tensor in the config's layout order
(:func:`expected_tensors`; ``ffn_layout="bundled"`` stores dense FFNs as row-column neuron bundles, see
:mod:`edgespool.runtime.bundle.ffn_geometry`) ->
``set_tokenizer`` -> ``add_file`` (optional extras, e.g. ONNX) -> ``finish`` (writes manifest.json last and moves the
finished directory into place). Nothing is written into ``out_dir`` until ``finish``; an existing directory is only
replaced when it is itself a bundle and ``overwrite`` is set, so nothing a user owns is lost.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import __version__
from ..errors import BundleError, OptionError
from ..units import pid_alive
from ..runtime.bundle.schemes import QTensor, get_scheme
from ..runtime.bundle.constants import (
    ALIGNMENT, CHAT_TEMPLATE, MAGIC, MANIFEST, MAX_MANIFEST_BYTES, NEURON_BUNDLES_SCHEMA_VERSION, PART_ALIGNMENT,
    SCHEMA_VERSION, TOKENIZER, WEIGHTS, align_up,
)
from ..runtime.bundle.config import ModelConfig
from ..runtime.bundle.manifest_schema import CHECKSUM_KEY, manifest_digest
from ..runtime.bundle.names import group_of, layer_of
from ..runtime.bundle.ffn_geometry import LAYOUT as BUNDLED, BundleGeometry, NeuronBundles, ffn_group, ffn_tensor

FFN_LAYOUTS = ("matrix", "bundled")  # --ffn-layout: dense FFNs as three matrices, or row-column neuron bundles


def expected_tensors(config: ModelConfig, ffn_layout: str = "matrix") -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor a bundle of ``config`` holds, in layout order: the config's canonical tensors,
    with each dense layer's ``ffn.gate/up/down`` replaced by ``ffn.bundles`` ``[I, H]`` when ``ffn_layout`` is
    ``bundled``."""
    out = []
    for name, shape in config.tensor_shapes().items():
        if ffn_layout == "bundled" and ".ffn." in name:
            if name.endswith(".ffn.gate"):
                out.append((ffn_tensor(layer_of(name)), shape))
            continue
        out.append((name, shape))
    return out


def _parts(t: QTensor) -> list[tuple[str, np.ndarray]]:
    out = [("data", np.ascontiguousarray(t.data))]
    if t.scale is not None:
        out.append(("scale", np.ascontiguousarray(t.scale)))
    return out


def is_bundle_dir(path: Path) -> bool:
    """True when ``path`` is a directory whose ``manifest.json`` is a regular file carrying the bundle magic (the
    only kind of directory an export may replace)."""
    m = path / MANIFEST
    try:
        if path.is_symlink() or not path.is_dir() or m.is_symlink() or not m.is_file():
            return False
        if m.stat().st_size > MAX_MANIFEST_BYTES:
            return False
        with open(m, "rb") as f:
            head = f.read(MAX_MANIFEST_BYTES)
        doc = json.loads(head.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("magic") == MAGIC


def check_output_path(out_dir: str | os.PathLike, overwrite: bool, option: str = "-o") -> Path:
    """Refuse, before any work starts, every output that is not a fresh directory or an edgespool bundle:
    the current directory or one of its parents, a symlink, a path under a regular file, a non-empty directory
    without a bundle manifest (magic checked), or an existing bundle without ``overwrite``. Returns the path."""
    out = Path(out_dir)
    if str(out_dir).strip() == "":
        raise OptionError(f"{option}: an empty output path; name a bundle directory")
    try:
        absolute = Path(os.path.abspath(out))
        cwd = Path(os.getcwd())
    except OSError as e:
        raise OptionError(f"{option} {out}: cannot resolve the path ({e.strerror})") from None
    if absolute == cwd or absolute in cwd.parents or absolute == Path(absolute.anchor):
        raise OptionError(f"{option} {out}: is the current directory or one of its parents; name a new "
                          "bundle directory instead")
    if out.is_symlink():
        raise OptionError(f"{option} {out}: is a symbolic link; refusing to write through it (name a real "
                          "directory)")
    for parent in absolute.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OptionError(f"{option} {out}: {parent} is not a directory, so no bundle can be written "
                                  "under it; choose another path")
            break
    if out.exists():
        if not out.is_dir():
            raise OptionError(f"{option} {out}: exists and is not a directory; choose another path")
        try:
            nonempty = any(out.iterdir())
        except OSError as e:
            raise OptionError(f"{option} {out}: cannot list the directory ({e.strerror})") from None
        if nonempty:
            if not is_bundle_dir(out):
                raise OptionError(f"{option} {out}: a non-empty directory that is not a bundle; refusing to overwrite "
                                  f"it (no {MANIFEST} with magic {MAGIC!r}; choose another path)")
            if not overwrite:
                raise OptionError(f"{option} {out}: already holds a bundle; pass --force to replace it")
    return out


def prepare_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to clobber anything that is not a bundle; refuse an existing bundle unless ``overwrite``
    (:func:`check_output_path`)."""
    check_output_path(out_dir, overwrite)


_STAGE_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)$")


def clean_stale_staging(out_dir: Path) -> list[Path]:
    """Remove staging (``.NAME.partial-PID``) and set-aside (``.NAME.old-PID``) folders of ``out_dir`` left by
    exports whose process is gone. A set-aside bundle whose replacement never arrived (``out_dir`` missing) is
    renamed back into place instead of deleted. Returns the paths removed or restored."""
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    done: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return done
    for p in entries:
        m = _STAGE_RE.match(p.name)
        if not m or m["name"] != out_dir.name or p.is_symlink() or not p.is_dir():
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and pid_alive(pid):
            continue
        if m["kind"] == "old" and not out_dir.exists() and is_bundle_dir(p):
            os.replace(p, out_dir)  # the kill came between the two renames: the old bundle is still the bundle
        else:
            shutil.rmtree(p, ignore_errors=True)
        done.append(p)
    return done


class BundleFiles:
    """The one bundle writer under both kinds (decoder and CNN): a hidden staging directory beside ``out_dir``,
    ``weights.bin`` written tensor record by tensor record (CRC32 per record), extra files, and :meth:`publish`,
    which writes manifest.json last and moves the finished directory into place. Nothing is written into
    ``out_dir`` before that; an existing directory is only replaced when it is itself a bundle and ``overwrite``
    is set (:func:`prepare_output_dir`)."""

    def __init__(self, out_dir: str | os.PathLike, overwrite: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.overwrite = overwrite
        prepare_output_dir(self.out_dir, overwrite)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(self.out_dir)
        self.stage = self.out_dir.parent / f".{self.out_dir.name}.partial-{os.getpid()}"
        if self.stage.exists():
            shutil.rmtree(self.stage)
        self.stage.mkdir(parents=True)
        self._f = open(self.stage / WEIGHTS, "wb")
        self.pos = 0
        self.tensors: dict[str, dict[str, Any]] = {}
        self.published = False

    def write_tensor(self, name: str, group: str, scheme: str, shape: tuple[int, ...],
                     parts: list[tuple[str, np.ndarray]], align: int = ALIGNMENT, **extra: Any) -> dict[str, Any]:
        """Append one tensor record (its ``parts`` each :data:`PART_ALIGNMENT`-aligned inside the record, the
        record ``align``-aligned in the file) and return the record (also kept in :attr:`tensors`)."""
        if self._f.closed:
            raise BundleError(f"write_tensor({name!r}) after the weights file was closed")
        start = align_up(self.pos, align)
        self._pad_to(start)
        crc = 0
        recs: dict[str, Any] = {}
        for pname, arr in parts:
            rel = align_up(self.pos - start, PART_ALIGNMENT)
            self._pad_to(start + rel)
            buf = memoryview(np.ascontiguousarray(arr)).cast("B")  # no copy of a contiguous (mapped) array
            self._f.write(buf)
            self.pos += buf.nbytes
            crc = zlib.crc32(buf, crc)
            recs[pname] = {"offset": rel, "nbytes": buf.nbytes, "dtype": arr.dtype.name, "shape": list(arr.shape)}
        rec = {"group": group, "scheme": scheme, "shape": list(shape), "offset": start, "nbytes": self.pos - start,
               "crc32": crc, "parts": recs, **extra}
        self.tensors[name] = rec
        return rec

    def _pad_to(self, pos: int) -> None:
        if pos > self.pos:
            self._f.write(b"\0" * (pos - self.pos))
            self.pos = pos

    def close_weights(self, align: int = ALIGNMENT) -> int:
        """Pad and close weights.bin; returns its size."""
        if not self._f.closed:
            self._pad_to(align_up(self.pos, align))
            self._f.close()
        return self.pos

    def stage_path(self, rel: str) -> Path:
        """Path inside the staging directory where an extra file (tokenizer, ONNX, kernels) may be written."""
        if self.published:
            raise BundleError("stage_path() after the bundle was published")
        p = self.stage / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def publish(self, manifest: dict[str, Any]) -> Path:
        """Write manifest.json (magic and schema first) and move the staged bundle to ``out_dir``."""
        self.close_weights()
        manifest = {**manifest, CHECKSUM_KEY: manifest_digest(manifest)}  # the manifest covered by a checksum
        (self.stage / MANIFEST).write_text(json.dumps(manifest, indent=1, allow_nan=False), encoding="utf-8")
        # re-checked now: the output may have changed while the export ran (a user's folder is never replaced)
        prepare_output_dir(self.out_dir, self.overwrite)
        aside = None
        if self.out_dir.exists():
            # rename the old bundle aside, the new one in, then delete the old: a kill at any point leaves a bundle
            aside = self.out_dir.parent / f".{self.out_dir.name}.old-{os.getpid()}"
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(self.out_dir, aside)
        try:
            os.replace(self.stage, self.out_dir)
        except OSError:
            if aside is not None:
                os.replace(aside, self.out_dir)
            raise
        self.published = True
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return self.out_dir

    def abort(self) -> None:
        """Remove the staging directory (an export that failed half-way leaves nothing)."""
        try:
            self._f.close()
        except Exception:
            pass
        shutil.rmtree(self.stage, ignore_errors=True)
        self.published = True


class BundleWriter:
    """Writes tensors in layout order into a staging directory, then publishes it atomically on :meth:`finish`."""

    def __init__(self, out_dir: str | os.PathLike, config: ModelConfig, *, overwrite: bool = False,
                 meta: dict[str, Any] | None = None, ffn_layout: str = "matrix") -> None:
        if ffn_layout not in FFN_LAYOUTS:
            raise OptionError(f"FFN layout {ffn_layout!r} is unknown; valid: {', '.join(FFN_LAYOUTS)}")
        self.files = BundleFiles(out_dir, overwrite)
        self.out_dir, self.stage = self.files.out_dir, self.files.stage
        self.ffn_layout = ffn_layout
        self.config = config
        self.meta = dict(meta or {})
        self._expected = expected_tensors(config, ffn_layout)
        self._next = 0
        self.tensors = self.files.tensors
        self.groups: dict[str, dict[str, Any]] = {}
        self._tokenizer: dict[str, Any] | None = None
        self._extras: dict[str, Any] = {}
        self._state = "tensors"

    # -- tensors ----------------------------------------------------------------------------------------------
    def expected_names(self) -> list[str]:
        """All tensor names still to be written, in order."""
        return [n for n, _ in self._expected[self._next:]]

    def add_tensor(self, name: str, t: QTensor | NeuronBundles) -> None:
        """Append tensor ``name``; it must be the next one in layout order and have the config's shape (with
        ``ffn_layout="bundled"`` each dense layer's FFN is one :class:`NeuronBundles` ``layers.{i}.ffn.bundles``
        in place of ``ffn.gate/up/down``)."""
        if self._state != "tensors":
            raise BundleError(f"add_tensor({name!r}) after the tensor table was closed")
        if self._next >= len(self._expected):
            raise BundleError(f"add_tensor({name!r}): the model has no more tensors")
        want, shape = self._expected[self._next]
        if name != want:
            raise BundleError(f"add_tensor: expected tensor {want!r} next, got {name!r}")
        if tuple(t.shape) != tuple(shape):
            raise BundleError(f"tensor {name!r}: shape {tuple(t.shape)} does not match the config's {tuple(shape)}")
        self._next += 1
        bundled = isinstance(t, NeuronBundles)
        if bundled != name.endswith(".ffn.bundles"):
            raise BundleError(f"tensor {name!r}: {'neuron bundles' if bundled else 'a matrix'} given, expected "
                              f"{'a matrix' if bundled else 'neuron bundles'}")
        g = ffn_group(layer_of(name)) if bundled else group_of(name)
        extra: dict[str, Any] = {"layout": BUNDLED, "bundle": t.geometry.to_dict()} if bundled else {}
        if get_scheme(t.scheme).group_size(t.group_size):
            extra["group_size"] = t.group_size
        rec = self.files.write_tensor(name, g, t.scheme, tuple(t.shape), _parts(t), **extra)
        start = rec["offset"]
        self._pos = self.files.pos
        grp = self.groups.get(g)
        if grp is None:
            self.groups[g] = {"name": g, "offset": start, "nbytes": self._pos - start, "tensors": [name]}
        else:
            if list(self.groups)[-1] != g:
                raise BundleError(f"tensor {name!r}: group {g!r} would not be contiguous in the weights file")
            grp["nbytes"] = self._pos - grp["offset"]
            grp["tensors"].append(name)

    # -- other files ------------------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer_json: str, *, bos_token_id: int | None, eos_token_ids: list[int],
                      add_bos: bool, chat_template: str | None = None,
                      special_tokens: Mapping[str, str] | None = None) -> None:
        """Store the tokenizer (HF `tokenizers` JSON text) and its special-token settings; ``chat_template`` (the
        model's Jinja chat template) goes to its own file, named by the section's ``chat_template``, and
        ``special_tokens`` (``{"bos_token": "<s>", ...}``, the texts chat templates read) into the section."""
        self._close_tensors()
        raw = tokenizer_json.encode("utf-8")
        self.files.stage_path(TOKENIZER).write_bytes(raw)
        self._tokenizer = {"file": TOKENIZER, "sha256": hashlib.sha256(raw).hexdigest(), "bos_token_id": bos_token_id,
                           "eos_token_ids": list(eos_token_ids), "add_bos": bool(add_bos)}
        if special_tokens:
            self._tokenizer["special_tokens"] = {str(k): str(v) for k, v in special_tokens.items()}
        if chat_template is not None:
            # bytes as given: newline translation would change what the template renders
            tb = chat_template.encode("utf-8")
            self.files.stage_path(CHAT_TEMPLATE).write_bytes(tb)
            self._tokenizer["chat_template"] = CHAT_TEMPLATE
            self._tokenizer["chat_template_sha256"] = hashlib.sha256(tb).hexdigest()

    def stage_path(self, rel: str) -> Path:
        """Path inside the staging directory where an extra file (ONNX, kernels) may be written."""
        if self._state == "done":
            raise BundleError("stage_path() after finish()")
        return self.files.stage_path(rel)

    def read_back(self, name: str) -> QTensor | NeuronBundles:
        """Read a written tensor back from the staged weights file (for lowerings that run after the weights,
        e.g. ONNX). Only valid once every tensor has been added."""
        self._close_tensors()
        rec = self.tensors[name]
        if not hasattr(self, "_mm"):
            self._mm = np.memmap(self.stage / WEIGHTS, dtype=np.uint8, mode="r")
        base = int(rec["offset"])
        raw = self._mm[base: base + int(rec["nbytes"])]
        arrays = {p: np.asarray(raw[int(m["offset"]): int(m["offset"]) + int(m["nbytes"])]).view(m["dtype"])
                  .reshape(m["shape"]) for p, m in rec["parts"].items()}
        if rec.get("layout") == BUNDLED:
            return NeuronBundles(BundleGeometry.from_record(name, rec), arrays["data"])
        return QTensor(rec["scheme"], tuple(rec["shape"]), arrays["data"], arrays.get("scale"),
                       int(rec.get("group_size", 0)))

    def add_section(self, key: str, value: Any) -> None:
        """Add a manifest section (e.g. ``onnx``, ``kernels``, ``report``)."""
        if key in ("magic", "schema_version", "tensors", "groups", "model", "tokenizer", "weights"):
            raise BundleError(f"manifest section {key!r} is reserved")
        self._extras[key] = value

    def _close_tensors(self) -> None:
        if self._state != "tensors":
            return
        if self._next != len(self._expected):
            raise BundleError(f"bundle is missing tensors, next expected {self._expected[self._next][0]!r}")
        self._pos = self.files.close_weights()
        self._state = "files"

    def finish(self) -> Path:
        """Write manifest.json and publish the bundle at ``out_dir``; returns its path."""
        self._close_tensors()
        if self._tokenizer is None:
            raise BundleError("finish() before set_tokenizer(): a bundle needs its tokenizer")
        bundled = any(r.get("layout") == BUNDLED for r in self.tensors.values())
        manifest = {
            "magic": MAGIC,
            # version 1 readers would read neuron bundles as a matrix: only bundles that hold them say 2
            "schema_version": NEURON_BUNDLES_SCHEMA_VERSION if bundled else SCHEMA_VERSION,
            "created_by": f"edgespool {__version__}",
            "kind": "decoder",
            "model": self.config.to_dict(),
            **self.meta,
            "weights": {"file": WEIGHTS, "nbytes": self._pos, "alignment": ALIGNMENT},
            **({"ffn_layout": "bundled"} if bundled else {}),
            "tokenizer": self._tokenizer,
            "groups": list(self.groups.values()),
            "tensors": self.tensors,
            **self._extras,
        }
        if hasattr(self, "_mm"):
            del self._mm
        self.files.publish(manifest)
        self._state = "done"
        return self.out_dir

    def abort(self) -> None:
        """Remove the staging directory (used when an export fails half-way)."""
        self.files.abort()
        self._state = "done"
