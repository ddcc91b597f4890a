"""1 vs 2 EMULATED boards, each streaming its share under its own memory budget from its own throttled storage,
over an Ethernet-like and a Wi-Fi-like link: tok/s, TTFT, bytes and messages per token, the solver's prediction;
2 boards pipeline parallel (layer ranges) and/or tensor parallel (each board streams its shard bundle, written by
edgespool.exporters.tensor_shard into --dir once).

    python benchmarks/cluster_bench.py [--model qwen2.5-coder-0.5b | --bundle DIR] [--budget 1/4] [--read-mbps 90]
                                       [--repeats 3] [-n 8] [--links ethernet,wifi] [--modes pipeline,tensor]
                                       [--no-one-board] [--compute-gbps G] [--json OUT]
    python benchmarks/cluster_bench.py --merge OUT1,OUT2,...      # one table from runs saved by --json

A slow model's runs can be split over several invocations (each under the bench lock, e.g. one link each, the
one board only in the first: ``--no-one-board`` in the others, ``--compute-gbps`` from the first's header so all
plans use one rate) and merged: ``--merge`` takes every saved run (same bundle, budget, throttle and prompt: it
refuses files that differ) and prints the medians.

Each board is a network namespace with its own rig cgroup: memory limit (page cache included) = its budget + an
allowance for the interpreter, a blkio read throttle of ``--read-mbps`` on the disk holding the bundle (a Pi 5
microSD reads ~90 MB/s; the throttle is per board, so each board has "its own storage"), and one CPU core (this
machine has 2, shared with other agents). Links: tc tbf rate on each board's veth plus a SIMULATED one-way latency
(a sleep before each MPI send: netem is absent on this kernel). Runs are interleaved (1 board, then 2 boards on
each link, repeated); medians. The one-board baseline runs on the same emulated board setup (cgroup, throttle, one
core) with the same budget."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

PROMPT_TEXT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n"

MiB = 1 << 20


def export(name: str, out: Path) -> Path:
    if not (out / "manifest.json").exists():
        from edgespool.apps.assets import fetch
        from edgespool.exporters.compress import QuantPolicy
        from edgespool.exporters.export import export_model, open_source

        src = open_source(str(fetch(name)))
        try:
            export_model(src, out, policy=QuantPolicy(quant="int8"), onnx=False, progress=False)
        finally:
            src.close()
    return out


def solve(bundle, k: int, budget: int, storage_bps: float, compute_bps: float, link, max_context: int):
    """The solver's plan over exactly k boards (every board used: the bench compares 1 with 2)."""
    from edgespool.apps.cluster.solve import board_specs, head_bytes, layer_bytes
    from edgespool.schedulers.cluster_plan import plan_on

    boards = board_specs([f"board{i}" for i in range(k)], [budget] * k, [storage_bps] * k, [compute_bps] * k,
                         bundle, max_context)
    return plan_on(boards, layer_bytes(bundle), head_bytes(bundle), 4 * bundle.config.hidden_size, link)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--budget", default="1/4", help="each board's memory budget: a size or a fraction of the model")
    ap.add_argument("--read-mbps", type=float, default=90.0, help="each board's storage read throttle (MB/s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--links", default="ethernet,wifi")
    ap.add_argument("--dir", default="/var/tmp", help="where the bundle is exported (a disk, for the throttle)")
    ap.add_argument("--json", default="", help="also write the raw runs here")
    ap.add_argument("--bundle", default="", help="an exported bundle to use (on a disk) instead of --model")
    ap.add_argument("--modes", default="pipeline", help="multi-board modes: pipeline, tensor or both (comma-separated)")
    ap.add_argument("--boards", default="2", help="multi-board counts (comma-separated, e.g. 2,4); tensor mode runs "
                    "only where the model's KV heads split evenly")
    ap.add_argument("--tensor-no-kernels", action="store_true",
                    help="tensor mode with the numpy reference kernels (streamed shards + the bundle's C kernels "
                         "give wrong tokens: docs/CLUSTER.md)")
    ap.add_argument("--label", default="", help="the model's name in the report (default: --model, or the bundle's "
                    "folder name with --bundle)")
    ap.add_argument("--no-one-board", action="store_true", help="skip the one-board runs (merge with a file that has them)")
    ap.add_argument("--compute-gbps", type=float, default=0.0,
                    help="the boards' compute rate in GB/s of weights for the plans (default: measured on one core, through the "
                         "streaming source the boards use)")
    ap.add_argument("--merge", default="", help="print one table from these --json files (comma-separated); no runs")
    a = ap.parse_args()
    if a.merge:
        print_table(merge([f for f in a.merge.split(",") if f]))
        return
    from edgespool.apps.cluster.boards import BoardLimits, EmulatedBoards
    from edgespool.apps.cluster.launch import run_cluster, worker_command
    from edgespool.apps.cluster.solve import measure_one_core_bps, parse_budget, parse_link
    from edgespool.runtime.bundle.reader import Bundle

    path = Path(a.bundle) if a.bundle else export(a.model, Path(a.dir) / f"edgespool-cluster-bench-{a.model}-int8")
    b = Bundle(path)
    L = b.config.num_layers
    budget = parse_budget(a.budget, b.weights_nbytes)
    storage_bps = a.read_mbps * 1e6
    label = a.label or (path.name if a.bundle else a.model)
    if a.compute_gbps > 0:
        compute_bps = a.compute_gbps * 1e9
    else:
        os.environ["EDGESPOOL_THREADS"] = "1"  # (the workers inherit it: one thread a board)
        # the compute rate of ONE core of this machine (each board has one), through the streaming source the
        # boards run (every group pinned: the compute side only)
        compute_bps = measure_one_core_bps(b)
    links = [parse_link(x) for x in a.links.split(",")]
    ctx = 64
    # a real code prompt: on arbitrary token ids the logits are nearly flat and a greedy argmax flips between
    # kernel families (the C kernels' int8 activations vs the numpy reference) on ties a few 0.01 apart
    from edgespool.runtime.decoder.tokenizer import BundleTokenizer

    prompt = BundleTokenizer.from_manifest(b.path, b.manifest["tokenizer"]).encode(PROMPT_TEXT)[:16]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not set(modes) <= {"pipeline", "tensor"}:
        raise SystemExit(f"--modes {a.modes!r}: pipeline and/or tensor")
    counts = sorted({int(x) for x in a.boards.split(",") if x.strip()})
    if not counts or min(counts) < 2:
        raise SystemExit(f"--boards {a.boards!r}: board counts of 2 or more")
    kv = b.config.num_kv_heads
    # (boards, mode) in run order; tensor mode splits KV heads, so it needs k | num_kv_heads
    setups = [(k, m) for k in counts for m in modes if m == "pipeline" or kv % k == 0]
    skipped = [k for k in counts if "tensor" in modes and kv % k]
    if skipped:
        print(f"  tensor mode skipped on {skipped} boards: {kv} KV heads do not split evenly", file=sys.stderr)
    shards: dict[int, list] = {}
    plans = {}
    for k, mode in setups:
        if mode == "tensor" and k not in shards:
            from edgespool.apps.cluster.tensor_cli import shard_cache, tensor_plan, tp_worker_command

            shards[k] = shard_cache(b, k, str(Path(a.dir) / f"{path.name}.tp-shards{'' if k == 2 else k}"))
    for ln in links:
        plans[(1, "one", ln.name)] = solve(b, 1, budget, storage_bps, compute_bps, ln.spec, ctx)
        for k, mode in setups:
            if mode == "pipeline":
                plans[(k, mode, ln.name)] = solve(b, k, budget, storage_bps, compute_bps, ln.spec, ctx)
            else:
                plans[(k, mode, ln.name)] = tensor_plan(shards[k], [budget] * k, [storage_bps] * k, compute_bps,
                                                        ctx, ln.spec)
    limits = BoardLimits(memory=budget + 600 * MiB, read_bps=int(storage_bps), storage=(str(path),),
                         cpus=tuple(range(min(max(2, *counts), os.cpu_count() or 1))))
    meta = {"label": label, "weights_mib": b.weights_nbytes / MiB, "layers": L, "budget": budget,
            "budget_text": a.budget, "read_mbps": a.read_mbps, "compute_bps": compute_bps, "prompt": prompt,
            "n": a.n, "bundle": str(path.resolve()), "machine_cores": os.cpu_count() or 1}
    plan_out = {f"{k}-{mode}-{lname}": {"predicted_tok_s": 1 / plan.token_s, "plan": plan.summary(),
                                        "layers": layers_text(mode, plan)}
                for (k, mode, lname), plan in plans.items()}
    runs: list[dict] = []
    for _ in range(a.repeats):
        for ln in links:
            for k, mode in [(1, "one")] + setups:
                if k == 1 and (ln is not links[0] or a.no_one_board):
                    continue  # one board sends nothing: its run serves every link
                plan = plans[(k, mode, ln.name)]
                if mode == "tensor":
                    worker = tp_worker_command(str(path), shards[k], prompt, a.n, max_context=ctx, budget=budget,
                                               prefill_chunk=16, timeout_s=300)
                    if a.tensor_no_kernels:
                        worker.append("--no-kernels")
                else:
                    ranges = [(s.start, s.stop) for s in plan.stages]
                    worker = worker_command(str(path), ranges, prompt, a.n, max_context=ctx, budgets=[budget] * k,
                                            prefill_chunk=16, timeout_s=300)
                worker += ["--simulated-latency-ms", f"{ln.rtt_ms / 2:g}"]
                t0 = time.strftime("%H:%M:%S", time.gmtime())
                with EmulatedBoards(k, rate_mbit=ln.rate_mbit, limits=limits) as boards:
                    run = run_cluster(boards.mpirun_args(), worker, timeout_s=1200)
                    cg = boards.board_stats()
                    meta["mechanisms"] = boards.mechanisms
                runs.append({"boards": k, "mode": mode, "link": ln.name, "rate_mbit": ln.rate_mbit, "rtt_ms": ln.rtt_ms,
                             "tokens": run.tokens, "decode_tok_s": run.decode_tok_s, "ttft_s": run.ttft_s,
                             "ranks": run.ranks, "cgroups": cg, "started_utc": t0})
                print(f"  {k} board(s) {mode} {ln.name}: {run.decode_tok_s:.3f} tok/s, TTFT {run.ttft_s:.1f} s",
                      file=sys.stderr, flush=True)
                if a.json:  # after every run: a command stopped by a time limit keeps what it measured
                    Path(a.json).write_text(json.dumps({"meta": meta, "plans": plan_out, "runs": runs}, indent=1))
    saved = {"meta": meta, "plans": plan_out, "runs": runs}
    print_table(saved)


