"""Quality on real trained GGUFs, measured like llama.cpp measures it, side by side with llama.cpp on the same file.

For each model (assets of :mod:`edgespool.apps.assets`) and each edgespool quantisation (``keep`` = the GGUF's own
blocks, ``int8``, ``int4`` (g32), ``f16`` = dequantised), in a child process each:

* perplexity on Hamlet with llama-perplexity's windowing (:mod:`edgespool.runtime.perplexity`: ``--ctx`` token
  chunks, second half scored, BOS first), edgespool on its bundle and llama.cpp (llama-cpp-python, default f16 KV
  cache, the same chunks of llama.cpp's own tokenisation) on the original GGUF;
* greedy parity of ``keep`` vs llama.cpp: 5 prompts x 64 tokens from the same prompt ids; where the continuations
  diverge, the position and both systems' top-1 minus top-2 logit margin there.

    python -m edgespool.benchmarks.quality_vs_llamacpp --work /tmp/quality --models smollm2-135m,qwen2.5-coder-0.5b \
        --quants keep,int8,int4,f16 --chunks 16 --json docs/img/quality.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from edgespool.benchmarks.child_json import emit, run_child

PROMPTS = ["def fibonacci(n):", "The capital of France is", "Once upon a time, in a small village,",
           "import numpy as np\n\n# compute the mean of a list\n", "Q: What is 12 times 7?\nA:"]


def _text(limit_chars: int | None) -> str:
    from edgespool.apps.assets import fetch

    t = Path(fetch("hamlet")).read_text(encoding="utf-8")
    return t[:limit_chars] if limit_chars else t


def _export(gguf: str, quant: str, out: Path) -> None:
    if (out / "manifest.json").exists():
        return
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source

    src = open_source(gguf)
    try:
        export_model(src, out, policy=QuantPolicy(quant=quant), onnx=False, kernels=False, progress=False)
    finally:
        src.close()


def child_edgespool(bundle: str, ctx: int, chunks: int, text_chars: int | None) -> dict:
    """edgespool perplexity of ``bundle``."""
    from edgespool import load
    from edgespool.runtime.perplexity import perplexity

    t0 = time.perf_counter()
    with load(bundle) as m:
        load_s = time.perf_counter() - t0
        ids = m.tokenizer.encode(_text(text_chars))
        bos = m.tokenizer.bos_token_id if m.tokenizer.add_bos else None
        t0 = time.perf_counter()
        r = perplexity(m.logits, ids, ctx=ctx, bos=bos, max_chunks=chunks)
        return {**r.to_dict(), "seconds": time.perf_counter() - t0, "load_s": load_s,
                "kernels": m.kernels.description}


def _llama(gguf: str, n_ctx: int, threads: int):
    from edgespool.benchmarks.llamacpp_peer import open_llama

    return open_llama(gguf, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False, n_threads=threads,
                      n_threads_batch=threads, seed=0)


def child_llamacpp(gguf: str, ctx: int, chunks: int, text_chars: int | None, threads: int) -> dict:
    """llama.cpp's perplexity of ``gguf`` (llama-perplexity's windowing over llama.cpp's own tokenisation)."""
    import llama_cpp
    from edgespool.runtime.perplexity import perplexity

    t0 = time.perf_counter()
    llm, note = _llama(gguf, ctx, threads)
    load_s = time.perf_counter() - t0
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model)))
    ids = llm.tokenize(_text(text_chars).encode("utf-8"), add_bos=add_bos, special=False)

    def logits(chunk: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(chunk)
        return np.array(llm.scores[: len(chunk)], dtype=np.float32)

    t0 = time.perf_counter()
    r = perplexity(logits, ids, ctx=ctx, bos=llm.token_bos() if add_bos else None, max_chunks=chunks)
    return {**r.to_dict(), "seconds": time.perf_counter() - t0, "load_s": load_s, "config": note}


def child_parity(bundle: str, gguf: str, n: int, threads: int) -> dict:
    """Greedy continuations of :data:`PROMPTS` from the same ids: edgespool ``bundle`` vs llama.cpp ``gguf``."""
    from edgespool import load

    out = []
    with load(bundle) as m:
        llm, note = _llama(gguf, 256, threads)
        for p in PROMPTS:
            ids = m.tokenizer.encode(p)
            ours = list(m.generate_ids(ids, n, stop=[]))
            llm.reset()
            llm.eval(ids)
            theirs = []
            for _ in range(n):
                tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                theirs.append(tok)
                if len(theirs) < n:
                    llm.eval([tok])
            d = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
            row = {"prompt": p, "tokens": n, "identical": d is None, "diverge_at": d}
            if d is not None:
                prefix = ids + ours[:d]
                lo = m.logits(prefix)[-1]
                llm.reset()
                llm.eval(prefix)
                lt = np.array(llm.scores[len(prefix) - 1], np.float32)
                top = lambda v: np.sort(v)[-2:]  # noqa: E731
                row.update(ours=ours[d], theirs=theirs[d],
                           margin_edgespool=float(top(lo)[1] - top(lo)[0]),
                           margin_llamacpp=float(top(lt)[1] - top(lt)[0]))
            row["text_edgespool"] = m.tokenizer.decode(ours)
            out.append(row)
    return {"prompts": out, "identical": sum(r["identical"] for r in out), "llamacpp_config": note}


def _run_child(kind: str, args: dict) -> dict:
    return run_child("edgespool.benchmarks.quality_vs_llamacpp", ["--child", kind, "--child-args", json.dumps(args)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/edgespool-quality")
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    ap.add_argument("--quants", default="keep,int8,int4,f16")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=16, help="chunks of --ctx tokens scored (llama.cpp: all)")
    ap.add_argument("--text-chars", type=int, default=None, help="use only the first N characters of Hamlet")
    ap.add_argument("--parity-tokens", type=int, default=64)
    ap.add_argument("--no-ppl", action="store_true", help="only the greedy parity of keep vs llama.cpp")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        fn = {"edgespool": child_edgespool, "llamacpp": child_llamacpp, "parity": child_parity}[a.child]
        print(json.dumps(fn(**json.loads(a.child_args))))
        return 0
    from edgespool.apps.assets import fetch

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "ctx": a.ctx, "chunks": a.chunks, "threads": a.threads,
                     "models": {}}
    for name in a.models.split(","):
        gguf = str(fetch(name))
        mres: dict = {"gguf": gguf, "llamacpp": {} if a.no_ppl else _run_child("llamacpp", dict(
            gguf=gguf, ctx=a.ctx, chunks=a.chunks, text_chars=a.text_chars, threads=a.threads)), "edgespool": {}}
        print(f"{name}: llama.cpp ppl {mres['llamacpp'].get('ppl', mres['llamacpp'])}", file=sys.stderr)
        for q in a.quants.split(","):
            if a.no_ppl:
                _export(gguf, q, work / f"{name}.{q}")
                mres["edgespool"][q] = {"exported": str(work / f"{name}.{q}")}
                continue
            out = work / f"{name}.{q}"
            try:
                _export(gguf, q, out)
            except Exception as e:  # noqa: BLE001 - reported in the table
                mres["edgespool"][q] = {"error": f"export: {e}"}
                continue
            r = _run_child("edgespool", dict(bundle=str(out), ctx=a.ctx, chunks=a.chunks, text_chars=a.text_chars))
            lp = mres["llamacpp"].get("ppl")
            if "ppl" in r and lp:
                r["vs_llamacpp"] = r["ppl"] / lp - 1.0
            mres["edgespool"][q] = r
            print(f"  edgespool {q}: {r.get('ppl', r)}", file=sys.stderr)
        if "keep" in a.quants.split(",") and "error" not in mres["edgespool"].get("keep", {"error": 1}):
            mres["parity"] = _run_child("parity", dict(bundle=str(work / f"{name}.keep"), gguf=gguf,
                                                         n=a.parity_tokens, threads=a.threads))
        results["models"][name] = mres
    emit(results, a.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
