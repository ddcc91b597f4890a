"""A SIMULATED GGUF for the GPU machine (issue 17, docs/GPU.md): random Q8_0 weights with a real model's shapes,
metadata and tokenizer (the real 1.1 GB file cannot travel there; speed depends on shapes, not values).

    python benchmarks/random_gguf.py meta REAL.gguf [GGUF_PY_DIR]        # here: DIR/meta.gguf + tensors.json (/tmp/h17)
    python benchmarks/random_gguf.py write DIR GGUF_PY_DIR OUT.gguf [D]  # there: the full GGUF

Every Q8_0 block scale is ``D`` (default 0.0002: int8 codes x D ~ weights of std 0.015, near HF's 0.02 init). The
2026-12-03 H200 run used 0.002 (std ~0.15): its hidden states grew large enough that greedy tokens of
differently-rounded runs part after the first token, so that run's token comparison says nothing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _copy_fields(r, w, value_type) -> None:
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", "general.file_type"):
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


def write_random(meta_dir: str, out: str, scale: float = 2e-4, seed: int = 0) -> None:
    """meta.gguf + tensors.json of ``meta_dir`` -> ``out``: random Q8_0 matrices (block scale ``scale``), F32 ones
    for norms and zeros for biases."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(str(Path(meta_dir) / "meta.gguf"))
    ts = json.loads((Path(meta_dir) / "tensors.json").read_text())
    names = {n for n, _ in ts}
    if "output.weight" not in names and "token_embd.weight" in names:  # an untied head, as the HF runs had
        ts.append(("output.weight", [s for n, s in ts if n == "token_embd.weight"][0]))
    w = GGUFWriter(out, "qwen2")
    _copy_fields(r, w, GGUFValueType)
    w.add_file_type(7)  # MOSTLY_Q8_0
    rng = np.random.default_rng(seed)
    d = np.array([scale], np.float16).view(np.uint8)
    for n, shape in ts:
        ne0 = shape[0]
        if len(shape) == 1:
            w.add_tensor(n, (np.ones if n.endswith("norm.weight") else np.zeros)(ne0, np.float32))
            continue
        rows = int(np.prod(shape[1:]))
        blk = rng.integers(-127, 128, (rows, ne0 // 32, 34), dtype=np.int16).astype(np.int8).view(np.uint8)
        blk[:, :, 0], blk[:, :, 1] = d[0], d[1]
        w.add_tensor(n, blk.reshape(rows, ne0 // 32 * 34), raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", out)


def main(argv: list[str]) -> int:
    if argv[0] == "meta":
        write_meta(argv[1])
        return 0
    sys.path.insert(0, argv[2])  # llama.cpp's gguf-py where the gguf package is not installed
    write_random(argv[1], argv[3], float(argv[4]) if len(argv) > 4 else 2e-4)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
