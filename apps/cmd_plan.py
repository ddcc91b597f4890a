"""`edgespool plan MODEL --activation-budget 256KiB [--max-overhead 15%] [--json]`: patch-based plan candidates."""
from __future__ import annotations

import json

import click

from ..errors import OptionError
from ..units import parse_bytes


def parse_percent(text: str | None, option: str = "--max-overhead") -> float | None:
    """'15%' / '15' / '0.15' -> 0.15 (values > 1 without % are read as percent)."""
    if text is None:
        return None
    s = str(text).strip()
    try:
        v = float(s.rstrip("%"))
    except ValueError:
        raise OptionError(f"{option}: cannot parse {text!r} as a percentage (e.g. 15%)") from None
    if s.endswith("%") or v > 1:
        v /= 100.0
    if v < 0:
        raise OptionError(f"{option}: {text!r} must be >= 0")
    return v


@click.command("plan")
@click.argument("model", type=click.Path())
@click.option("--activation-budget", help="Activation memory budget, e.g. 256KiB: pick the fewest extra MACs "
                                          "that fit.")
@click.option("--max-overhead", help="Cap on extra MACs, e.g. 15% (default 15% without a budget).")
@click.option("--input-shape", help="Fix a dynamic ONNX input shape, e.g. 1,3,224,224.")
@click.option("--width", default=1.0, show_default=True, type=float, help=".pth MobileNetV2 width multiplier.")
@click.option("--resolution", default=224, show_default=True, type=int, help=".pth MobileNetV2 input resolution.")
@click.option("--f32", "f32", is_flag=True, help="Count 4-byte float activations instead of int8.")
@click.option("--top", default=12, show_default=True, type=int, help="Candidates to print (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan and candidates as JSON.")
def plan_cmd(model: str, activation_budget: str | None, max_overhead: str | None, input_shape: str | None,
             width: float, resolution: int, f32: bool, top: int, as_json: bool) -> None:
    """Plan patch-based (MCUNetV2) inference of a CNN: split point, patch grid, peak bytes, extra MACs."""
    from ..exporters.cnn.export import plan_for

    budget = parse_bytes(activation_budget, "--activation-budget") if activation_budget else None
    shape = None
    if input_shape:
        try:
            shape = tuple(int(v) for v in input_shape.split(","))
        except ValueError:
            raise OptionError(f"--input-shape {input_shape!r}: expected comma-separated integers") from None
    plan = plan_for(model, activation_budget=budget, max_overhead=parse_percent(max_overhead), input_shape=shape,
                    width=width, resolution=resolution, itemsize=4 if f32 else 1)
    if as_json:
        click.echo(json.dumps(plan.to_dict(with_regions=False), indent=1))
        return
    click.echo(str(plan))
    click.echo(f"memory: {'f32' if f32 else 'int8'} activations, input + output of the running layer + every "
               "tensor still needed (residuals); stage 1 also holds its output buffer and the input image")
    cands = plan.candidates if top <= 0 else plan.candidates[:top]
    click.echo(f"candidates (best peak first{'' if top <= 0 else f', top {len(cands)} of {len(plan.candidates)}'}):")
    for c in cands:
        mark = "*" if (c.split_index, c.grid) == (plan.chosen.split_index, plan.chosen.grid) else " "
        click.echo(f" {mark} {c.row()}")


COMMANDS = [plan_cmd]
