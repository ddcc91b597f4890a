"""The MPI program of a tensor-parallel run: ``python -m edgespool.apps.cluster.tp_worker BUNDLE --allreduce ring
--prompt-ids 1,2,3 -n 16``. Every rank holds its slices of every layer and of the head (resident, sliced from
BUNDLE at load) and runs every token; with ``--shards DIR0,DIR1,..`` rank r opens ITS shard bundle (written by
:mod:`edgespool.exporters.tensor_shard`; BUNDLE then only gives the kernels and the EOS ids), streamed under
``--budget`` bytes (0: resident), prompts in ``--prefill-chunk`` token chunks; each sends its best logit (value, id) to rank 0, which picks the greedy token and sends it to the others. Rank 0 prints one JSON object starting with
``{"tokens"``, every rank its counters; a failure prints ONE line ``edgespool cluster: error: ...`` and aborts."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgespool-cluster-tp-worker")
    ap.add_argument("bundle", help="the whole bundle, or - on deployed boards (each --shards bundle has it all)")
    ap.add_argument("--allreduce", default="ring", choices=["ring", "star"])
    ap.add_argument("--prompt-ids", default="")
    ap.add_argument("-n", "--max-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--simulated-latency-ms", type=float, default=0.0)
    ap.add_argument("--no-kernels", action="store_true")
    ap.add_argument("--shards", default="", help="one shard bundle directory per rank (comma-separated)")
    ap.add_argument("--budget", type=int, default=0, help="each rank's streaming budget in bytes (0: resident)")
    ap.add_argument("--max-context", type=int, default=0)
    ap.add_argument("--prefill-chunk", type=int, default=0)
    a = ap.parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    try:
        import numpy as np

        from ...runtime.api import resolve_kernels
        from ...runtime.bundle.reader import Bundle
        from ...runtime.cluster.tensor import Allreduce, ShardWeights
        from ...runtime.decoder.engine import Engine

        red = Allreduce(comm, a.allreduce, a.timeout, a.simulated_latency_ms / 1000.0)
        shards = a.shards.split(",") if a.shards else []
        if shards and len(shards) != size:
            raise ValueError(f"--shards has {len(shards)} bundles for {size} MPI ranks")
        if a.bundle == "-":  # a deployed board (deploy --cluster): its shard bundle has the kernels and EOS ids
            if not shards:
                raise ValueError("BUNDLE '-' needs --shards (each board's deployed shard bundle)")
            from ...runtime.cluster.tensor_stream import shard_info

            bundle = Bundle(shards[rank])
            stops = set(shard_info(bundle).get("eos_token_ids") or ())
        else:
            bundle = Bundle(a.bundle)
            stops = set(bundle.config.eos_token_ids or ())
        kern = resolve_kernels(bundle, not a.no_kernels)
        ids = np.array([int(t) for t in a.prompt_ids.split(",")] if a.prompt_ids else [], np.int64)
        if ids.size == 0:
            raise ValueError("the prompt is empty: give at least one token")
        ctx = a.max_context or int(ids.size) + a.max_tokens + 1
        chunk = a.prefill_chunk or (16 if a.budget else 0)
        if shards:
            from ...runtime.cluster.tensor_stream import open_shard

            engine = open_shard(shards[rank], red, budget=a.budget or None, kernels=kern, kv_dtype="f32",
                                max_context=ctx, **({"max_batch_tokens": chunk} if a.budget else {}))
        else:
            engine = Engine(ShardWeights(bundle, rank, size, red), kern, kv_dtype="f32")
        cache = engine.new_cache(ctx)
        tok = np.empty(1, np.int64)
        tokens: list[int] = []
        t0 = time.perf_counter()
        ttft = t_first = 0.0
        inp = ids
        if chunk and ids.size > chunk:  # a streamed prompt in chunks the plan's workspace holds
            last = (int(ids.size) - 1) // chunk * chunk  # the chunk holding the prompt's last token
            for c0 in range(0, last, chunk):
                engine.forward(ids[c0:c0 + chunk], cache, logits=False)
            inp = ids[last:]
        while True:
            out = engine.forward(inp, cache, last_only=True)
            lo, hi = engine.source.vocab_range  # this board's logits: its rows of the head
            i = int(np.argmax(out[-1, lo:hi]))
            best = np.array([out[-1, lo + i], lo + i], np.float64)
            if rank == 0:  # the best of the boards' maxima (ties: the lowest id, as one board's argmax)
                cand = [best]
                for r in range(1, size):
                    got = np.empty(2, np.float64)
                    red._recv(got, r)
                    cand.append(got)
                tok[0] = int(min(cand, key=lambda c: (-c[0], c[1]))[1])
                if int(tok[0]) in stops:
                    tok[0] = -1  # stop
                reqs = [red._send(tok, r) for r in range(1, size)]
                for r, q in enumerate(reqs, 1):
                    red._wait(q, r)
            else:
                red._wait(red._send(best, 0), 0)
                red._recv(tok, 0)
            if t_first == 0.0:
                t_first = time.perf_counter()
                ttft = t_first - t0
            if tok[0] < 0:
                break
            tokens.append(int(tok[0]))
            if len(tokens) >= a.max_tokens:  # every rank counts the same tokens
                break
            inp = tok.copy()
        decode_s = time.perf_counter() - t_first
        obj = {"rank": rank, "allreduce": a.allreduce, "calls": red.stats.calls, "sent_bytes": red.stats.sent_bytes,
               "sent_messages": red.stats.sent_messages, "allreduce_s": red.stats.wait_s,
               "cpus": sorted(os.sched_getaffinity(0)), "kernels": kern.description}
        inner = getattr(engine.source, "inner", engine.source)
        if hasattr(inner, "plan"):  # streamed shard
            obj.update(bytes_read=inner.stats()["bytes_read"], plan_bytes=inner.plan.total_bytes,
                       streamed_per_token=inner.plan.streamed_bytes_per_token)
        else:
            obj.update(resident_bytes=getattr(inner, "resident_bytes", None))
        if rank == 0:
            obj = {"tokens": tokens, "ttft_s": ttft, "decode_s": decode_s, "prompt_tokens": int(ids.size), **obj}
        print(json.dumps(obj), flush=True)
        return 0
    except Exception as e:  # one line, then end the whole job
        print(f"edgespool cluster: error: rank {rank}: {e}", file=sys.stderr, flush=True)
        comm.Abort(3)
        return 3


if __name__ == "__main__":
    sys.exit(main())
