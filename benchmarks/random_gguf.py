"""A SIMULATED GGUF for the GPU machine (issue 17, docs/GPU.md): random Q8_0 weights with a real model's shapes,
metadata and tokenizer (the real 1.1 GB file cannot travel there; speed depends on shapes, not values).

    python benchmarks/random_gguf.py meta REAL.gguf [GGUF_PY_DIR]        # here: DIR/meta.gguf + tensors.json (/tmp/h17)
    python benchmarks/random_gguf.py write DIR GGUF_PY_DIR OUT.gguf [D]  # there: the full GGUF

Every Q8_0 block scale is ``D`` (default 0.0002: int8 codes x D ~ weights of std 0.015, near HF's 0.02 init). The
2026-12-03 H200 run used 0.002 (std ~0.15): its hidden states grew large enough that greedy tokens of
differently-rounded runs part after the first token, so that run's token comparison says nothing."""
import json, sys
import numpy as np
if len(sys.argv) > 3 and sys.argv[1] == "write":
    sys.path.insert(0, sys.argv[3])  # llama.cpp's gguf-py where the gguf package is not installed
from gguf import GGUFReader, GGUFWriter, GGUFValueType, GGMLQuantizationType as Q

def copy_fields(r, w):
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", "general.file_type"):
            continue
        vt = f.types[0]
        val = f.contents()
        if vt == GGUFValueType.ARRAY:
            w.add_key_value(f.name, val, vt, sub_type=f.types[-1])
        else:
            w.add_key_value(f.name, val, vt)

if sys.argv[1] == "meta":
    r = GGUFReader(sys.argv[2])
    w = GGUFWriter("/tmp/h17/meta.gguf", "qwen2")
    copy_fields(r, w)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    ts = [(t.name, [int(x) for x in t.shape]) for t in r.tensors]  # gguf order: ne0 (row length) first
    json.dump(ts, open("/tmp/h17/tensors.json", "w"))
    print(len(ts), "tensors")
else:
    meta_dir, out = sys.argv[2], sys.argv[4]
    r = GGUFReader(meta_dir + "/meta.gguf")
    ts = json.load(open(meta_dir + "/tensors.json"))
    names = {n for n, _ in ts}
    if "output.weight" not in names and "token_embd.weight" in names:  # untied head, as the earlier runs' HF model (tie_word_embeddings False)
        emb = [s for n, s in ts if n == "token_embd.weight"][0]
        ts.append(("output.weight", emb))
    w = GGUFWriter(out, "qwen2")
    copy_fields(r, w)
    w.add_file_type(7)  # MOSTLY_Q8_0
    rng = np.random.default_rng(0)
    d = np.array([float(sys.argv[5]) if len(sys.argv) > 5 else 2e-4], np.float16).view(np.uint8)
    for n, shape in ts:
        ne0 = shape[0]
        rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if len(shape) == 1:
            arr = (np.ones if n.endswith("norm.weight") else np.zeros)(ne0, np.float32)
            w.add_tensor(n, arr)
            continue
        blk = rng.integers(-127, 128, (rows, ne0 // 32, 34), dtype=np.int16).astype(np.int8).view(np.uint8)
        blk[:, :, 0], blk[:, :, 1] = d[0], d[1]
        w.add_tensor(n, blk.reshape(rows, ne0 // 32 * 34), raw_dtype=Q.Q8_0)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    print("wrote", out)