def layers_text(mode: str, plan) -> str:
    if mode == "tensor":
        return "all (1/2 of each)"
    return "/".join(f"{s.start}-{s.stop - 1}" for s in plan.stages)


def merge(files: list[str]) -> dict:
    """The runs of several ``--json`` files as one (their bundle, budget, throttle, prompt and n must agree)."""
    out: dict | None = None
    for f in files:
        d = json.loads(Path(f).read_text())
        if out is None:
            out = {"meta": d["meta"], "plans": dict(d["plans"]), "runs": list(d["runs"])}
            continue
        for key in ("bundle", "budget", "read_mbps", "prompt", "n"):
            if d["meta"][key] != out["meta"][key]:
                raise SystemExit(f"--merge {f}: its {key} ({d['meta'][key]!r}) differs from the first file's "
                                 f"({out['meta'][key]!r})")
        out["plans"].update({k: v for k, v in d["plans"].items() if k not in out["plans"]})
        out["runs"] += d["runs"]
    if out is None:
        raise SystemExit("--merge: give at least one file")
    return out


def print_table(saved: dict) -> None:
    """The markdown table (medians over the runs of each boards / mode / link) and the plans."""
    meta, plans, runs = saved["meta"], saved["plans"], saved["runs"]
    one = [r for r in runs if r["boards"] == 1]
    if not one:
        raise SystemExit("no one-board run to compare with (run once without --no-one-board)")
    base_tokens, base = one[0]["tokens"], statistics.median(r["decode_tok_s"] for r in one)
    times = sorted(r.get("started_utc", "") for r in runs)
    print(f"model {meta['label']} int8 ({meta['weights_mib']:.0f} MiB of weights, {meta['layers']} layers); each "
          f"board: budget {meta['budget'] / MiB:.0f} MiB ({meta['budget_text']} of the model), storage throttled to "
          f"{meta['read_mbps']:g} MB/s, one core; compute rate measured on one core here: "
          f"{meta['compute_bps'] / 1e9:.2f} GB/s of weights")
    cores = meta.get("machine_cores", 2)
    print(f"EMULATED boards: network namespaces + rig cgroups on one {cores}-core machine"
          f"{' (a VM shared with other agents)' if cores <= 2 else ''}; link latency "
          f"SIMULATED (sleep before each send); limits: {'; '.join(meta.get('mechanisms', []))}")
    print(f"runs started {times[0]}..{times[-1]} UTC; medians; prompt {len(meta['prompt'])} tokens, {meta['n']} "
          "generated")
    print("| boards | mode | link | layers per board | runs | decode tok/s | x 1 board | predicted tok/s | TTFT s | "
          "streamed MB/token per board (plan) | link bytes/token | messages/token | peak MiB per board | tokens = 1 board |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        link = "-" if r["boards"] == 1 else r["link"]
        groups.setdefault((r["boards"], r["mode"], link), []).append(r)
    for (k, mode, lname), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        r0 = rs[0]
        tps = statistics.median(r["decode_tok_s"] for r in rs)
        ttft = statistics.median(r["ttft_s"] for r in rs)
        ntok = max(1, len(r0["tokens"]))
        if k == 1:
            link_b = msgs = 0
        elif mode == "tensor":  # every message every rank sent (allreduce chunks + the token exchange)
            link_b = sum(o["sent_bytes"] for o in r0["ranks"])
            msgs = sum(o["sent_messages"] for o in r0["ranks"])
        else:
            link_b = sum(o["link"]["sent_bytes"] for o in r0["ranks"])
            msgs = sum(o["link"]["sent_messages"] for o in r0["ranks"])
        streamed = "/".join(f"{o['streamed_per_token'] / 1e6:.0f}" for o in r0["ranks"])
        peak = "/".join(f"{(c['peak_memory'] or 0) / MiB:.0f}" for c in r0["cgroups"])
        plan = plans[f"{k}-{mode}-{r0['link']}"]
        same = all(r["tokens"] == base_tokens for r in rs)
        linktext = "-" if k == 1 else f"{lname} ({r0['rate_mbit']:g} Mbit, {r0['rtt_ms']:g} ms RTT)"
        print(f"| {k} | {mode} | {linktext} | {plan['layers']} | {len(rs)} | {tps:.3f} | {tps / base:.2f} | "
              f"{plan['predicted_tok_s']:.3f} | {ttft:.1f} | {streamed} | {link_b / ntok:.0f} | {msgs / ntok:.2f} | "
              f"{peak} | {'yes' if same else 'NO'} |")
    print("decode tok/s of each run: " + "; ".join(
        f"{k}/{mode}/{ln}: " + ", ".join(f"{r['decode_tok_s']:.3f}" for r in rs) for (k, mode, ln), rs in groups.items()))
    for key, v in plans.items():
        print(f"plan {key}: {v['plan']}")


if __name__ == "__main__":
    main()
