"""exporters/gguf_reader.py (the bounded GGUF reader) against gguf-py's GGUFReader, on real and synthetic files,
and on malformed headers (each a quick ModelFormatError under a 1 GiB address-space limit)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from edgespool.errors import ModelFormatError, UnsupportedModelError  # noqa: E402
from edgespool.benchmarks.gguf_open_bench import measure_open  # noqa: E402
from edgespool.exporters.gguf_reader import GGUFReaderLite  # noqa: E402

REAL_ASSETS = ("smollm2-135m", "qwen2.5-coder-0.5b")


def _asset(name: str) -> Path:
    from edgespool.apps.assets import AssetError, fetch

    try:
        return Path(fetch(name))
    except AssetError as e:
        pytest.skip(f"asset {name} unavailable ({e})")


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(a))).hexdigest()


def assert_same_as_gguf_py(path: Path, data: bool = True) -> None:
    """Every metadata value, type and (parts, data) layout, and every tensor's name, type, shape, sizes, offset,
    view dtype/shape and bytes, equal gguf-py's."""
    ref = gguf.GGUFReader(str(path))
    got = GGUFReaderLite(path)
    assert list(got.fields) == list(ref.fields)
    for key, f in ref.fields.items():
        g = got.fields[key]
        a, b = f.contents(), g.contents()
        assert type(a) is type(b) and a == b, key
        if f.types == [gguf.GGUFValueType.ARRAY]:  # gguf-py drops the element type of an empty array
            assert a == [] and g.types[0] == gguf.GGUFValueType.ARRAY, key
        else:
            assert g.types == f.types, key
        assert list(g.data) == list(f.data) and len(g.parts) == len(f.parts), key
        idx = sorted({*range(min(len(f.parts), 40)), *range(max(len(f.parts) - 40, 0), len(f.parts))})
        for i in idx:
            assert g.parts[i].dtype == f.parts[i].dtype and g.parts[i].tobytes() == f.parts[i].tobytes(), (key, i)
        if isinstance(a, list) and a:
            assert f.contents(len(a) - 1) == g.contents(len(a) - 1) and f.contents(slice(1, 3)) == g.contents(
                slice(1, 3)), key
    assert got.alignment == ref.alignment and got.data_offset == ref.data_offset
    assert len(got.tensors) == len(ref.tensors)
    for r, t in zip(ref.tensors, got.tensors):
        assert (t.name, t.tensor_type, t.shape.tolist(), t.n_elements, t.n_bytes, t.data_offset) == (
            r.name, r.tensor_type, r.shape.tolist(), r.n_elements, r.n_bytes, r.data_offset), r.name
        assert isinstance(t.tensor_type, gguf.GGMLQuantizationType) and t.shape.dtype == np.uint64
        assert t.data.dtype == r.data.dtype and t.data.shape == r.data.shape, r.name
        assert isinstance(t.data, np.memmap) and not t.data.flags.writeable
        if data:
            assert _digest(t.data) == _digest(r.data), r.name


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_ASSETS)
def test_real_gguf_same_as_gguf_py(name):
    path = _asset(name)
    m = measure_open(path)
    print(f"\n{name}: GGUFReaderLite opens in {m['open_s']:.3f} s, peak RSS {m['peak_mb']:.0f} MB "
          f"({m['base_mb']:.0f} MB after imports); {m['fields']} fields, {m['tensors']} tensors")
    # peak memory is a property of the reader (it maps, never copies, the tensor data); the open TIME depends on the
    # machine's load and is measured by benchmarks/gguf_open_bench.py (docs/GGUF.md), not asserted here
    assert m["peak_mb"] < 100, m
    assert_same_as_gguf_py(path)


def test_real_gguf_model_opens():
    """GGUFModel (exporters/gguf_source.py) on the real Qwen2.5-Coder 0.5B through the new reader: config, one
    dequantised tensor, the embedded byte-level BPE vocabulary."""
    from edgespool.exporters.gguf_source import open_gguf_model

    g = open_gguf_model(_asset("qwen2.5-coder-0.5b"))
    assert isinstance(g.reader, GGUFReaderLite)
    c = g.config
    assert (c.arch, c.num_layers, c.hidden_size, c.vocab_size) == ("qwen2", 24, 896, 151936)
    assert g.tensor("layers.0.wk").shape == (c.num_kv_heads * c.head_dim, c.hidden_size)
    assert '"merges"' in g.tokenizer().json


