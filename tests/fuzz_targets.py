"""Mutation fuzz targets shared by the CI campaign (tests/test_hardening_fuzz.py) and the long one
(benchmarks/fuzz_campaign.py). Each target makes a seed input, mutates it deterministically from an integer, runs
the edgespool code path on it in a forked child (:func:`fuzz_harness.run_bounded`: 2 GiB more address space, a
time limit) and judges an accepted input against the unmutated seed's output or an independent reference.

Targets and judges:

- ``gguf_reader``: the GGUF header parser on aimed number rewrites (every count, length, type id, dimension, tensor
  offset and scalar value is a slot), bit flips, truncations and splices of the header. Accepted inputs are
  compared with gguf-py's ``GGUFReader`` (the reference parser) field by field and tensor by tensor:
  ``accepted-identical`` (same as the seed's parse), ``accepted-reference`` (differs from the seed exactly as
  gguf-py reads the mutated file), ``accepted-wrong`` otherwise.
- ``gguf_model``: the same mutations through ``open_gguf_model`` + config + tokenizer + tensor reads. Accepted
  inputs whose output differs from the seed's are re-run on gguf-py's reader (``accepted-reference`` when the
  pipeline gives the same config, tokenizer and tensors from it).
- ``manifest``: JSON-level mutations of a bundle's manifest.json (a value replaced by one of another type or out
  of range, a key removed or added, NaN, paths outside the bundle, /dev/zero, a FIFO). The child opens the bundle
  and reads every group with CRC checks; an accepted bundle must give the seed's config, tokenizer section and
  tensors (``accepted-identical``), or be refused by ``Bundle.verify`` (the manifest checksum; counted as
  ``clean`` and as ``caught_by_checksum``); anything else is ``accepted-wrong``.
- ``hf``: config.json value mutations and safetensors header mutations through ``open_hf`` + every canonical
  tensor. An accepted input that differs from the seed is ``accepted-reference`` when its tensors equal what the
  ``safetensors`` library reads from the mutated file and its config fields equal the mutated config.json's.
- ``tokenizer``: JSON-level and byte mutations of a bundle's tokenizer.json through ``BundleTokenizer`` (load,
  encode, decode, stream): the file is covered by the manifest's ``tokenizer.sha256``, so every edit must be
  refused (``accepted-identical`` only for a no-op mutation, ``accepted-different`` is a failure).
- ``onnx_cnn``: attribute, initializer-dims, input-shape, operator, wiring and byte mutations of a tiny ONNX CNN
  through ``load_onnx_cnn`` and the executor. An accepted model that differs from the seed is
  ``accepted-reference`` when onnxruntime (or, where ORT refuses to load it, onnx's ReferenceEvaluator) runs
  the mutated model to the same output (atol 1e-4, rtol 1e-5).
- ``cli``: random argument vectors for ``run``/``bench``/``export``/``inspect``/``plan`` (out-of-range numbers,
  negative seeds, huge token counts, invalid UTF-8, paths under files, missing folders). ``clean`` is exit 1 with
  one ``error:`` line that is not ``internal error`` or a usage error (exit 2); ``accepted-ran`` is exit 0.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fuzz_harness import Outcome, run_bounded
from fuzz_inputs import gguf_layout, write_tiny_hf_llama, write_tiny_llama_gguf

INTERESTING = [0, 1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 255, 256, 4095, 4096, 2**15, 2**16 - 1, 2**31 - 1, 2**31,
               2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


def _h(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()


def _arr_h(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()


# -- GGUF ----------------------------------------------------------------------------------------------------------
def mutate_gguf(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One mutation of a GGUF file's header (the tensor data is not checksummed by the format: header only)."""
    lay = gguf_layout(raw)
    op = rng.choice(["slot", "slot", "slot", "flip", "trunc", "splice", "type"])
    b = bytearray(raw)
    if op in ("slot", "type"):
        slots = [s for s in lay.slots if (op == "type") == s[2].startswith(("type", "etype", "ttype"))]
        off, fmt, what = rng.choice(slots)
        size = struct.calcsize(fmt)
        if fmt in ("<f", "<d"):
            v = rng.choice([float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e38, -0.0, 1e-45])
            struct.pack_into(fmt, b, off, v)
            return bytes(b), f"{what}={v}"
        old = int.from_bytes(raw[off:off + size], "little")
        cands = [v for v in INTERESTING if v < 256 ** size] + [old + 1, max(old - 1, 0), old * 2 % 256 ** size,
                                                              rng.randrange(256 ** size)]
        if op == "type":
            cands = list(range(16)) + [2**31, 2**32 - 1]
        v = rng.choice(cands) % (256 ** size)
        b[off:off + size] = v.to_bytes(size, "little")
        return bytes(b), f"{what}={v}"
    if op == "flip":
        pos = rng.randrange(lay.data_start)
        b[pos] ^= 1 << rng.randrange(8)
        return bytes(b), f"flip@{pos}"
    if op == "trunc":
        n = rng.randrange(len(raw))
        return bytes(b[:n]), f"trunc@{n}"
    pos = rng.randrange(lay.data_start)
    if rng.random() < 0.5:
        n = rng.randrange(1, 64)
        return bytes(b[:pos] + b[pos + n:]), f"delete {n}@{pos}"
    ins = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 32)))
    return bytes(b[:pos] + ins + b[pos:]), f"insert {len(ins)}@{pos}"


