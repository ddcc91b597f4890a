"""`edgespool demo`: the whole pipeline on an embedded default model, on any machine, without torch."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from ..errors import DeployError
from ..units import fmt_bytes

DEFAULT_DIR = Path.home() / ".cache" / "edgespool" / "demo"


@click.command("demo")
@click.option("--out", default=str(DEFAULT_DIR), show_default=True, type=click.Path(),
              help="Where the demo bundle is written (replaced on every run).")
@click.option("-n", "--max-tokens", "n", default=32, show_default=True, type=int)
@click.option("--prompt", default="Once upon a time", show_default=True)
@click.option("--quant", default="int4", show_default=True, type=click.Choice(["f32", "f16", "int8", "int4"]),
              help="Scheme for the MoE experts (attention and embeddings use int8).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random weights and the sampler.")
@click.option("--json", "as_json", is_flag=True)
def demo_cmd(out: str, n: int, prompt: str, quant: str, seed: int, as_json: bool) -> None:
    """Synthesize a Mixtral-style MoE (RANDOM weights, tokenizer trained on a bundled text), export it for this
    machine with per-expert bit widths, and generate from it: prints tokens/s, peak RSS and bundle size."""
    from ..exporters.compress import QuantPolicy
    from ..exporters.export import export_model
    from ..exporters.synth import synth_demo_model

    say = (lambda *a, **k: None) if as_json else click.echo
    t0 = time.perf_counter()
    src = synth_demo_model(seed=seed)
    c = src.config
    say(f"edgespool demo: synthesizing a Mixtral-style MoE ({c.num_layers} layers, hidden {c.hidden_size}, "
        f"{c.num_experts} experts top-{c.num_experts_per_tok}, vocab {c.vocab_size}).")
    say("NOTE: the weights are RANDOM (no trained model ships with edgespool); expect gibberish text. "
        "The figures below are real measurements of this machine.")
    bits = {"f32": 32, "f16": 16, "int8": 8, "int4": 4}[quant]
    policy = QuantPolicy(quant=quant, expert_bits=bits, dense_bits=8 if bits < 16 else bits)
    dest = Path(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    res = export_model(src, dest, target="host", policy=policy, overwrite=True, onnx=True, kernels=True,
                       progress=not as_json)
    say(f"exported {res.path} for host in {res.seconds:.1f} s: bundle {fmt_bytes(res.bundle_bytes)} "
        f"(weights {fmt_bytes(res.report['bytes_before'])} f32 -> {fmt_bytes(res.report['bytes_after'])}, "
        f"experts {quant}, attention/embeddings int8)")
    # Generate in a fresh process, so its peak RSS is what a device running the bundle needs (this process also
    # held the exporter and, when TVM is installed, the kernel compiler).
    cmd = [sys.executable, "-m", "edgespool", "run", str(res.path), "--prompt", prompt, "-n", str(n),
           "-t", "0.8", "--top-k", "40", "--seed", str(seed), "--ignore-eos", "--json"]
    say(f"prompt: {prompt!r} -> {n} tokens (temperature 0.8, top-k 40, seed {seed}): {' '.join(cmd[1:4])} ...\n")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise DeployError(f"demo generation failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    gen = json.loads(r.stdout)
    st = gen["stats"]
    summary = {"bundle": str(res.path), "bundle_bytes": res.bundle_bytes, "export_s": res.seconds,
               "random_weights": True, "prefill_tok_s": st["prefill_tok_s"], "decode_tok_s": st["decode_tok_s"],
               "peak_rss_bytes": st["peak_rss_bytes"], "tokens": gen["tokens"], "text": gen["text"],
               "kernels": gen["kernels"], "total_s": time.perf_counter() - t0}
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(f"{prompt}{gen['text']}")
    click.echo(f"\ndecode {st['decode_tok_s']:.1f} tok/s, prefill {st['prefill_tok_s']:.1f} tok/s, peak RSS "
               f"{fmt_bytes(st['peak_rss_bytes'])} (the generating process), bundle {fmt_bytes(res.bundle_bytes)}, "
               f"total {summary['total_s']:.1f} s (random weights: the text means nothing)")
    click.echo(f"kernels: {gen['kernels']}")
    click.echo(f"next: edgespool inspect {res.path}   |   edgespool run {res.path} -n 64")


COMMANDS = [demo_cmd]
