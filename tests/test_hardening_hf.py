"""Issue 13, defects 3, 10 and 11 (Hugging Face side): a corrupt config.json or safetensors header is refused with
one clean line naming the file and key, fast and in bounded memory (each case in a forked, limited child)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from fuzz_harness import run_bounded
from fuzz_inputs import write_tiny_hf_llama


@pytest.fixture()
def ckpt(tmp_path) -> Path:
    return write_tiny_hf_llama(tmp_path / "hf")


def _open(path: Path):
    def go():
        from edgespool.exporters.hf import open_hf

        m = open_hf(path)
        return [m.config.num_layers, float(m.tensor("layers.1.wq")[0, 0])]
    return go


def _edit_config(d: Path, **kv) -> None:
    c = json.loads((d / "config.json").read_text())
    c.update(kv)
    (d / "config.json").write_text(json.dumps(c))


def _clean(d: Path, *match: str) -> str:
    out = run_bounded(_open(d), timeout_s=20)
    assert out.cls == "clean", (out.cls, out.detail)
    for m in match:
        assert m in out.detail, out.detail
    return out.detail


def test_seed_is_accepted(ckpt):
    out = run_bounded(_open(ckpt))
    assert out.cls == "accepted" and out.value[0] == 2


@pytest.mark.parametrize("n", [10**9, 2**31, 10**6, 3])
def test_num_hidden_layers_checked_against_the_checkpoint(ckpt, n):
    _edit_config(ckpt, num_hidden_layers=n)
    _clean(ckpt, "num_hidden_layers", str(n))


@pytest.mark.parametrize("key,value", [("rms_norm_eps", 0.0), ("rms_norm_eps", -1.0), ("rope_theta", 0.0),
                                       ("rope_theta", -5.0), ("bos_token_id", 99999999), ("bos_token_id", -5),
                                       ("eos_token_id", 100000), ("eos_token_id", [2, 64])])
def test_numbers_range_checked(ckpt, key, value):
    _edit_config(ckpt, **{key: value})
    _clean(ckpt, key)


def test_nan_epsilon_is_refused(ckpt):
    c = (ckpt / "config.json").read_text().replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": NaN')
    assert "NaN" in c
    (ckpt / "config.json").write_text(c)
    _clean(ckpt, "rms_norm_eps")


def _rewrite_header(st: Path, header_bytes: bytes) -> None:
    raw = st.read_bytes()
    n = struct.unpack_from("<Q", raw)[0]
    st.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + raw[8 + n:])


@pytest.mark.parametrize("header", [b"[1, 2, 3]", b"[" * 50000 + b"]" * 50000, b'"text"', b"{\"a\": 5}",
                                    b'{"model.norm.weight": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
                                    (b'{"model.norm.weight": {"dtype": "F32", "shape": [32], '
                                     b'"data_offsets": [0, 99999999999]}}'),
                                    b'{"model.norm.weight": {"dtype": "F32", "shape": [32], "data_offsets": [0, 4]}}',
                                    b'{"model.norm.weight": {"dtype": "Q9", "shape": [32], "data_offsets": [0, 128]}}',
                                    b"\xff\xfe not utf-8"])
def test_safetensors_header_validated(ckpt, header):
    _rewrite_header(ckpt / "model.safetensors", header)
    _clean(ckpt, "model.safetensors")


def test_header_length_past_the_file(ckpt):
    st = ckpt / "model.safetensors"
    raw = st.read_bytes()
    st.write_bytes(struct.pack("<Q", 2**63) + raw[8:])
    _clean(ckpt, "exceeds the file size")


def test_deeply_nested_config_json(ckpt):
    (ckpt / "config.json").write_text("[" * 100000 + "]" * 100000)
    _clean(ckpt, "config.json")
    (ckpt / "config.json").write_text(json.dumps([1, 2]))
    _clean(ckpt, "config.json")


def test_config_json_a_directory_or_fifo(ckpt):
    import os

    (ckpt / "config.json").unlink()
    os.mkfifo(ckpt / "config.json")
    _clean(ckpt, "config.json", "regular file")