def _reader_digest(r: Any) -> str:
    fields = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        v = f.contents()
        fields[k] = ([int(t) for t in f.types], v if not isinstance(v, float) else repr(v))
    tensors = [(t.name, int(t.tensor_type), [int(x) for x in t.shape], int(t.data_offset), int(t.n_bytes),
                _arr_h(t.data)) for t in r.tensors]
    return _h([fields, tensors])


def gguf_reader_run(path: Path) -> list[str | None]:
    from edgespool.exporters.gguf_reader import GGUFReaderLite

    ours = _reader_digest(GGUFReaderLite(path))
    try:
        import gguf

        ref = _reader_digest(gguf.GGUFReader(str(path)))
    except Exception:  # noqa: BLE001 - the reference refusing is an answer too
        ref = None
    return [ours, ref]


def _model_digest(m: Any) -> str:
    tok = m.tokenizer()
    tens = {n: _arr_h(m.tensor(n)) for n in m.config.tensor_shapes()}
    return _h([m.config.to_dict(), tok.json, tok.bos_token_id, list(tok.eos_token_ids), tok.add_bos, tens])


def gguf_model_run(path: Path) -> list[str | None]:
    from edgespool.exporters import gguf_source

    m = gguf_source.open_gguf_model(path)
    ours = _model_digest(m)
    m.close()
    return [ours, None]


def gguf_model_reference(path: Path) -> str | None:
    """The same pipeline on gguf-py's reader (run in a child of its own)."""
    import gguf
    from edgespool.exporters import gguf_source

    gguf_source._open_reader = lambda p: gguf.GGUFReader(str(p))  # the child's copy only
    return _model_digest(gguf_source.open_gguf_model(path))


# -- manifest ------------------------------------------------------------------------------------------------------
def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:6]):
            out += _paths(v, prefix + (i,))
    return out


def _random_value(rng: random.Random, old: Any) -> Any:
    pool: list[Callable[[], Any]] = [
        lambda: None, lambda: True, lambda: rng.choice(INTERESTING), lambda: -rng.choice(INTERESTING[1:]),
        lambda: rng.choice([0.0, -1.0, 1e308, 1e-300, 0.5]), lambda: "NaN!", lambda: "",
        lambda: rng.choice(["/dev/zero", "../../etc/passwd", "/etc/hostname", "fifo", "sub/../../x", "weights.bin",
                            "tokenizer.json", "manifest.json", "f16", "int4", "q4_0", "uint8", "float64"]),
        list, dict, lambda: [1, 2, 3], lambda: {"a": 1}, lambda: [[[[[]]]]],
    ]
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        pool += [lambda: old + 1, lambda: old - 1, lambda: old * 2, lambda: -old, lambda: float(old) + 0.5]
    if isinstance(old, list) and old:
        pool += [lambda: old[:-1], lambda: old + old[-1:], lambda: list(reversed(old))]
    return rng.choice(pool)()


NAN_SENTINEL = "__fuzz_nan__"


def mutate_manifest(m: dict[str, Any], rng: random.Random) -> tuple[dict[str, Any], str]:
    m = copy.deepcopy(m)
    path = rng.choice(_paths(m)[1:])
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    op = rng.choice(["replace", "replace", "replace", "delete", "add", "nan"])
    if op == "delete" and isinstance(parent, dict):
        del parent[key]
    elif op == "add" and isinstance(parent, dict):
        parent[rng.choice(["extra", "layout", "group_size", "file", "scale", "kind"])] = _random_value(rng, None)
    elif op == "nan":
        parent[key] = NAN_SENTINEL
    else:
        parent[key] = _random_value(rng, parent[key])
    return m, f"{op} {'/'.join(map(str, path))}"


