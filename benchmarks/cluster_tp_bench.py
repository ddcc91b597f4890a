"""Tensor parallel vs pipeline parallel vs one board, resident weights, on EMULATED boards (one core each), over an
Ethernet-like and a Wi-Fi-like link: decode tok/s, TTFT, allreduce calls / bytes / time per token.

    python benchmarks/cluster_tp_bench.py [--model qwen2.5-coder-0.5b] [--repeats 3] [-n 16]

Each board: a network namespace + rig cgroup (one core, memory limit = model + 600 MiB), weights resident (tensor
parallel shards are resident only). Links: tc tbf rate + a SIMULATED one-way latency (sleep before each MPI send).
Runs interleaved (1 board, then per link: pipeline 2, tensor ring 2, tensor star 2; repeated); medians."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_bench import export  # noqa: E402

MiB = 1 << 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--links", default="ethernet,wifi")
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    from edgespool.apps.cluster.boards import BoardLimits, EmulatedBoards
    from edgespool.apps.cluster.cli_run import even_bytes_ranges
    from edgespool.apps.cluster.launch import run_cluster, worker_command
    from edgespool.apps.cluster.solve import head_bytes, layer_bytes, parse_link
    from edgespool.runtime.bundle.reader import Bundle

    path = export(a.model, Path(a.dir) / f"edgespool-cluster-bench-{a.model}-int8")
    b = Bundle(path)
    prompt = [1] + list(range(100, 115))
    links = [parse_link(x) for x in a.links.split(",")]
    limits = BoardLimits(memory=b.weights_nbytes + 600 * MiB, cpus=tuple(range(min(2, os.cpu_count() or 1))))
    ranges = even_bytes_ranges(layer_bytes(b), head_bytes(b), 2)

    def cmd(mode: str, ln) -> tuple[int, list[str]]:
        lat = f"{ln.rtt_ms / 2:g}"
        if mode == "one":
            return 1, worker_command(str(path), [(0, b.config.num_layers)], prompt, a.n, max_context=64)
        if mode == "pipeline":
            return 2, worker_command(str(path), ranges, prompt, a.n, max_context=64) + ["--simulated-latency-ms", lat]
        return 2, [sys.executable, "-m", "edgespool.apps.cluster.tp_worker", str(path), "--allreduce", mode,
                   "--prompt-ids", ",".join(map(str, prompt)), "-n", str(a.n), "--simulated-latency-ms", lat]

    runs: dict[tuple[str, str], list] = {}
    for _ in range(a.repeats):
        for ln in links:
            for mode in ("one", "pipeline", "ring", "star"):
                if mode == "one" and ln is not links[0]:
                    continue
                k, worker = cmd(mode, ln)
                with EmulatedBoards(k, rate_mbit=ln.rate_mbit, limits=limits) as boards:
                    run = run_cluster(boards.mpirun_args(), worker, timeout_s=900)
                runs.setdefault((mode, ln.name if mode != "one" else "-"), []).append(run)
                print(f"  {mode} {ln.name}: {run.decode_tok_s:.2f} tok/s", file=sys.stderr, flush=True)
    base = runs[("one", "-")]
    one = statistics.median(r.decode_tok_s for r in base)
    print(f"model {a.model} int8 ({b.weights_nbytes / MiB:.0f} MiB), resident; EMULATED boards (netns + cgroup, one "
          f"core each, 2-core VM shared with other agents); link latency SIMULATED; {a.repeats} interleaved runs, "
          f"medians; prompt {len(prompt)} tokens, {a.n} generated; pipeline cut {ranges}")
    print("| boards | mode | link | decode tok/s | x 1 board | TTFT ms | allreduces/token | bytes sent/token (rank 0) "
          "| allreduce ms/token (rank 0) | tokens = 1 board |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (mode, link), rs in runs.items():
        tps = statistics.median(r.decode_tok_s for r in rs)
        ttft = statistics.median(r.ttft_s for r in rs) * 1e3
        r0 = rs[0].ranks[0]
        ntok = max(1, len(rs[0].tokens))
        if mode in ("ring", "star"):
            calls, sent, ar = r0["calls"] / ntok, r0["sent_bytes"] / ntok, r0["allreduce_s"] / ntok * 1e3
        else:
            calls, sent, ar = 0, (r0["link"]["sent_bytes"] / ntok if mode == "pipeline" else 0), 0.0
        same = all(r.tokens == base[0].tokens for r in rs)
        k = 1 if mode == "one" else 2
        label = {"one": "one board", "pipeline": "pipeline", "ring": "tensor, ring", "star": "tensor, star"}[mode]
        print(f"| {k} | {label} | {link} | {tps:.2f} | {tps / one:.2f} | {ttft:.0f} | {calls:.0f} | {sent:.0f} | "
              f"{ar:.1f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
