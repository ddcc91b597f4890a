"""`edgespool deploy BUNDLE DEVICE [--run PROMPT | --bench]` and `edgespool rollback DEVICE` (docs/DEPLOY.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..units import fmt_bytes


@click.command("deploy")
@click.argument("bundle", type=click.Path())
@click.argument("device", required=False)
@click.option("--cluster", default=None,
              help="Split the model over these registered devices (comma-separated, in board order): each board "
                   "gets only its share (docs/CLUSTER.md); then `edgespool run BUNDLE --cluster` the same list.")
@click.option("--cluster-mode", type=click.Choice(["pipeline", "tensor"]), default="pipeline", show_default=True,
              help="With --cluster: layer ranges per board (pipeline) or each board's tensor shard (tensor).")
@click.option("--cluster-ranges", default=None,
              help="With --cluster-mode pipeline: the layer ranges A:B,B:C,... (e.g. `edgespool cluster plan`'s "
                   "cut; default: about equal bytes a board, the cut `run --cluster` uses).")
@click.option("--work", default=None, help="With --cluster: where the shares are written (default "
                                           "BUNDLE.cluster-shares/).")
@click.option("--memory-budget", default=None, help="The budget the bundle will run under on the board (checked "
                                                    "against its memory; passed to --run / --bench).")
@click.option("--wheel", default=None, type=click.Path(dir_okay=False),
              help="An edgespool wheel to install on the board first (offline; only when it differs).")
@click.option("--keep", default=3, show_default=True, type=int, help="Earlier releases kept for rollback.")
@click.option("--run", "run_prompt", default=None, help="Then generate from this prompt on the board (streamed).")
@click.option("-n", "--max-tokens", "n", default=32, show_default=True, type=int, help="Tokens for --run / --bench.")
@click.option("--bench", is_flag=True, help="Then run `edgespool bench` on the board (repeats + warm-up).")
@click.option("--repeat", default=3, show_default=True, type=int, help="--bench: timed runs.")
@click.option("--warmup", default=1, show_default=True, type=int, help="--bench: discarded runs first.")
@click.option("--prompt-tokens", default=32, show_default=True, type=int, help="--bench: prompt length.")
@click.option("--read-test-size", default="32MiB", show_default=True, help="Cold-read test on the board (0 = skip).")
@click.option("--retries", default=2, show_default=True, type=int,
              help="Reconnect and resume this many times when the connection drops.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (deploy + board facts + bench).")
def deploy_cmd(bundle: str, device: str | None, memory_budget: str | None, wheel: str | None, keep: int,
               run_prompt: str | None, n: int, bench: bool, repeat: int, warmup: int, prompt_tokens: int,
               read_test_size: str, retries: int, as_json: bool, cluster: str | None = None,
               cluster_mode: str = "pipeline", cluster_ranges: str | None = None, work: str | None = None) -> None:
    """Ship BUNDLE to DEVICE: preflight, send the chunks it lacks, verify and switch `current` atomically; with
    --cluster, each listed device gets only its share of the model."""
    from ..errors import OptionError
    from ..units import parse_bytes
    from .deploy.deploy import (
        bench_remote,
        connect,
        deploy_with_retries,
        read_test_bytes,
        run_remote,
    )
    from .deploy.registry import Registry

    if run_prompt is not None and bench:
        raise OptionError("--run and --bench: pick one")
    if keep < 0:
        raise OptionError("--keep must be >= 0")
    if cluster is not None or device is None:
        _deploy_cluster(bundle, device, cluster, cluster_mode, cluster_ranges, work, memory_budget, wheel, keep,
                        run_prompt is not None or bench, read_test_size, retries, as_json)
        return
    if cluster_mode != "pipeline" or cluster_ranges is not None or work is not None:
        raise OptionError("--cluster-mode / --cluster-ranges / --work only apply with --cluster")
    reg = Registry()
    dev = reg.get(device)
    budget = parse_bytes(memory_budget, "--memory-budget") if memory_budget else None

    def progress(done: int, total: int) -> None:
        if not as_json and sys.stderr.isatty():
            click.echo(f"\r  sent {fmt_bytes(done)} / {fmt_bytes(total)}", nl=False, err=True)

    if retries < 0:
        raise OptionError("--retries must be >= 0")

    def on_retry(n_try: int, e: Exception) -> None:
        click.echo(f"  {e} (retry {n_try}/{retries})", err=True)

    res = deploy_with_retries(bundle, dev, reg, retries=retries, on_retry=on_retry, memory_budget=budget, wheel=Path(wheel) if wheel else None, keep=keep,
                 read_test_bytes=read_test_bytes(read_test_size),
                 need_edgespool=bool(run_prompt is not None or bench), progress=progress)
    out = res.to_dict()
    if not as_json:
        if sys.stderr.isatty():
            click.echo("", err=True)
        click.echo(f"{device}: release {res.release[:12]} is current ({res.chunks_sent}/{res.chunks_total} chunks, "
                   f"{fmt_bytes(res.bytes_sent)} of {fmt_bytes(res.bytes_total)} sent as {fmt_bytes(res.payload_sent)} in "
                   f"{res.seconds:.2f} s; "
                   + (f"{res.crc_checked_tensors} tensors CRC-checked on the board)" if res.crc_checked_tensors
                      is not None else "release already on the board, re-verified before the switch)"), err=True)
        if res.wheel:
            click.echo(f"  edgespool {res.wheel['version']} "
                       f"{'installed' if res.wheel['installed'] else 'already installed'} on the board", err=True)
        for note in res.fit.get("notes", []):
            click.echo(f"  note: {note}", err=True)
    budget_args = ["--memory-budget", memory_budget] if memory_budget else []
    if run_prompt is not None or bench:
        with connect(dev, reg) as s:
            if run_prompt is not None:
                def emit(stream: str, data: str) -> None:
                    click.echo(data, nl=False, err=stream == "stderr")
                    (sys.stderr if stream == "stderr" else sys.stdout).flush()

                args = ["run", "current", "--prompt", run_prompt, "-n", str(n), *budget_args]
                if as_json:
                    buf: list[str] = []
                    r = run_remote(s, args + ["--json"], lambda st, d: buf.append(d) if st == "stdout" else None)
                    out["run"] = json.loads("".join(buf)) if r["exit"] == 0 else None
                else:
                    r = run_remote(s, args, emit)
                out["run_exit"] = r["exit"]
            else:
                out["bench"] = bench_remote(s, [*budget_args, "-n", str(n), "--prompt-tokens", str(prompt_tokens)],
                                            repeats=repeat, warmup=warmup)
                if not as_json:
                    med = out["bench"]["median"]
                    th = out["bench"]["thermal_after"]
                    click.echo(f"bench on {device} (median of {repeat}, {warmup} warm-up): "
                               + ", ".join(f"{k} {v:.3g}" for k, v in med.items())
                               + f"; governor {th.get('governor') or '-'}, temperatures {th.get('temperatures_c') or '-'}")
            s.request("bye")
    if as_json:
        click.echo(json.dumps(out, indent=1))
    if out.get("run_exit"):
        raise click.exceptions.Exit(out["run_exit"])


def _deploy_cluster(bundle: str, device: str | None, cluster: str | None, mode: str, ranges: str | None,
                    work: str | None, memory_budget: str | None, wheel: str | None, keep: int, run_or_bench: bool,
                    read_test_size: str, retries: int, as_json: bool) -> None:
    """``deploy BUNDLE --cluster dev1,dev2``: each board's share, one ssh deploy per board (apps/deploy/cluster_deploy)."""
    from ..errors import OptionError
    from ..runtime.bundle.reader import Bundle
    from .cluster.solve import parse_budget
    from .deploy.cluster_deploy import deploy_cluster
    from .deploy.deploy import read_test_bytes
    from .deploy.registry import Registry

    if cluster is None:
        raise OptionError("missing DEVICE (or --cluster dev1,dev2,... to split the model over several boards)")
    if device is not None:
        raise OptionError(f"give DEVICE {device!r} or --cluster, not both")
    if run_or_bench:
        raise OptionError("--run / --bench do not apply with --cluster; run `edgespool run BUNDLE --cluster "
                          f"{cluster} -p ...` after the deploy")
    if ranges is not None and mode != "pipeline":
        raise OptionError("--cluster-ranges only applies with --cluster-mode pipeline")
    budget = parse_budget(memory_budget, Bundle(bundle).weights_nbytes, "--memory-budget") if memory_budget else None

    def on_board(row: dict) -> None:
        if not as_json:
            pct = 100.0 * row["share_bytes"] / row["whole_bytes"] if row["whole_bytes"] else 0.0
            click.echo(f"board {row['rank']} {row['device']}: {row['holds']}: share {fmt_bytes(row['share_bytes'])} "
                       f"of the whole bundle's {fmt_bytes(row['whole_bytes'])} ({pct:.0f}%), sent "
                       f"{fmt_bytes(row['bytes_sent'])} in {row['seconds']:.2f} s; release {row['release'][:12]} is "
                       "current", err=True)

    out = deploy_cluster(bundle, cluster, mode, Registry(), ranges_text=ranges, work=work, memory_budget=budget,
                         keep=keep, read_test_bytes=read_test_bytes(read_test_size), retries=retries,
                         wheel=Path(wheel) if wheel else None, on_board=on_board,
                         on_retry=lambda i, e: click.echo(f"  {e} (retry {i}/{retries})", err=True))
    if as_json:
        click.echo(json.dumps(out, indent=1))
    else:
        sent = sum(r["bytes_sent"] for r in out["boards"])
        click.echo(f"{mode} cluster of {len(out['boards'])} boards: {fmt_bytes(sent)} sent in all; run it with "
                   f"`edgespool run {bundle} --cluster {cluster}" + (" --cluster-mode tensor" if mode == "tensor"
                                                                     else "") + " -p ...`", err=True)


@click.command("rollback")
@click.argument("device")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def rollback_cmd(device: str, as_json: bool) -> None:
    """Point DEVICE's `current` back at the release before it (verified on the board first)."""
    from .deploy.deploy import rollback
    from .deploy.registry import Registry

    reg = Registry()
    res = rollback(reg.get(device), reg)
    if as_json:
        click.echo(json.dumps(res, indent=1))
    else:
        click.echo(f"{device}: current is now {res['current'][:12]} (was {(res['previous'] or 'none')[:12]})")


COMMANDS = [deploy_cmd, rollback_cmd]
