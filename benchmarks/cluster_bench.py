"""1 vs 2 vs 3 EMULATED boards (network namespaces on one machine, tc tbf-shaped link) running a real model
pipeline-parallel over MPI: tok/s, TTFT, bytes and messages per token, and the solver's prediction.

    python benchmarks/cluster_bench.py [--model smollm2-135m] [--repeats 3] [-n 24] [--rate-mbit 1000]

Boards share this machine's cores (no cpuset per board here), weights are resident per stage (the per-board
streaming budget is not wired into stages yet): the figures show the transport and pipeline overhead, not the
issue's 1/4-budget streaming speed-up. Runs are interleaved (1, 2, 3, 1, 2, 3, ...); medians are reported."""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


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


def even_ranges(L: int, k: int) -> str:
    edges = [round(i * L / k) for i in range(k + 1)]
    return ",".join(f"{a}:{b}" for a, b in zip(edges, edges[1:]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-n", type=int, default=24)
    ap.add_argument("--rate-mbit", type=float, default=1000)
    ap.add_argument("--boards", default="1,2,3")
    a = ap.parse_args()
    from edgespool.apps.cluster.boards import EmulatedBoards
    from edgespool.runtime.bundle.reader import Bundle

    path = export(a.model, Path(tempfile.gettempdir()) / f"edgespool-cluster-bench-{a.model}")
    b = Bundle(path)
    L, H = b.config.num_layers, b.config.hidden_size
    prompt = ",".join(str(t) for t in [1] + list(range(100, 131)))
    counts = [int(x) for x in a.boards.split(",")]
    runs: dict[int, list[dict]] = {k: [] for k in counts}
    for _ in range(a.repeats):
        for k in counts:
            with EmulatedBoards(k, rate_mbit=a.rate_mbit) as boards:
                cmd = boards.mpirun_args() + [sys.executable, "-m", "edgespool.apps.cluster.worker", str(path),
                                              "--ranges", even_ranges(L, k), "--prompt-ids", prompt, "-n",
                                              str(a.n), "--max-context", "128", "--prefill-chunk", "8"]
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                m = re.search(r'\{"tokens".*\}', p.stdout)
                if p.returncode != 0 or not m:
                    sys.exit(f"cluster_bench: {k} boards failed: {p.stderr.strip()[-500:]}")
                runs[k].append(json.loads(m.group(0)))
    print(f"model {a.model} int8, {L} layers, hidden {H}; link tc tbf {a.rate_mbit:g} Mbit (no added latency); "
          f"EMULATED boards sharing this machine's cores; {a.repeats} interleaved runs, medians")
    print("boards  decode tok/s  TTFT ms  rank0 sent B/token  rank0 msgs/token  tokens equal to 1 board")
    base = runs[counts[0]][0]["tokens"]
    for k in counts:
        rs = runs[k]
        tps = statistics.median((len(r["tokens"]) - 1) / r["decode_s"] for r in rs)
        ttft = statistics.median(r["ttft_s"] for r in rs) * 1e3
        ntok = len(rs[0]["tokens"])
        sent = rs[0]["link"]["sent_bytes"] / max(1, ntok)
        msgs = rs[0]["link"]["sent_messages"] / max(1, ntok)
        print(f"{k:6d}  {tps:12.2f}  {ttft:7.1f}  {sent:18.0f}  {msgs:16.2f}  {all(r['tokens'] == base for r in rs)}")


if __name__ == "__main__":
    main()
