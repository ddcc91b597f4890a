"""`edgespool targets`: list the named target profiles."""
from __future__ import annotations

import json

import click

from ..targets import get_target, target_names
from ..units import fmt_bytes


@click.command("targets")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def targets_cmd(name: str | None, as_json: bool) -> None:
    """List target profiles (or show one): ISA, cores, RAM, storage, GPU, TVM target."""
    profiles = [get_target(name)] if name else [get_target(n) for n in target_names()]
    if as_json:
        data = [p.to_dict() for p in profiles]
        click.echo(json.dumps(data[0] if name else data, indent=1))
        return
    for p in profiles:
        st = ", ".join(
            f"{s.medium} {s.read_bandwidth / 1e6:.0f} MB/s {s.read_iops} IOPS" if s.read_bandwidth else f"{s.medium} (unmeasured)"
            for s in p.storage)
        gpu = f"{p.gpu.name} {p.gpu.arch} {fmt_bytes(p.gpu.memory)}{' shared' if p.gpu.shared_memory else ''}" if p.gpu else "-"
        mem = f"{fmt_bytes(p.ram)} {'SRAM' if p.kind == 'mcu' else 'RAM'}" + (f", {fmt_bytes(p.flash)} flash" if p.flash else "")
        click.echo(f"{p.name:17s} {p.isa:8s} {p.cpu:12s} {p.cores} cores  {mem}")
        click.echo(f"{'':17s} storage: {st}")
        click.echo(f"{'':17s} gpu: {gpu}   features: {','.join(p.features) or '-'}")
        click.echo(f"{'':17s} {p.description}")


COMMANDS = [targets_cmd]