def _bundle_digest(d: Path) -> str:
    from edgespool.runtime.bundle.reader import Bundle

    b = Bundle(d)
    tens = {}
    for g in b.iter_groups():
        for n, t in b.read_group(g, verify=True).items():
            tens[n] = _arr_h(t.dequantize() if hasattr(t, "dequantize") else np.asarray(t.data))
    tok = dict(b.manifest.get("tokenizer", {}))
    text = (d / tok["file"]).read_text(encoding="utf-8") if isinstance(tok.get("file"), str) else None
    return _h([b.config.to_dict() if b.config else None, tok, text, tens])


def manifest_run(d: Path) -> list[Any]:
    from edgespool.errors import BundleError
    from edgespool.runtime.bundle.reader import Bundle

    ours = _bundle_digest(d)
    try:
        Bundle(d).verify_manifest()
        caught = False
    except BundleError:
        caught = True
    return [ours, caught]


# -- HF ------------------------------------------------------------------------------------------------------------
HF_FIELDS = {"num_hidden_layers": "num_layers", "hidden_size": "hidden_size", "vocab_size": "vocab_size",
             "intermediate_size": "intermediate_size", "num_attention_heads": "num_heads",
             "num_key_value_heads": "num_kv_heads", "rms_norm_eps": "rms_norm_eps", "rope_theta": "rope_theta",
             "max_position_embeddings": "max_position_embeddings", "bos_token_id": "bos_token_id"}


def hf_run(d: Path) -> list[Any]:
    from edgespool.exporters.hf import open_hf

    m = open_hf(d)
    tens = {n: _arr_h(np.asarray(m.tensor(n), np.float32)) for n in m.config.tensor_shapes()}
    cfg = m.config.to_dict()
    ours = _h([cfg, tens])
    # the reference: the safetensors library's own reading of the file, and config.json's values
    from safetensors.numpy import load_file

    ref = load_file(str(d / "model.safetensors"))
    ok = all(_arr_h(np.asarray(ref[k], np.float32)) == _arr_h(np.asarray(m._read(k), np.float32))
             for k in ref)
    c = json.loads((d / "config.json").read_text())
    ok = ok and all(c[k] == cfg[v] for k, v in HF_FIELDS.items() if k in c)
    return [ours, ok]


def mutate_hf(d: Path, rng: random.Random) -> str:
    if rng.random() < 0.5:
        c = json.loads((d / "config.json").read_text())
        c2, what = mutate_manifest(c, rng)
        (d / "config.json").write_text(_dumps(c2))
        return "config " + what
    st = d / "model.safetensors"
    raw = st.read_bytes()
    n = struct.unpack_from("<Q", raw)[0]
    if rng.random() < 0.6:
        h = json.loads(raw[8:8 + n])
        h2, what = mutate_manifest(h, rng)
        hb = _dumps(h2).encode()
        st.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
        return "header " + what
    b = bytearray(raw)
    pos = rng.randrange(8 + n)
    b[pos] ^= 1 << rng.randrange(8)
    st.write_bytes(bytes(b))
    return f"header flip@{pos}"


def _dumps(obj: Any) -> str:
    return json.dumps(obj).replace(f'"{NAN_SENTINEL}"', "NaN")


# -- tokenizer -----------------------------------------------------------------------------------------------------
TOKENIZER_TEXT = "Once upon a time, \u00e9t\u00e9 \u65e5\u672c 123 <s> tokens\n\tand more"


def tokenizer_run(d: Path) -> list[Any]:
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.runtime.decoder.tokenizer import BundleTokenizer

    b = Bundle(d)
    tok = BundleTokenizer.from_manifest(b.path, b.manifest["tokenizer"])
    ids = tok.encode(TOKENIZER_TEXT)
    return [_h([ids, tok.decode(ids), list(tok.stream(ids))]), None]


