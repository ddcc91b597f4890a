"""The program every MPI rank runs: ``python -m edgespool.apps.cluster.worker BUNDLE --ranges 0:15,15:30 ...``.

Rank r loads the bundle's resident weights (only its own groups are ever read: the engine asks for nothing else),
or with ``--budgets`` streams its stage under its own memory budget (the r-th size; ``0``: resident), and runs stage r through :func:`edgespool.runtime.cluster.pipeline.run_rank`. Rank 0 prints one JSON line with
the tokens and timings; a failure prints ONE line ``edgespool cluster: error: ...`` and aborts the MPI job."""
from __future__ import annotations

import argparse
import json
import os
import sys


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """``"0:15,15:30"`` -> [(0, 15), (15, 30)]."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition(":")
        out.append((int(a), int(b)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgespool-cluster-worker")
    ap.add_argument("bundle")
    ap.add_argument("--ranges", required=True)
    ap.add_argument("--prompt-ids", default="")
    ap.add_argument("-n", "--max-tokens", type=int, default=16)
    ap.add_argument("--max-context", type=int, default=256)
    ap.add_argument("--prefill-chunk", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--simulated-latency-ms", type=float, default=0.0)
    ap.add_argument("--names", default="")
    ap.add_argument("--budgets", default="", help="one memory budget per rank (e.g. 64MiB,64MiB; 0: resident)")
    ap.add_argument("--no-kernels", action="store_true")
    ap.add_argument("--die-after", type=int, default=-1, help="fault test: this rank exits after N steps")
    ap.add_argument("--die-rank", type=int, default=-1)
    ap.add_argument("--shares", default="", help="one pipeline stage share per rank (deploy --cluster; BUNDLE: -)")
    a = ap.parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    try:
        from ...runtime.api import resolve_kernels
        from ...runtime.bundle.reader import Bundle
        from ...runtime.cluster.pipeline import run_rank
        from ...runtime.cluster.stage import open_stage
        from ...runtime.cluster.transport import Link
        from ...units import parse_bytes

        ranges = parse_ranges(a.ranges)
        if len(ranges) != comm.Get_size():
            raise ValueError(f"--ranges has {len(ranges)} stages for {comm.Get_size()} MPI ranks")
        budgets = a.budgets.split(",") if a.budgets else []
        if budgets and len(budgets) != len(ranges):
            raise ValueError(f"--budgets has {len(budgets)} sizes for {len(ranges)} stages")
        budget = parse_bytes(budgets[rank], "--budgets") if budgets and budgets[rank].strip() != "0" else 0
        if a.shares:  # this board's deployed share: only its groups are on its disk
            from ...runtime.cluster.stage_share import StageBundle

            shares = a.shares.split(",")
            if len(shares) != len(ranges):
                raise ValueError(f"--shares has {len(shares)} paths for {len(ranges)} stages")
            bundle = StageBundle(shares[rank])
            if (bundle.stage.start, bundle.stage.stop) != ranges[rank]:
                raise ValueError(f"{shares[rank]} holds layers {bundle.stage.start}..{bundle.stage.stop - 1}, not "
                                 f"this rank's {ranges[rank][0]}..{ranges[rank][1] - 1}; deploy --cluster again")
        else:
            bundle = Bundle(a.bundle)
        kern = resolve_kernels(bundle, not a.no_kernels)
        chunk = a.prefill_chunk or (16 if budget else 0)  # streamed: prompt chunks the plan's workspace holds
        stage = open_stage(bundle, *ranges[rank], budget=budget or None, kernels=kern, kv_dtype="f32",
                           max_context=a.max_context, **({"max_batch_tokens": chunk} if budget else {}))
        names = a.names.split(",") if a.names else None
        link = Link(comm, a.timeout, a.simulated_latency_ms / 1000.0, names)
        if rank == a.die_rank:
            orig = stage.step
            count = [0]

            def dying(*args, **kw):
                count[0] += 1
                if count[0] > a.die_after:
                    import os
                    os._exit(9)  # fault test: the board vanishes mid-generation
                return orig(*args, **kw)
            stage.step = dying  # type: ignore[method-assign]
        ids = [int(t) for t in a.prompt_ids.split(",")] if rank == 0 else None
        stops = tuple(bundle.config.eos_token_ids or ())
        res = run_rank(stage, link, ids, a.max_tokens, stops, chunk or None, a.max_context)
        src = stage.engine.source
        board = {"rank": rank, "compute_s": res.compute_s, "link": link.stats.__dict__,
                 "cpus": sorted(os.sched_getaffinity(0)), "bytes_read": src.stats()["bytes_read"]
                 if hasattr(src, "plan") else None, "plan_bytes": src.plan.total_bytes if hasattr(src, "plan") else None,
                 "streamed_per_token": src.plan.streamed_bytes_per_token if hasattr(src, "plan") else 0}
        if rank == 0:
            board.update(tokens=res.tokens, ttft_s=res.ttft_s, decode_s=res.decode_s, prompt_tokens=res.prompt_tokens)
            board = {"tokens": board.pop("tokens"), **board}  # rank 0's object starts with "tokens"
        print(json.dumps(board), flush=True)
        return 0
    except Exception as e:  # one line, then end the whole job (never leave the others waiting)
        print(f"edgespool cluster: error: rank {rank}: {e}", file=sys.stderr, flush=True)
        comm.Abort(3)
        return 3


if __name__ == "__main__":
    sys.exit(main())
