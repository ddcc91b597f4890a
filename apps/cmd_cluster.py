"""`edgespool cluster plan BUNDLE --boards rpi5,rpi5,rpi4`: the pipeline-parallel assignment of layers to boards
with the predicted per-token compute / I/O / link split (issue 19, docs/CLUSTER.md). `edgespool run BUNDLE
--cluster ...` runs it (apps/cluster/cli_run.py)."""
from __future__ import annotations

import click


def _board_list(text: str) -> list[tuple[str, str, str | None]]:
    """``NAME=TARGET@MEDIUM,...`` (NAME= and @MEDIUM optional) -> [(name, target, medium)]."""
    from ..errors import OptionError

    out = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        if not part:
            raise OptionError(f"--boards {text!r}: an empty board name (expected TARGET[@MEDIUM],...)")
        name, _, spec = part.rpartition("=")
        target, _, medium = spec.partition("@")
        out.append((name or f"{target}-{i}", target, medium or None))
    return out


@click.group("cluster")
def cluster_group() -> None:
    """A model split across several boards (pipeline parallel over MPI; docs/CLUSTER.md)."""


@cluster_group.command("plan")
@click.argument("bundle", type=click.Path())
@click.option("--boards", required=True,
              help="Boards in pipeline order: TARGET[@MEDIUM] or NAME=TARGET[@MEDIUM], comma-separated "
                   "(targets: `edgespool targets`), e.g. a=rpi5,b=rpi5@microsd,c=rpi4.")
@click.option("--budget", default=None,
              help="Each board's memory budget: a size (512MiB) or a fraction of the model (1/4); one value for all "
                   "or one per board, comma-separated (default: each target's RAM).")
@click.option("--link", "link_text", default="ethernet", show_default=True,
              help="ethernet (1 Gbit/s, 0.3 ms RTT), wifi (100 Mbit/s, 10 ms RTT) or MBIT:RTT_MS.")
@click.option("--compute-gbps", default=None, type=float,
              help="The boards' decode rate in GB/s of weights (default: measured on ONE core of this machine).")
@click.option("--max-context", default=256, show_default=True, type=int, help="KV cache positions planned.")
@click.option("--mode", type=click.Choice(["pipeline", "tensor"]), default="pipeline", show_default=True,
              help="pipeline: layer ranges per board; tensor: every board streams its shard of every layer "
                   "(writes / reuses the shard bundles, see --work).")
