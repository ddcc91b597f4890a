"""A SIMULATED GGUF for the GPU machine (issue 17, docs/GPU.md): random Q8_0 weights with a real model's shapes,
metadata and tokenizer (the real 1.1 GB file cannot travel there; speed depends on shapes, not values).

    python benchmarks/random_gguf.py meta REAL.gguf [GGUF_PY_DIR]        # here: DIR/meta.gguf + tensors.json (/tmp/h17)
    python benchmarks/random_gguf.py write DIR GGUF_PY_DIR OUT.gguf [D]  # there: the full GGUF
    python benchmarks/random_gguf.py moe-meta REAL.gguf DIR [LAYERS HIDDEN FFN EXPERTS TOP_K]
        # a Mixtral-style MoE (llama arch, E experts, top-k routing) with REAL.gguf's tokenizer and vocabulary:
        # no such real model is small enough for the GPU machine's 64 MiB carry, so its metadata is written here

Every Q8_0 block scale is ``D`` (default 0.0002: int8 codes x D ~ weights of std 0.015, near HF's 0.02 init). The
2026-12-03 H200 run used 0.002 (std ~0.15): its hidden states grew large enough that greedy tokens of
differently-rounded runs part after the first token, so that run's token comparison says nothing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _copy_fields(r, w, value_type, keep=None) -> None:
    """``r``'s metadata fields into the writer ``w`` (not the reader's own GGUF.* fields, the architecture and the
    file type, which the writer sets); ``keep``: only the fields whose name it accepts."""
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", "general.file_type"):
            continue
        if keep is not None and not keep(f.name):
            continue
        vt = f.types[0]
        if vt == value_type.ARRAY:
            w.add_key_value(f.name, f.contents(), vt, sub_type=f.types[-1])
        else:
            w.add_key_value(f.name, f.contents(), vt)


def write_meta(real: str, out_dir: str = "/tmp/h17") -> None:
    """``real``'s metadata (no tensors) -> ``out_dir``/meta.gguf, its tensor names and shapes -> tensors.json."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(real)
    w = GGUFWriter(str(Path(out_dir) / "meta.gguf"), "qwen2")
    _copy_fields(r, w, GGUFValueType)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ts = [(t.name, [int(x) for x in t.shape]) for t in r.tensors]  # gguf order: ne0 (row length) first
    (Path(out_dir) / "tensors.json").write_text(json.dumps(ts))
    print(len(ts), "tensors")


def write_moe_meta(real: str, out_dir: str, layers: int = 12, hidden: int = 1024, ffn: int = 2048,
                   experts: int = 8, top_k: int = 2, heads: int = 16, kv_heads: int = 4) -> None:
    """A Mixtral-style MoE's metadata (GGUF arch ``llama``, ``llama.expert_count`` experts, ``top_k`` used) with the
    tokenizer and vocabulary of the real GGUF ``real`` -> ``out_dir``/meta.gguf + tensors.json (merged
    ``ffn_*_exps`` expert tensors, as llama.cpp's converter writes Mixtral; no attention biases)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(real)
    vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(str(Path(out_dir) / "meta.gguf"), "llama")
    _copy_fields(r, w, GGUFValueType, keep=lambda name: name.startswith("tokenizer."))
    w.add_name("mixtral-style-simulated")
    w.add_block_count(layers)
    w.add_context_length(32768)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_expert_count(experts)
    w.add_expert_used_count(top_k)
    w.add_vocab_size(vocab)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    hd = hidden // heads
    ts: list[tuple[str, list[int]]] = [("token_embd.weight", [hidden, vocab])]
    for i in range(layers):
        b = f"blk.{i}."
        ts += [(b + "attn_norm.weight", [hidden]), (b + "attn_q.weight", [hidden, heads * hd]),
               (b + "attn_k.weight", [hidden, kv_heads * hd]), (b + "attn_v.weight", [hidden, kv_heads * hd]),
               (b + "attn_output.weight", [heads * hd, hidden]), (b + "ffn_norm.weight", [hidden]),
               (b + "ffn_gate_inp.weight", [hidden, experts]), (b + "ffn_gate_exps.weight", [hidden, ffn, experts]),
               (b + "ffn_up_exps.weight", [hidden, ffn, experts]), (b + "ffn_down_exps.weight", [ffn, hidden, experts])]
    ts += [("output_norm.weight", [hidden]), ("output.weight", [hidden, vocab])]
    (Path(out_dir) / "tensors.json").write_text(json.dumps(ts))
    print(len(ts), "tensors, vocabulary", vocab)


def write_random(meta_dir: str, out: str, scale: float = 2e-4, seed: int = 0) -> None:
    """meta.gguf + tensors.json of ``meta_dir`` -> ``out``: random Q8_0 matrices (block scale ``scale``), F32 ones
    for norms and zeros for biases."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(str(Path(meta_dir) / "meta.gguf"))
    ts = json.loads((Path(meta_dir) / "tensors.json").read_text())
    names = {n for n, _ in ts}
    if "output.weight" not in names and "token_embd.weight" in names:  # an untied head, as the HF runs had
        ts.append(("output.weight", [s for n, s in ts if n == "token_embd.weight"][0]))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    w = GGUFWriter(out, arch)
    _copy_fields(r, w, GGUFValueType)
    w.add_file_type(7)  # MOSTLY_Q8_0
    rng = np.random.default_rng(seed)
    d = np.array([scale], np.float16).view(np.uint8)
    for n, shape in ts:
        ne0 = shape[0]
        if len(shape) == 1:
            w.add_tensor(n, (np.ones if n.endswith("norm.weight") else np.zeros)(ne0, np.float32))
            continue
        if n.endswith("ffn_gate_inp.weight"):  # a router: F32 (as the converter keeps it), std 0.02
            w.add_tensor(n, rng.normal(0, 0.02, shape[::-1]).astype(np.float32))
            continue
        rows = int(np.prod(shape[1:]))
        blk = rng.integers(-127, 128, (rows, ne0 // 32, 34), dtype=np.int16).astype(np.int8).view(np.uint8)
        blk[:, :, 0], blk[:, :, 1] = d[0], d[1]
        w.add_tensor(n, blk.reshape(*shape[1:][::-1], ne0 // 32 * 34), raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", out)


def main(argv: list[str]) -> int:
    if argv[0] == "meta":
        write_meta(argv[1])
        return 0
    if argv[0] == "moe-meta":
        write_moe_meta(argv[1], argv[2], *(int(v) for v in argv[3:8]))
        return 0
    sys.path.insert(0, argv[2])  # llama.cpp's gguf-py where the gguf package is not installed
    write_random(argv[1], argv[3], float(argv[4]) if len(argv) > 4 else 2e-4)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
