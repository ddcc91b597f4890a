"""The export pipeline: open a model, compress it, lay it out for streaming, lower it, write a bundle.

    source (HF dir | GGUF file) -> canonical float32 tensors -> QuantPolicy -> BundleWriter (weights.bin, 4 KiB
    aligned, groups contiguous) -> tokenizer.json -> ONNX lowering -> compiled kernels for the target -> manifest
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError, OptionError, TargetError
from ..kernels.quant import QTensor
from ..runtime.bundle.names import layer_of, layer_prefix, parse_tensor
from ..runtime.bundle.schemes import FLOAT_SCHEMES
from ..targets import TargetProfile, get_target
from .bundle_writer import FFN_LAYOUTS, BundleWriter, expected_tensors
from .compress import KEEP, CompressionReport, QuantPolicy, compress_tensor
from .source import SourceModel

GGUF_MAGIC = b"GGUF"


def open_source(path: str | os.PathLike) -> SourceModel:
    """Open a decoder model: a Hugging Face checkpoint directory (config.json + *.safetensors) or a GGUF file."""
    p = Path(path)
    if not p.exists():
        raise ModelFormatError(f"{p}: no such file or directory")
    if p.is_dir():
        from .hf import open_hf

        return open_hf(p)
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic == GGUF_MAGIC:
        from .gguf_source import open_gguf_model

        return open_gguf_model(p)
    raise ModelFormatError(f"{p}: not a Hugging Face checkpoint directory or a GGUF file (expected a directory with "
                           "config.json, or a file starting with the GGUF magic)")


@dataclass(frozen=True)
class ExportResult:
    """What an export produced and measured."""

    path: Path
    seconds: float
    bundle_bytes: int
    report: dict[str, Any]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled, leave=False)


def export_model(source: SourceModel, out_dir: str | os.PathLike, *, target: TargetProfile | str = "host",
                 policy: QuantPolicy | None = None, overwrite: bool = False, onnx: bool = True,
                 kernels: bool = True, progress: bool = True,
                 ffn_layout: str = "matrix", kernel_activations: str = "q8") -> ExportResult:
    """Compress ``source`` by ``policy`` into a bundle at ``out_dir`` for ``target``. ``kernel_activations``:
    ``f32`` (float activations) or ``q8`` (also compile GEMVs that round activations to Q8_0 blocks per call,
    llama.cpp's numerics, where the target CPU has AVX-512 VNNI / dotprod; the runtime prefers them for decode).
    ``ffn_layout``: ``matrix`` (default) or ``bundled`` (dense ReLU-family FFNs stored as row-column neuron
    bundles in their own streaming group, for neuron windowing; see :mod:`edgespool.runtime.bundle.ffn_geometry`)."""
    t0 = time.perf_counter()
    profile = get_target(target) if isinstance(target, str) else target
    policy = policy or QuantPolicy()
    cfg = source.config
    _check_ffn_layout(cfg, ffn_layout)
    if onnx and policy.quant == KEEP:
        raise OptionError("the ONNX lowering needs --quant f32, f16, int8 or int4: ONNX has no operators for GGUF's "
                          "block types (Q4_K, Q6_K, ...) that --quant keep stores; export without --onnx, or "
                          "re-quantise")
    meta = {
        "source": {"format": source.format,
                   "path": str(Path(source.path).resolve()) if Path(source.path).exists() else str(source.path)},
        "target": profile.to_dict(),
        "quant": policy.to_dict(),
    }
    # the tokenizer first: an unsupported vocabulary / pre-tokenizer is refused before any weight is processed
    tok = source.tokenizer()
    writer = BundleWriter(out_dir, cfg, overwrite=overwrite, meta=meta, ffn_layout=ffn_layout)
    report = CompressionReport()
    timings: dict[str, float] = {}
    try:
        shapes = expected_tensors(cfg, ffn_layout)
        release = getattr(source, "release", lambda name: None)  # a GGUF drops each tensor's mapped pages
        with _progress(len(shapes), "compress", progress) as bar:
            for name, shape in shapes:
                if name.endswith(".ffn.bundles"):
                    writer.add_tensor(name, _bundle_ffn(source, layer_of(name), policy, report))
                    bar.update(1)
                    continue
                src_bytes = getattr(source, "source_nbytes", lambda n: None)(name)
                if policy.keeps(name, tuple(shape)):
                    q = _stored(source, name, shape)
                    report.add_kept(name, q, src_bytes if src_bytes is not None else q.nbytes)
                    writer.add_tensor(name, q)
                    release(name)
                    bar.update(1)
                    continue
                w = source.tensor(name)
                if tuple(w.shape) != tuple(shape):
                    raise ModelFormatError(f"{source.path}: tensor {name!r} has shape {tuple(w.shape)}, the config "
                                           f"implies {tuple(shape)}")
                writer.add_tensor(name, compress_tensor(name, w, policy, report, src_bytes))
                release(name)
                bar.update(1)
        timings["compress_s"] = time.perf_counter() - t0
        writer.set_tokenizer(tok.json, bos_token_id=tok.bos_token_id, eos_token_ids=list(tok.eos_token_ids),
                             add_bos=tok.add_bos, chat_template=tok.chat_template, special_tokens=tok.special_tokens)
        if onnx:
            t1 = time.perf_counter()
            from .onnx_decoder import export_onnx

            read = writer.read_back if ffn_layout == "matrix" else _canonical_reader(writer.read_back)
            section = export_onnx(cfg, read, writer.stage_path("."))
            writer.add_section("onnx", section)
            timings["onnx_s"] = time.perf_counter() - t1
        if kernels:
            t1 = time.perf_counter()
            section = _build_kernels(cfg, writer, profile, kernel_activations)
            if section is not None:
                writer.add_section("kernels", section)
            timings["kernels_s"] = time.perf_counter() - t1
        rep = report.to_dict()
        rep["timings"] = timings
        writer.add_section("report", rep)
        path = writer.finish()
    except BaseException:
        writer.abort()
        raise
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    rep["timings"]["total_s"] = time.perf_counter() - t0
    return ExportResult(path, time.perf_counter() - t0, total, rep)


def _stored(source: SourceModel, name: str, shape: tuple[int, ...]) -> QTensor:
    """Tensor ``name`` exactly as ``source`` stores it (``--quant keep``)."""
    stored = getattr(source, "stored", None)
    if stored is None:
        raise OptionError(f"--quant keep stores a GGUF's own block types; {source.path} is a {source.format} "
                          "checkpoint: choose --quant f32, f16, int8 or int4")
    q = stored(name)
    if tuple(q.shape) != tuple(shape):
        raise ModelFormatError(f"{source.path}: tensor {name!r} has shape {tuple(q.shape)}, the config implies "
                               f"{tuple(shape)}")
    return q


def _check_ffn_layout(cfg, ffn_layout: str) -> None:
    if ffn_layout not in FFN_LAYOUTS:
        raise OptionError(f"--ffn-layout {ffn_layout!r} is unknown; valid: {', '.join(FFN_LAYOUTS)}")
    if ffn_layout == "matrix":
        return
    if cfg.hidden_act != "relu":
        raise OptionError(f"--ffn-layout bundled needs a ReLU-family FFN (hidden_act 'relu'); this model's is "
                          f"{cfg.hidden_act!r}: no neuron is ever exactly inactive, so neuron windowing could only "
                          "approximate it (docs/STREAMING.md); export with --ffn-layout matrix")
    if all(cfg.is_moe_layer(i) for i in range(cfg.num_layers)):
        raise OptionError("--ffn-layout bundled: the model has no dense FFN layer to bundle (every layer is MoE)")


def _bundle_ffn(source: SourceModel, i: int, policy: QuantPolicy, report: CompressionReport):
    """Layer ``i``'s dense FFN as row-column neuron bundles: gate and up rows as the matrix layout quantises them,
    the down projection transposed (one column per neuron) and quantised per neuron."""
    from ..runtime.bundle.ffn_geometry import pack_bundles

    p = layer_prefix(i) + "ffn."
    gate, up, down = (source.tensor(p + n) for n in ("gate", "up", "down"))
    I, H = source.config.intermediate_size, source.config.hidden_size
    for n, w, want in (("gate", gate, (I, H)), ("up", up, (I, H)), ("down", down, (H, I))):
        if tuple(w.shape) != want:
            raise ModelFormatError(f"{source.path}: tensor {p + n!r} has shape {tuple(w.shape)}, the config "
                                   f"implies {want}")
    q = [compress_tensor(p + "gate", gate, policy, report), compress_tensor(p + "up", up, policy, report),
         compress_tensor(p + "down", down.T.copy(), policy, report)]
    if len({t.scheme for t in q}) != 1:
        raise OptionError(f"--ffn-layout bundled: layer {i}'s gate/up/down.T would be stored as "
                          f"{'/'.join(t.scheme for t in q)}; a bundle needs one scheme (choose another --quant or "
                          "--group-size)")
    return pack_bundles(*q)


def _canonical_reader(read_back):
    """A tensor reader giving canonical ``ffn.gate/up/down`` matrices of a bundled bundle (for the ONNX lowering):
    gate/up rows as stored; down as the transposed columns (float32 when the columns are quantised per neuron:
    the same values)."""
    from ..runtime.bundle.ffn_geometry import ffn_tensor

    def read(name: str):
        n = parse_tensor(name)
        if n.layer is not None and n.expert is None and n.leaf in ("ffn.gate", "ffn.up", "ffn.down"):
            gate, up, down_t = read_back(ffn_tensor(n.layer)).vectors()
            if n.leaf != "ffn.down":
                return gate if n.leaf == "ffn.gate" else up
            I, H = down_t.shape
            if down_t.scheme in FLOAT_SCHEMES:
                return QTensor(down_t.scheme, (H, I), np.ascontiguousarray(down_t.data.T))
            return QTensor("f32", (H, I), np.ascontiguousarray(down_t.dequantize().T))
        return read_back(name)

    return read


def _build_kernels(cfg, writer: BundleWriter, profile: TargetProfile,
                   activations: str = "f32") -> dict[str, Any] | None:
    """Compile the target's kernels into the bundle: the C block kernels always, the TVM ones when apache-tvm is
    installed (the runtime uses numpy kernels for what neither serves and says so)."""
    # without apache-tvm only the C block kernels are built (no TVM attention / f16 kernels)
    from .kernels_export import build_kernels_for_bundle

    try:
        return build_kernels_for_bundle(cfg, writer.tensors, profile, writer.stage_path("kernels"),
                                        activations=activations)
    except TargetError as e:
        raise TargetError(f"{e}; or export without compiled kernels (--no-kernels)") from None