@click.option("--work", default=None, help="With --mode tensor: the shard bundles' cache (default BUNDLE.tp-shards/).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def plan_cmd(bundle: str, boards: str, budget: str | None, link_text: str, compute_gbps: float | None,
             max_context: int, as_json: bool, mode: str = "pipeline", work: str | None = None) -> None:
    """Assign contiguous layer ranges to boards (dropping boards that slow the whole) and predict tok/s; with
    --mode tensor, predict a tensor-parallel run over all the boards."""
    import json

    from .cluster.solve import board_specs, head_bytes, layer_bytes, parse_budget, parse_link
    from ..errors import OptionError
    from ..runtime.bundle.reader import Bundle
    from ..schedulers.cluster_plan import plan_cluster
    from ..targets.profiles import get_target
    from ..units import fmt_bytes

    link = parse_link(link_text)
    specs = _board_list(boards)
    b = Bundle(bundle)
    if b.config is None:
        raise OptionError(f"{bundle}: cluster plans split decoder bundles (this one is {b.kind!r})")
    if max_context < 1 or max_context > b.config.max_position_embeddings:
        raise OptionError(f"--max-context {max_context}: must be in 1..{b.config.max_position_embeddings}")
    if compute_gbps is not None and compute_gbps <= 0:
        raise OptionError(f"--compute-gbps {compute_gbps:g}: must be > 0")
    profiles = [get_target(t) for _, t, _ in specs]
    storage = [p.storage_medium(m).read_bandwidth for p, (_, _, m) in zip(profiles, specs)]
    vals = [v for v in (budget or "").split(",")] if budget else []
    if vals and len(vals) not in (1, len(specs)):
        raise OptionError(f"--budget: {len(vals)} values for {len(specs)} boards (give one, or one per board)")
    budgets = [parse_budget(vals[0 if len(vals) == 1 else i], b.weights_nbytes) if vals else p.ram
               for i, p in enumerate(profiles)]
    if compute_gbps is None:
        from .cluster.solve import measure_one_core_bps

        rate = measure_one_core_bps(b)
        rate_note = f"measured on one core of THIS machine ({rate / 1e9:.2f} GB/s), not on the boards"
    else:
        rate, rate_note = compute_gbps * 1e9, f"given: {compute_gbps:g} GB/s"
    if work is not None and mode != "tensor":
        raise OptionError("--work only applies with --mode tensor")
    if mode == "tensor":
        from .cluster.tensor_cli import shard_cache, tensor_plan

        shards = shard_cache(b, len(specs), work)
        tp = tensor_plan(shards, budgets, storage, rate, max_context, link.spec, [n for n, _, _ in specs])
        if as_json:
            click.echo(json.dumps({"mode": "tensor", "predicted_tok_s": 1 / tp.token_s, "token_s": tp.token_s,
                                   "link_s": tp.link_s, "allreduces_per_token": tp.allreduces,
                                   "compute_rate_bps": rate, "shards": [str(p) for p in shards],
                                   "boards": [dict(board=s.board, compute_s=s.compute_s, io_s=s.io_s)
                                              for s in tp.boards]}, indent=1))
            return
        click.echo(f"tensor-parallel plan for {b.path.name} ({fmt_bytes(b.weights_nbytes)}, {b.config.num_layers} "
                   f"layers) on {len(specs)} boards, link {link.name} ({link.rate_mbit:g} Mbit/s, {link.rtt_ms:g} ms "
                   f"RTT); shard bundles in {shards[0].parent}:")
        click.echo(tp.summary())
        click.echo(f"  compute rate: {rate_note}")
        click.echo("  run it: edgespool run BUNDLE --cluster emulated:N --cluster-mode tensor")
        return
    bs = board_specs([n for n, _, _ in specs], budgets, storage, [rate] * len(specs), b, max_context)
    plan = plan_cluster(bs, layer_bytes(b), head_bytes(b), 4 * b.config.hidden_size, link.spec)
    used = {s.board for s in plan.stages}
    dropped = [n for n, _, _ in specs if n not in used]
    if as_json:
        click.echo(json.dumps({"predicted_tok_s": 1 / plan.token_s, "token_s": plan.token_s, "link_s": plan.link_s,
                               "compute_rate_bps": rate, "dropped": dropped,
                               "stages": [dict(board=s.board, start=s.start, stop=s.stop, compute_s=s.compute_s,
                                               io_s=s.io_s) for s in plan.stages]}, indent=1))
        return
    click.echo(f"pipeline plan for {b.path.name} ({fmt_bytes(b.weights_nbytes)}, {b.config.num_layers} layers) on "
               f"{len(specs)} boards, link {link.name} ({link.rate_mbit:g} Mbit/s, {link.rtt_ms:g} ms RTT):")
    click.echo(plan.summary())
    for (n, t, m), p, bud, st in zip(specs, profiles, budgets, storage):
        click.echo(f"  board {n}: {t} ({p.storage_medium(m).medium} {st / 1e6:.0f} MB/s), budget {fmt_bytes(bud)}"
                   + ("  [dropped: it slows the whole]" if n in dropped else ""))
    click.echo(f"  compute rate: {rate_note}")
    click.echo("  run it: edgespool run BUNDLE --cluster emulated:N (emulated boards) or --cluster host1,host2 (ssh)")


COMMANDS = [cluster_group]
