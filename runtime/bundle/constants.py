"""Bundle format constants (one place, gguf-py habit).

A bundle is a directory::

    manifest.json      magic, schema version, model config, target, quant policy, tensor + group tables, report
    weights.bin        every tensor; each tensor starts on a 4 KiB boundary, each streaming group (a layer's dense
                       part, one MoE expert, the embeddings, the head) is one contiguous byte range
    tokenizer.json     Hugging Face `tokenizers` JSON (converted at export from tokenizer.model / GGUF vocab)
    chat_template.jinja  the model's chat template (optional; named by the manifest's tokenizer section)
    model.onnx (+ .data)  ONNX lowering runnable by plain onnxruntime (optional, `--no-onnx` skips it)
    kernels/           compiled kernels for the target (optional)

Schema history: 1 = first release. 2 = tensor records may carry ``"layout"`` (absent = ``"matrix"``;
``"neuron_bundles"``: a dense FFN stored as row-column neuron bundles, see :mod:`edgespool.runtime.bundle.ffn_geometry`).
Writers still write 1 for bundles without such tensors, so older readers keep reading them.
"""
MAGIC = "edgespool-bundle"
SCHEMA_VERSION = 1  # what a bundle using no later feature is written as
NEURON_BUNDLES_SCHEMA_VERSION = 2  # a bundle holding neuron_bundles tensors
MAX_SCHEMA_VERSION = 2  # the newest version this edgespool reads
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 256 << 20  # a manifest larger than this is refused before it is read
WEIGHTS = "weights.bin"
TOKENIZER = "tokenizer.json"
CHAT_TEMPLATE = "chat_template.jinja"
ONNX_MODEL = "model.onnx"
ALIGNMENT = 4096  # tensor offsets; O_DIRECT needs offsets/lengths aligned to the logical block size
PART_ALIGNMENT = 64  # parts (data / scale) inside a tensor record

# numpy dtype names allowed in tensor parts
PART_DTYPES = ("float32", "float16", "int8", "uint8")


def align_up(n: int, a: int = ALIGNMENT) -> int:
    """Smallest multiple of ``a`` that is >= ``n``."""
    return (n + a - 1) // a * a
