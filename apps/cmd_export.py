"""`edgespool export SOURCE --target T --quant Q -o BUNDLE`: compress and lower a model into a bundle."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..exporters.compress import KEEP, QUANT_CHOICES, QuantPolicy
from ..targets import get_target
from ..units import fmt_bytes, parse_bytes

CNN_SUFFIXES = (".onnx", ".pth", ".pt", ".tflite")


@click.command("export")
@click.argument("source", type=click.Path())
@click.option("--target", "-t", default="host", show_default=True, help="Target profile (see `edgespool targets`).")
@click.option("--quant", "-q", default=None, type=click.Choice(list(QUANT_CHOICES)),
              help="Scheme for weight matrices. keep (the default for GGUF inputs): every tensor exactly as the file "
                   "stores it (Q4_K, Q6_K, Q8_0, ... bytes identical); f16 is the default for Hugging Face "
                   "checkpoints; int8 / int4 re-quantise (the report says what it cost).")
@click.option("--group-size", default=32, show_default=True, type=int, help="int4 group size.")
@click.option("--expert-bits", type=click.Choice(["32", "16", "8", "4"]), help="Bits for MoE expert matrices.")
@click.option("--dense-bits", type=click.Choice(["32", "16", "8", "4"]),
              help="Bits for every other matrix (attention, dense FFN, embeddings, lm_head).")
@click.option("--head-bits", type=click.Choice(["32", "16", "8", "4"]),
              help="Bits for the output head alone (over --dense-bits), e.g. 4 for a speculative draft model: its "
                   "head is read every draft pass (docs/SPECULATIVE.md).")
@click.option("--output", "-o", required=True, type=click.Path(), help="Bundle directory to write.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --output.")
@click.option("--onnx/--no-onnx", "with_onnx", default=False, show_default=True,
              help="Also write model.onnx (+ model.onnx.data, a second copy of the weights in ONNX's layout) for "
                   "plain onnxruntime; off by default so a bundle stores its weights once.")
@click.option("--no-kernels", is_flag=True, help="Skip compiling target kernels.")
@click.option("--kernel-activations", default="q8", show_default=True, type=click.Choice(["f32", "q8"]),
              help="q8 (default): also compile GEMVs that round activations to Q8_0 blocks (llama.cpp's numerics; "
                   "AVX-512 VNNI / ARM dotprod targets), used at runtime for int8/int4 weights; f32: float "
                   "activations only (exact dequantised arithmetic, 0.3-0.6x the speed).")
@click.option("--ffn-layout", default="matrix", show_default=True, type=click.Choice(["matrix", "bundled"]),
              help="bundled: store each dense ReLU-family FFN as row-column neuron bundles in its own streaming group "
                   "(neuron windowing when streamed under --memory-budget; needs hidden_act relu).")
@click.option("--activation-budget", help="CNNs: activation memory budget, e.g. 256KiB (patch-based plan).")
@click.option("--input-shape", help="CNNs: fix a dynamic input shape, e.g. 1,3,224,224.")
@click.option("--cnn-quant", type=click.Choice(["f32", "int8"]), default=None,
              help="CNNs: f32 or int8 (default int8 for MCU targets, f32 otherwise).")
@click.option("--width", default=1.0, show_default=True, type=float, help="CNNs from .pth: MobileNetV2 width.")
@click.option("--resolution", default=224, show_default=True, type=int, help="CNNs from .pth: input resolution.")
@click.option("--max-overhead", default=None, help="CNNs: cap on extra MACs of the patch plan, e.g. 15%.")
@click.option("--calib", multiple=True, type=click.Path(), help="CNNs int8: calibration image (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export_cmd(source: str, target: str, quant: str, group_size: int, expert_bits: str | None,
               dense_bits: str | None, head_bits: str | None, output: str, force: bool, with_onnx: bool, no_kernels: bool,
               kernel_activations: str, ffn_layout: str,
               activation_budget: str | None, input_shape: str | None, cnn_quant: str | None, width: float,
               resolution: int, max_overhead: str | None, calib: tuple[str, ...], as_json: bool) -> None:
    """Read a model (HF safetensors dir, GGUF file, or an ONNX/PyTorch/TFLite CNN), compress it and write a bundle."""
    from ..exporters.bundle_writer import check_output_path

    check_output_path(output, force, "--output/-o")  # before any work: a user's folder is never replaced
    profile = get_target(target)
    progress = sys.stderr.isatty() and not as_json
    if Path(source).suffix.lower() in CNN_SUFFIXES:
        from ..exporters.cnn.export import export_cnn

        shape = tuple(int(x) for x in input_shape.split(",")) if input_shape else None
        budget = parse_bytes(activation_budget, "--activation-budget") if activation_budget else None
        q = cnn_quant or ("int8" if profile.kind == "mcu" else "f32")
        from .cmd_plan import parse_percent

        overhead = parse_percent(max_overhead)
        path = export_cnn(source, profile, output, activation_budget=budget, quant=q, input_shape=shape,
                          overwrite=force, width=width, resolution=resolution, max_overhead=overhead,
                          calibration=list(calib) or None)
        click.echo(json.dumps({"bundle": str(path)}) if as_json else f"wrote CNN bundle {path}")
        return
    from ..exporters.export import export_model, open_source

    src = open_source(source)
    if quant is None:
        quant = KEEP if src.format == "gguf" else "f16"
    policy = QuantPolicy(quant=quant, group_size=group_size,
                         expert_bits=int(expert_bits) if expert_bits else None,
                         dense_bits=int(dense_bits) if dense_bits else None,
                         head_bits=int(head_bits) if head_bits else None)
    try:
        res = export_model(src, output, target=profile, policy=policy, overwrite=force, onnx=with_onnx,
                           kernels=not no_kernels, progress=progress,
                           kernel_activations=kernel_activations, ffn_layout=ffn_layout)
    finally:
        src.close()
    if as_json:
        click.echo(json.dumps({"bundle": str(res.path), "seconds": res.seconds, "bundle_bytes": res.bundle_bytes,
                               "report": res.report}, indent=1))
        return
    r = res.report
    click.echo(f"wrote {res.path} for {profile.name} in {res.seconds:.1f} s: weights {fmt_bytes(r['bytes_before'])}"
               f" -> {fmt_bytes(r['bytes_after'])} ({r['ratio']:.2f}x), bundle {fmt_bytes(res.bundle_bytes)}")
    for k, v in r["classes"].items():
        click.echo(f"  {k:14s} {','.join(v['schemes']):10s} {fmt_bytes(v['bytes_before']):>11s} -> "
                   f"{fmt_bytes(v['bytes_after']):>11s}  rel-RMSE {v['rel_rmse']:.4f}  max|err| {v['max_abs_err']:.4g}")
    if r["int4_fallbacks_to_int8"]:
        click.echo(f"  note: {len(r['int4_fallbacks_to_int8'])} matrices kept int8 (input width not a multiple of "
                   f"the int4 group size {group_size})")


COMMANDS = [export_cmd]
