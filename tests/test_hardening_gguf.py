"""Issue 13, defects 2, 3, 4, 10 and 11 (GGUF side): a mutated GGUF is refused with one clean line, fast and
with bounded memory, before anything is allocated. Each input runs in a forked child (2 GiB more address space,
a time limit): a hang, a crash or a MemoryError fails the test as surely as a wrong message."""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from fuzz_harness import run_bounded
from fuzz_inputs import VOCAB, gguf_layout, patch, write_tiny_llama_gguf


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> tuple[Path, bytes]:
    p = write_tiny_llama_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf")
    return p, p.read_bytes()


def _open_and_config(path: Path):
    def go():
        from edgespool.exporters.gguf_source import open_gguf_model

        m = open_gguf_model(path)
        m.tokenizer()
        return m.config.num_layers
    return go


def _clean(raw: bytes, tmp_path: Path, *match: str, timeout: float = 20.0) -> str:
    p = tmp_path / "m.gguf"
    p.write_bytes(raw)
    t0 = time.monotonic()
    out = run_bounded(_open_and_config(p), timeout_s=timeout)
    assert out.cls == "clean", (out.cls, out.detail)
    assert time.monotonic() - t0 < 10
    assert str(p) in out.detail
    for m in match:
        assert m in out.detail, out.detail
    return out.detail


def test_seed_is_accepted(seed, tmp_path):
    out = run_bounded(_open_and_config(seed[0]))
    assert out.cls == "accepted" and out.value == 2


@pytest.mark.parametrize("count", [2**63, 2**64 - 1, 2**40, len(VOCAB) + 1])
def test_array_count_bounded_by_file_size(seed, tmp_path, count):
    raw = seed[1]
    lay = gguf_layout(raw)
    _, voff, vt = lay.kv["tokenizer.ggml.tokens"]
    assert vt == 9
    # one string too many: the parse runs on into the next key, which is then what the message names
    _clean(patch(raw, voff + 4, "<Q", count), tmp_path, *(("tokenizer.ggml",) if count > len(VOCAB) + 1 else ()))


@pytest.mark.parametrize("key", ["llama.block_count", "tokenizer.ggml.model", "llama.rope.freq_base",
                                 "tokenizer.ggml.bos_token_id"])
@pytest.mark.parametrize("new_type", [9, 8, 12, 13, 2**32 - 1])
def test_value_type_confusion_is_clean(seed, tmp_path, key, new_type):
    raw = seed[1]
    toff, _, vt = gguf_layout(raw).kv[key]
    if new_type == vt:
        pytest.skip("same type")
    _clean(patch(raw, toff, "<I", new_type), tmp_path)


@pytest.mark.parametrize("offset", [2**64 - 1, 2**64 - 32, 2**63, 1, 4, 16])
def test_tensor_offsets_in_bounds_and_aligned(seed, tmp_path, offset):
    raw = seed[1]
    _, ooff = gguf_layout(raw).tensors["blk.1.ffn_down.weight"]
    d = _clean(patch(raw, ooff, "<Q", offset), tmp_path, "blk.1.ffn_down.weight")
    assert ("alignment" in d) or ("needs bytes" in d)


@pytest.mark.parametrize("n", [2**31, 10**9, 10**6, 3])
def test_block_count_checked_against_the_tensors_present(seed, tmp_path, n):
    raw = seed[1]
    _, voff, vt = gguf_layout(raw).kv["llama.block_count"]
    assert vt == 4  # uint32
    _clean(patch(raw, voff, "<I", n), tmp_path, "block_count", f"{n}", "2 layers")


def test_invalid_utf8_token_is_clean(seed, tmp_path):
    raw = seed[1]
    i = raw.index("\u2581ab".encode())
    bad = raw[:i] + b"\xff\xfe\xfd" + raw[i + 3:]
    _clean(bad, tmp_path, "not valid UTF-8")


@pytest.mark.parametrize("key,value", [("llama.attention.layer_norm_rms_epsilon", math.nan),
                                       ("llama.attention.layer_norm_rms_epsilon", 0.0),
                                       ("llama.attention.layer_norm_rms_epsilon", -1e-5),
                                       ("llama.attention.layer_norm_rms_epsilon", math.inf),
                                       ("llama.rope.freq_base", 0.0), ("llama.rope.freq_base", math.nan),
                                       ("llama.rope.freq_base", -10000.0)])
def test_epsilon_and_freq_base_range_checked(seed, tmp_path, key, value):
    raw = seed[1]
    _, voff, vt = gguf_layout(raw).kv[key]
    assert vt == 6
    _clean(patch(raw, voff, "<f", value), tmp_path, key.split(".")[-1])


@pytest.mark.parametrize("key,value", [("tokenizer.ggml.bos_token_id", 99999999),
                                       ("tokenizer.ggml.bos_token_id", 2**32 - 5),
                                       ("tokenizer.ggml.eos_token_id", 100000),
                                       ("tokenizer.ggml.eos_token_id", len(VOCAB))])
def test_special_token_ids_within_vocab(seed, tmp_path, key, value):
    raw = seed[1]
    _, voff, vt = gguf_layout(raw).kv[key]
    assert vt == 4
    _clean(patch(raw, voff, "<I", value), tmp_path, key.split(".")[-1].replace("_token_id", ""), str(value))


def test_negative_bos_as_int32_is_reported_as_given(tmp_path):
    import gguf

    p = write_tiny_llama_gguf(tmp_path / "neg.gguf")
    raw = p.read_bytes()
    toff, voff, _ = gguf_layout(raw).kv["tokenizer.ggml.bos_token_id"]
    raw = patch(patch(raw, toff, "<I", int(gguf.GGUFValueType.INT32)), voff, "<i", -5)
    _clean(raw, tmp_path, "bos", "-5")