def mutate_tokenizer(text: str, rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.8:
        t, what = mutate_manifest(json.loads(text), rng)
        return _dumps(t), what
    b = bytearray(text.encode())
    pos = rng.randrange(len(b))
    b[pos] = rng.randrange(256)
    return b.decode("utf-8", errors="surrogateescape").encode("utf-8", "surrogateescape").decode(
        "utf-8", errors="replace"), f"byte@{pos}"


# -- ONNX CNN ------------------------------------------------------------------------------------------------------
def write_tiny_onnx_cnn(path: Path, seed: int = 0) -> Path:
    """Conv(3->8, 3x3, pad 1) + Relu -> Conv(8->8, 3x3, stride 2, depthwise) + Clip -> GlobalAveragePool ->
    Flatten -> Gemm(8->5): a tiny classifier written with onnx.helper (no torch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> Any:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2],
                         group=8, name="dw"),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="clip"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flat"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc"),
    ]
    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 8, 1, 3, 3), init("w3", 5, 8), init("b3", 5),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def mutate_onnx(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    import onnx

    if rng.random() < 0.3:
        b = bytearray(raw)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b), "bytes"
    m = onnx.load_from_string(raw)
    g = m.graph
    op = rng.choice(["attr", "attr", "dims", "input_dim", "op", "drop_init", "rewire"])
    vals = [0, 1, 2, 3, -1, 7, 64, 2**31 - 1, -(2**31), 2**40]
    if op == "attr":
        n = rng.choice([n for n in g.node if n.attribute])
        a = rng.choice(n.attribute)
        if a.ints:
            a.ints[rng.randrange(len(a.ints))] = rng.choice(vals)
        else:
            a.i = rng.choice(vals)
        what = f"{n.name}.{a.name}"
    elif op == "dims":
        t = rng.choice(list(g.initializer))
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] = rng.choice([v for v in vals if v >= 0])
        what = f"init {t.name} dims"
    elif op == "input_dim":
        d = g.input[0].type.tensor_type.shape.dim[rng.randrange(4)]
        d.dim_value = rng.choice([v for v in vals if v >= 0])
        what = "input dim"
    elif op == "op":
        n = rng.choice(list(g.node))
        n.op_type = rng.choice(["Conv", "Relu", "Gemm", "MaxPool", "Add", "Concat", "Reshape", "Softmax"])
        what = f"{n.name} op->{n.op_type}"
    elif op == "drop_init":
        t = rng.choice(list(g.initializer))
        g.initializer.remove(t)
        what = f"drop {t.name}"
    else:
        n = rng.choice(list(g.node))
        j = rng.randrange(len(n.input))
        n.input[j] = rng.choice(["x", "c1", "r1", "c2", "g", "f", "y", "w1", "nope"])
        what = f"{n.name}.input[{j}]->{n.input[j]}"
    return m.SerializeToString(), what


ONNX_X = np.random.default_rng(7).standard_normal((3, 12, 10)).astype(np.float32)


def onnx_run(path: Path) -> list[Any]:
    from edgespool.exporters.cnn.from_onnx import load_onnx_cnn
    from edgespool.runtime.cnn.executor import CnnRunner

    g = load_onnx_cnn(path)
    x = ONNX_X
    if tuple(g.input_shape) != x.shape:
        x = np.random.default_rng(7).standard_normal(g.input_shape).astype(np.float32)
    out = np.asarray(CnnRunner(g).run_layers(x).output, np.float32)
    try:
        import onnxruntime as ort

        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ref = np.asarray(s.run(None, {s.get_inputs()[0].name: x[None]})[0][0], np.float32)
    except Exception:  # noqa: BLE001 - ORT refusing: ask onnx's own reference evaluator
        try:
            import onnx
            from onnx.reference import ReferenceEvaluator

            ev = ReferenceEvaluator(onnx.load(str(path)))
            ref = np.asarray(ev.run(None, {ev.input_names[0]: x[None]})[0][0], np.float32)
        except Exception:  # noqa: BLE001 - both references refuse a model edgespool ran
            return [_arr_h(out), None]
    agree = bool(ref.shape == out.shape and np.allclose(out, ref, rtol=1e-5, atol=1e-4, equal_nan=True))
    return [_arr_h(out), agree]


# -- CLI -----------------------------------------------------------------------------------------------------------
def cli_argv(rng: random.Random, bundle: Path, scratch: Path) -> list[str]:
    afile = scratch / "afile"
    nums = ["-1", "0", "1", "2", "8", "256", "100000", str(2**31), str(2**62), str(2**64), "-9999999999", "1e9",
            "nan", "abc", ""]
    cmd = rng.choice(["run", "run", "bench", "inspect", "export", "plan"])
    if cmd == "run":
        opts = {"-n": nums, "--seed": nums, "--prompt": ["hi", "", "\udcff\udcfe", "x" * 5000, "a b " * 3000],
                "-t": ["-1", "0", "nan", "inf", "2"], "--top-k": nums, "--max-context": nums,
                "--memory-budget": ["0", "1", "1KiB", "9MiB", "64MiB", "-5MiB", "lots", "1PiB"]}
    elif cmd == "bench":
        opts = {"--prompt-tokens": nums, "-n": nums, "--json-out": [str(scratch / "no" / "dir" / "x.json"),
                                                                     str(afile / "x.json"), "/dev/full"],
                "--memory-budget": ["0", "1KiB", "64MiB", "x"]}
    elif cmd == "inspect":
        opts = {"--verify": [None], "--json": [None]}
    elif cmd == "plan":
        opts = {"--memory-budget": ["0", "1", "1KiB", "64MiB", "-1", "x", str(2**70)]}
    else:
        opts = {"-o": [".", str(afile / "b"), str(scratch / "link"), str(scratch / "new"), ""],
                "--group-size": nums, "-q": ["int4", "int8", "bogus"]}
    argv = [cmd] + ([str(bundle)] if cmd != "export" else [rng.choice([str(bundle), str(afile), "missing.gguf"])])
    for k in rng.sample(sorted(opts), rng.randrange(1, len(opts) + 1)):
        v = rng.choice(opts[k])
        argv += [k] if v is None else [k, v]
    return argv


def cli_run(argv: list[str]) -> list[Any]:
    from click.testing import CliRunner
    from edgespool.apps.cli import cli

    r = CliRunner().invoke(cli, argv, catch_exceptions=True)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    out = r.output.strip().splitlines()
    err = [ln for ln in out if ln.startswith("error:")]
    return [r.exit_code, err[-1][:300] if err else (out[-1][:300] if out else "")]


# -- campaign ------------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    counts: dict[str, int] = field(default_factory=dict)
    caught_by_checksum: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, cls: str, what: str) -> None:
        self.counts[cls] = self.counts.get(cls, 0) + 1
        if cls not in ("clean", "accepted-identical", "accepted-reference", "accepted-ran"):
            self.examples.setdefault(cls, [])
            if len(self.examples[cls]) < 8:
                self.examples[cls].append(what)

    @property
    def bad(self) -> int:
        return sum(v for k, v in self.counts.items()
                   if k not in ("clean", "accepted-identical", "accepted-reference", "accepted-ran"))


class Campaign:
    """Seeds in ``work`` (made once), then :meth:`one` runs input number ``i`` of a target."""

    def __init__(self, work: Path, timeout_s: float = 30.0) -> None:
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout_s
        self.gguf_seed = write_tiny_llama_gguf(self.work / "seed.gguf").read_bytes()
        self._gguf_ref: dict[str, str] = {}
        self.hf_seed = write_tiny_hf_llama(self.work / "seed_hf")
        self.bundle_seed = self.work / "seed_bundle"
        if not (self.bundle_seed / "manifest.json").exists():
            from conftest import make_synth_bundle

            make_synth_bundle(self.bundle_seed, quant="int8")
        self.manifest_seed = json.loads((self.bundle_seed / "manifest.json").read_text())
        self.cli_scratch = self.work / "cli"
        self.cli_scratch.mkdir(exist_ok=True)
        (self.cli_scratch / "afile").write_text("x")
        if not (self.cli_scratch / "link").is_symlink():
            (self.cli_scratch / "link").symlink_to(self.bundle_seed)
        self.seed_digest: dict[str, Any] = {}
        self.tokenizer_seed = (self.bundle_seed / "tokenizer.json").read_text(encoding="utf-8")
        self.onnx_seed = write_tiny_onnx_cnn(self.work / "seed.onnx").read_bytes()
        for target in ("gguf_reader", "gguf_model", "hf", "manifest", "tokenizer", "onnx_cnn"):
            out = self._run_seed(target)
            if out.cls != "accepted":
                raise RuntimeError(f"seed of {target} not accepted: {out.cls} {out.detail}")
            self.seed_digest[target] = out.value[0]

    def _run_seed(self, target: str) -> Outcome:
        p = self.work / "seed.gguf"
        fn = {"gguf_reader": lambda: gguf_reader_run(p), "gguf_model": lambda: gguf_model_run(p),
              "hf": lambda: hf_run(self.hf_seed), "manifest": lambda: manifest_run(self.bundle_seed),
              "tokenizer": lambda: tokenizer_run(self.bundle_seed),
              "onnx_cnn": lambda: onnx_run(self.work / "seed.onnx")}[target]
        return run_bounded(fn, self.timeout)

    def one(self, target: str, i: int, tally: Tally) -> str:
        rng = random.Random(f"{target}:{i}")
        case = self.work / f"case-{os.getpid()}"
        if case.exists() or case.is_symlink():
            shutil.rmtree(case) if case.is_dir() and not case.is_symlink() else case.unlink()
        if target in ("gguf_reader", "gguf_model"):
            raw, what = mutate_gguf(self.gguf_seed, rng)
            case.mkdir()
            p = case / "m.gguf"
            p.write_bytes(raw)
            fn = (lambda: gguf_reader_run(p)) if target == "gguf_reader" else (lambda: gguf_model_run(p))
            out = run_bounded(fn, self.timeout)
            cls = out.cls
            if cls == "accepted":
                ours, ref = out.value
                if ours == self.seed_digest[target]:
                    cls = "accepted-identical"
                elif target == "gguf_reader":
                    cls = "accepted-reference" if ours == ref else "accepted-wrong"
                else:
                    r2 = run_bounded(lambda: gguf_model_reference(p), self.timeout)
                    cls = "accepted-reference" if r2.cls == "accepted" and r2.value == ours else "accepted-wrong"
        elif target == "manifest":
            case.mkdir()
            for f in self.bundle_seed.iterdir():
                if f.name != "manifest.json" and f.is_file():
                    os.link(f, case / f.name)
            os.mkfifo(case / "fifo")
            m, what = mutate_manifest(self.manifest_seed, rng)
            (case / "manifest.json").write_text(_dumps(m))
            out = run_bounded(lambda: manifest_run(case), self.timeout)
            cls = out.cls
            if cls == "accepted":
                ours, caught = out.value
                if ours == self.seed_digest["manifest"]:
                    cls = "accepted-identical"
                elif caught:
                    cls = "clean"
                    tally.caught_by_checksum += 1
                else:
                    cls = "accepted-wrong"
        elif target == "tokenizer":
            case.mkdir()
            for f in self.bundle_seed.iterdir():
                if f.name != "tokenizer.json" and f.is_file():
                    os.link(f, case / f.name)
            text, what = mutate_tokenizer(self.tokenizer_seed, rng)
            (case / "tokenizer.json").write_text(text, encoding="utf-8")
            out = run_bounded(lambda: tokenizer_run(case), self.timeout)
            cls = out.cls
            if cls == "accepted":
                # a tokenizer.json edit that still loads is a different tokenizer, not a lie: the bundle's
                # manifest checksum does not cover tokenizer.json, so judge only "same as the seed" here
                cls = "accepted-identical" if out.value[0] == self.seed_digest["tokenizer"] else "accepted-different"
        elif target == "onnx_cnn":
            case.mkdir()
            raw, what = mutate_onnx(self.onnx_seed, rng)
            p = case / "m.onnx"
            p.write_bytes(raw)
            out = run_bounded(lambda: onnx_run(p), self.timeout)
            cls = out.cls
            if cls == "accepted":
                ours, agree = out.value
                cls = ("accepted-identical" if ours == self.seed_digest["onnx_cnn"] else
                       "accepted-reference" if agree else "accepted-wrong")
        elif target == "hf":
            shutil.copytree(self.hf_seed, case)
            what = mutate_hf(case, rng)
            out = run_bounded(lambda: hf_run(case), self.timeout)
            cls = out.cls
            if cls == "accepted":
                ours, ok = out.value
                cls = ("accepted-identical" if ours == self.seed_digest["hf"] else
                       "accepted-reference" if ok else "accepted-wrong")
        elif target == "cli":
            argv = cli_argv(rng, self.bundle_seed, self.cli_scratch)
            what = " ".join(a.encode("utf-8", "backslashreplace").decode()[:40] for a in argv)
            out = run_bounded(lambda: cli_run(argv), self.timeout)
            cls = out.cls
            if cls == "accepted":
                code, line = out.value
                if code == 0:
                    cls = "accepted-ran"
                elif code == 2 or (code == 1 and line.startswith("error:") and "internal error" not in line):
                    cls = "clean"
                else:
                    cls = "other-exception"
                    out.detail = f"exit {code}: {line}"
        else:
            raise ValueError(target)
        tally.add(cls, f"{what} -> {out.detail[:240]}")
        shutil.rmtree(case, ignore_errors=True)
        return cls


TARGETS = ("gguf_reader", "gguf_model", "manifest", "hf", "tokenizer", "onnx_cnn", "cli")