# -- synthetic files written by gguf-py's writer --------------------------------------------------------------
def _write_all_types(path: Path) -> Path:
    from gguf.quants import quantize

    w = gguf.GGUFWriter(str(path), "llama")
    vt = gguf.GGUFValueType
    for t, v in ((vt.UINT8, 250), (vt.INT8, -5), (vt.UINT16, 65000), (vt.INT16, -30000), (vt.UINT32, 4_000_000_000),
                 (vt.INT32, -2_000_000_000), (vt.FLOAT32, 1e-5), (vt.BOOL, True), (vt.UINT64, 2**63 + 5),
                 (vt.INT64, -(2**62)), (vt.FLOAT64, 0.1), (vt.STRING, "héllo ▁wörld")):
        w.add_key_value(f"t.{t.name.lower()}", v, t)
        w.add_key_value(f"a.{t.name.lower()}", [v, v] if t != vt.STRING else ["", "x", "ü" * 3], vt.ARRAY, sub_type=t)
    w.add_key_value("t.empty_string", "", vt.STRING)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    w.add_tensor("f32", x)
    w.add_tensor("f16", x.astype(np.float16))
    w.add_tensor("f32_3d", rng.standard_normal((2, 3, 32)).astype(np.float32))
    w.add_tensor("q8_0", quantize(x, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    bf = (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(4, 128)
    w.add_tensor("bf16", bf, raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.add_tensor("i32", np.arange(10, dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_synthetic_every_value_type_same_as_gguf_py(tmp_path):
    p = _write_all_types(tmp_path / "all.gguf")
    assert_same_as_gguf_py(p)
    r = GGUFReaderLite(p)
    assert r.fields["t.string"].contents() == "héllo ▁wörld" and r.fields["t.empty_string"].contents() == ""
    assert r.fields["t.uint64"].contents() == 2**63 + 5 and r.fields["t.bool"].contents() is True
    assert r.fields["a.string"].contents() == ["", "x", "üüü"]
    t = {t.name: t for t in r.tensors}
    assert t["bf16"].data.shape == (4, 128) and t["q8_0"].data.shape == (4, 68) and t["f16"].data.dtype == np.float16
    assert t["f32_3d"].data.shape == (2, 3, 32) and t["f32_3d"].shape.tolist() == [32, 3, 2]


# -- malformed files ------------------------------------------------------------------------------------------
def _s(x: str | bytes) -> bytes:
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def _tinfo(name: str, dims: list[int], ttype: int = 0, offset: int = 0, n_dims: int | None = None) -> bytes:
    nd = len(dims) if n_dims is None else n_dims
    return _s(name) + struct.pack(f"<I{len(dims)}QIQ", nd, *dims, ttype, offset)


def _gguf(kvs: list[bytes] = (), tinfos: list[bytes] = (), data: bytes = b"", version: int = 3,
          magic: bytes = b"GGUF", n_kv: int | None = None, n_tensors: int | None = None, align: int = 32) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(tinfos) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tinfos)
    return body + b"\0" * (-len(body) % align) + data


_ARCH = _kv("general.architecture", 8, _s("llama"))
_F32_16 = b"\0" * 64  # one F32 tensor of 16 values
U32, U64, STR, ARR = 4, 10, 8, 9
MALFORMED: dict[str, tuple[bytes, str]] = {
    "truncated_header": (b"GGUF\x03\0\0\0\0\0", r"truncated GGUF file: the header needs 24 bytes, the file has 10"),
    "bad_magic": (b"GGML" + b"\0" * 60, r"not a GGUF file \(magic b'GGML', expected b'GGUF'\)"),
    "version_1": (_gguf([_ARCH], version=1), r"GGUF version 1 is not supported \(expected 2 or 3\)"),
    "big_endian": (_gguf([_ARCH], version=3 << 24), r"big-endian GGUF files are not supported"),
    "kv_count_2_63": (_gguf([_ARCH], n_kv=2**63), r"claims 9223372036854775808 metadata keys"),
    "tensor_count_2_63": (_gguf([_ARCH], n_tensors=2**63), r"claims 9223372036854775808 tensors"),
    "array_count_2_63": (_gguf([_ARCH, _kv("x.arr", ARR, struct.pack("<IQ", U32, 2**63))]),
                         r"metadata key 'x\.arr' claims 9223372036854775808 UINT32 values"),
    "string_array_count_2_63": (_gguf([_ARCH, _kv("tokenizer.ggml.tokens", ARR, struct.pack("<IQ", STR, 2**63))]),
                                r"'tokenizer\.ggml\.tokens' claims 9223372036854775808 strings"),
    "string_length_beyond_file": (_gguf([_ARCH, _kv("x.s", STR, struct.pack("<Q", 10**6) + b"abc")]),
                                  r"metadata key 'x\.s' claims a string of 1000000 bytes"),
    "string_in_array_beyond_file": (_gguf([_ARCH, _kv("x.a", ARR, struct.pack("<IQ", STR, 2) + _s("a") +
                                                      struct.pack("<Q", 2**64 - 1))]),
                                    r"string 1 of metadata key 'x\.a' claims 18446744073709551615 bytes"),
    "key_length_beyond_file": (_gguf([struct.pack("<Q", 2**64 - 1) + b"\0" * 16]), r"the metadata key at offset 24 claims a "
                                                                      "string of 18446744073709551615 bytes"),
    "invalid_utf8": (_gguf([_ARCH, _kv("x.a", ARR, struct.pack("<IQ", STR, 2) + _s("ok") + _s(b"\xff\xfe"))]),
                     r"string 1 of metadata key 'x\.a' is not valid UTF-8"),
    "invalid_utf8_key": (_gguf([_s(b"k\xff") + struct.pack("<II", U32, 0)]),
                         r"the metadata key at offset 24 is not valid UTF-8"),
    "unknown_value_type": (_gguf([_ARCH, _kv("x.v", 13, b"\0" * 8)]), r"'x\.v' has value type 13, expected 0..12"),
    "nested_array": (_gguf([_ARCH, _kv("x.n", ARR, struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", U32, 0))]),
                     r"'x\.n' is an array of arrays"),
    "duplicate_key": (_gguf([_ARCH, _ARCH]), r"metadata key 'general\.architecture' appears twice"),
    "bad_alignment": (_gguf([_ARCH, _kv("general.alignment", U32, struct.pack("<I", 48))]),
                      r"'general\.alignment' is 48, expected a power of two"),
    "alignment_type": (_gguf([_ARCH, _kv("general.alignment", U64, struct.pack("<Q", 32))]),
                       r"'general\.alignment' has type UINT64, expected UINT32"),
    "tensor_offset_2_64_minus_1": (_gguf([_ARCH], [_tinfo("w", [16], offset=2**64 - 1)], _F32_16),
                                   r"tensor 'w' needs bytes \d+\.\.\d+ \(data offset 18446744073709551615 \+ 64 "
                                   r"bytes\), the file has \d+"),
    "unaligned_offset": (_gguf([_ARCH], [_tinfo("w", [8], offset=4)], _F32_16),
                         r"tensor 'w' has data offset 4, expected a multiple of the alignment 32"),
    "tensor_data_beyond_file": (_gguf([_ARCH], [_tinfo("w", [32])], _F32_16),
                                r"truncated or corrupt GGUF file: tensor 'w' needs bytes"),
    "dims_product_overflow": (_gguf([_ARCH], [_tinfo("w", [2**32, 2**32])], _F32_16),
                              r"tensor 'w' has dimensions \[4294967296, 4294967296\], whose product "
                              r"18446744073709551616 overflows int64"),
    "zero_dim": (_gguf([_ARCH], [_tinfo("w", [16, 0])], _F32_16), r"tensor 'w' has dimensions \[16, 0\], expected "
                                                                  r"every one > 0"),
    "n_dims_5": (_gguf([_ARCH], [_tinfo("w", [1, 1, 1, 1, 16])], _F32_16),
                 r"tensor 'w' has 5 dimensions, expected 1\.\.4"),
    "n_dims_2_31": (_gguf([_ARCH], [_tinfo("w", [16], n_dims=2**31)], _F32_16),
                    r"tensor 'w' has 2147483648 dimensions, expected 1\.\.4"),
    "partial_block": (_gguf([_ARCH], [_tinfo("w", [16], ttype=8)], _F32_16),
                      r"tensor 'w' \(Q8_0\) has rows of 16 values, expected a multiple of its block size 32"),
    "duplicate_tensor": (_gguf([_ARCH], [_tinfo("w", [16]), _tinfo("w", [16])], _F32_16),
                         r"tensor 'w' appears twice"),
    "truncated_tensor_info": (_gguf([_ARCH], [_tinfo("w", [16])])[:24 + len(_ARCH) + 30],
                              r"truncated or corrupt GGUF file: the header of tensor 'w' needs"),
}

_OPEN_ALL = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from edgespool.errors import EdgespoolError
    from edgespool.exporters.gguf_reader import GGUFReaderLite
    out = {}
    for p in sys.argv[1:]:
        t = time.perf_counter()
        try:
            GGUFReaderLite(p)
            out[p] = ["opened", "", time.perf_counter() - t]
        except EdgespoolError as e:
            out[p] = [type(e).__name__, str(e), time.perf_counter() - t]
        except BaseException as e:  # MemoryError, struct.error, ...: a bug
            out[p] = [type(e).__name__, repr(e), time.perf_counter() - t]
    print(json.dumps(out))
""")


def test_empty_arrays_and_v2(tmp_path):
    """Empty arrays (gguf-py's writer refuses them, its reader reads them) and a version-2 file."""
    p = tmp_path / "e.gguf"
    p.write_bytes(_gguf([_ARCH, _kv("a.i", ARR, struct.pack("<IQ", 5, 0)), _kv("a.s", ARR, struct.pack("<IQ", STR, 0))],
                        [_tinfo("w", [16])], _F32_16, version=2))
    assert_same_as_gguf_py(p)
    r = GGUFReaderLite(p)
    assert r.version == 2 and r.fields["a.i"].contents() == [] and r.fields["a.s"].contents() == []
    assert r.fields["a.s"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING]
    assert r.tensors[0].data.tolist() == [0.0] * 16


def test_malformed_headers_fail_fast_and_bounded(tmp_path):
    """Each malformed file is one ModelFormatError naming the file and what was expected, in < 1 s, opened in a
    process whose address space is limited to 1 GiB."""
    paths = {}
    for name, (data, _) in MALFORMED.items():
        paths[name] = tmp_path / f"{name}.gguf"
        paths[name].write_bytes(data)
    out = subprocess.run([sys.executable, "-c", _OPEN_ALL, *map(str, paths.values())], check=False,
                         capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    bad = []
    for name, (_, pattern) in MALFORMED.items():
        kind, msg, dt = res[str(paths[name])]
        if kind != "ModelFormatError" or not msg.startswith(f"{paths[name]}: ") or not re.search(pattern, msg):
            bad.append((name, kind, msg))
        elif dt >= 1.0:
            bad.append((name, f"took {dt:.2f} s"))
    assert not bad, bad


def test_malformed_in_process_and_truncations(tmp_path):
    """In this process too; and every prefix of a valid file is refused (or, past the last tensor byte, opens)."""
    p = tmp_path / "x.gguf"
    p.write_bytes(MALFORMED["array_count_2_63"][0])
    with pytest.raises(ModelFormatError, match=r"x\.gguf: truncated or corrupt GGUF file"):
        GGUFReaderLite(p)
    full = _write_all_types(tmp_path / "all.gguf").read_bytes()
    last = max(t.data_offset + t.n_bytes for t in GGUFReaderLite(tmp_path / "all.gguf").tensors)
    for cut in range(0, len(full), 7):
        p.write_bytes(full[:cut])
        if cut >= last:
            GGUFReaderLite(p)
            continue
        with pytest.raises(ModelFormatError, match=r"x\.gguf: (truncated|not a GGUF)"):
            GGUFReaderLite(p)


def test_unknown_tensor_type(tmp_path):
    p = tmp_path / "u.gguf"
    p.write_bytes(_gguf([_ARCH], [_tinfo("w", [16], ttype=200)], _F32_16))
    with pytest.raises(UnsupportedModelError, match=r"tensor 'w' has ggml type 200"):
        GGUFReaderLite(p)
    from edgespool.exporters.gguf_source import open_gguf_model

    with pytest.raises(UnsupportedModelError, match=r"tensor 'w' has ggml type 200.*; supported: F32, F16"):
        open_gguf_model(p)
