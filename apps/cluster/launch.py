"""Launching a cluster run: the worker command line, mpirun on emulated boards (or real hosts over ssh), and the
ranks' JSON result lines read back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

from ...errors import ClusterError


@dataclass
class ClusterRun:
    """What one cluster generation gave back: rank 0's tokens and timings, every rank's counters."""

    tokens: list[int]
    ttft_s: float
    decode_s: float
    prompt_tokens: int
    ranks: list[dict] = field(default_factory=list)  # one object per rank (rank, compute_s, link, cpus, bytes_read)
    wall_s: float = 0.0

    @property
    def decode_tok_s(self) -> float:
        n = len(self.tokens) - 1  # tokens after the first one
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


def rank_objects(stdout: str) -> list[dict]:
    """Every JSON object the ranks printed. mpirun forwards each rank's stdout on its own, so two ranks' lines can
    share one output line: decode object after object wherever a ``{"`` starts one."""
    dec, out, i = json.JSONDecoder(), [], 0
    while True:
        i = stdout.find('{"', i)
        if i < 0:
            return out
        try:
            obj, end = dec.raw_decode(stdout, i)
        except json.JSONDecodeError:
            i += 2
            continue
        if isinstance(obj, dict) and "rank" in obj:
            out.append(obj)
        i = end


def worker_command(bundle: str, ranges: list[tuple[int, int]], prompt_ids: list[int], max_tokens: int, *,
                   max_context: int, budgets: list[int] | None = None, prefill_chunk: int = 0,
                   timeout_s: float = 30.0, names: list[str] | None = None, kernels: bool = True,
                   python: str | None = None) -> list[str]:
    """The program each rank runs (:mod:`edgespool.apps.cluster.worker`)."""
    cmd = [python or sys.executable, "-m", "edgespool.apps.cluster.worker", str(bundle),
           "--ranges", ",".join(f"{a}:{b}" for a, b in ranges), "--prompt-ids", ",".join(map(str, prompt_ids)),
           "-n", str(max_tokens), "--max-context", str(max_context), "--timeout", str(timeout_s)]
    if budgets:
        cmd += ["--budgets", ",".join(str(int(b)) for b in budgets)]
    if prefill_chunk:
        cmd += ["--prefill-chunk", str(prefill_chunk)]
    if names:
        cmd += ["--names", ",".join(names)]
    if not kernels:
        cmd.append("--no-kernels")
    return cmd


def ssh_mpirun_args(hosts: list[str]) -> list[str]:
    """mpirun over ssh to real hosts (each needs the same Python environment and the bundle at the same path).
    UNTESTED here: this machine has no second host."""
    return ["mpirun", "-np", str(len(hosts)), "--host", ",".join(hosts), "--map-by", "node"]


def run_cluster(mpirun: list[str], worker: list[str], timeout_s: float = 600.0) -> ClusterRun:
    """Run ``mpirun + worker`` and read rank 0's result; a failed job raises :class:`ClusterError` with the
    ranks' one-line error (or mpirun's last line)."""
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(mpirun + worker, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"cluster run did not finish within {timeout_s:g} s") from None
    wall = time.perf_counter() - t0
    objs = rank_objects(p.stdout)
    first = next((o for o in objs if o.get("rank") == 0 and "tokens" in o), None)
    if p.returncode != 0 or first is None:
        lines = [ln for ln in p.stderr.splitlines() if "edgespool cluster: error" in ln]
        tail = [ln for ln in p.stderr.splitlines() if ln.strip()][-1:] or ["(no output)"]
        msg = lines[0].split("edgespool cluster: error: ", 1)[1] if lines else f"mpirun exited {p.returncode}: {tail[0]}"
        raise ClusterError(msg)
    return ClusterRun(tokens=first["tokens"], ttft_s=first["ttft_s"], decode_s=first["decode_s"],
                      prompt_tokens=first["prompt_tokens"], ranks=sorted(objs, key=lambda o: o["rank"]), wall_s=wall)
