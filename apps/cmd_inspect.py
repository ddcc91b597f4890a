"""`edgespool inspect BUNDLE`: what is in a bundle."""
from __future__ import annotations

import json

import click

from ..runtime.bundle.reader import Bundle
from ..runtime.inspect import summarize
from ..units import fmt_bytes


@click.command("inspect")
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--verify", is_flag=True, help="Also check the manifest's checksum and every tensor's CRC32 (reads the "
                                            "whole weights file).")
def inspect_cmd(bundle: str, as_json: bool, verify: bool) -> None:
    """Summarise a bundle: model, target, quantisation, per-layer / per-expert sizes, totals."""
    b = Bundle(bundle)
    if verify:
        b.verify()
        if not b.manifest_checksummed:
            click.echo(f"note: {b.path}: the manifest has no checksum (exported before edgespool covered it); its "
                       "fields were schema-checked and the weights' CRC32s verified, re-export to cover the manifest "
                       "too", err=True)
    if b.kind != "decoder":
        from ..runtime.cnn.api import summarize_cnn  # CNN bundles (patch-based inference)

        s = summarize_cnn(b)
        click.echo(json.dumps(s, indent=1) if as_json else s.get("text", json.dumps(s, indent=1)))
        return
    s = summarize(b)
    if as_json:
        click.echo(json.dumps(s, indent=1))
        return
    c = s["model"]
    click.echo(f"bundle   {s['path']}  (schema v{s['schema_version']}, {s['created_by']})")
    src = s.get("source") or {}
    click.echo(f"model    {c['arch']}  layers={c['num_layers']} hidden={c['hidden_size']} heads={c['num_heads']}/"
               f"{c['num_kv_heads']} vocab={c['vocab_size']}"
               + (f" experts={c['num_experts']} top-{c['num_experts_per_tok']}" if c["num_experts"] else "")
               + f"  (from {src.get('format')}: {src.get('path')})")
    q = s["quant"] or {}
    click.echo(f"target   {s['target']}   quant {q.get('quant')} (group {q.get('group_size')}"
               + (f", experts {q['expert_bits']}-bit" if q.get("expert_bits") else "")
               + (f", dense {q['dense_bits']}-bit" if q.get("dense_bits") else "") + ")")
    click.echo("schemes  " + ", ".join(f"{k}: {v['tensors']} tensors {fmt_bytes(v['bytes'])}"
                                       for k, v in s["schemes"].items()))
    click.echo(f"{'group':12s} {'dense':>12s} {'experts':>8s} {'per expert':>12s} {'all experts':>12s}  schemes")
    click.echo(f"{'embed':12s} {fmt_bytes(s['embed_bytes']):>12s}")
    for L in s["layers"]:
        click.echo(f"{'layer ' + str(L['layer']):12s} {fmt_bytes(L['dense_bytes']):>12s} {L['experts']:>8d} "
                   f"{fmt_bytes(L['expert_bytes_each']):>12s} {fmt_bytes(L['experts_bytes']):>12s}  "
                   f"{','.join(L['dense_schemes'])}" + (f" / experts {','.join(L['expert_schemes'])}"
                                                         if L["experts"] else ""))
    click.echo(f"{'head':12s} {fmt_bytes(s['head_bytes']):>12s}")
    click.echo(f"weights  {fmt_bytes(s['weights_bytes'])} in {s['tensors']} tensors / {s['groups']} streaming groups")
    rep = s.get("report")
    if rep:
        click.echo(f"export   {fmt_bytes(rep['bytes_before'])} -> {fmt_bytes(rep['bytes_after'])} "
                   f"({rep['ratio']:.2f}x); reconstruction error per class:")
        for k, v in rep["classes"].items():
            click.echo(f"         {k:14s} {','.join(v['schemes']):10s} rel-RMSE {v['rel_rmse']:.4f}  "
                       f"max|err| {v['max_abs_err']:.4g}")
    click.echo("files    " + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in s["files"].items()))
    click.echo(f"total    {fmt_bytes(s['total_bytes'])} on disk = {s['disk_to_weights']:.3f}x the weights")


COMMANDS = [inspect_cmd]
