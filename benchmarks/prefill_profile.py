"""Where a resident prefill's time goes, per thread count (issue 12: prefill scaling on many cores).

    python benchmarks/prefill_profile.py BUNDLE [--threads 1,4,16] [--prompt 512] [--top 12] [--json-out F]

For each thread count: load BUNDLE resident with that many C-kernel threads, run one warm-up prefill of
``--prompt`` random token ids, then one timed prefill and one under cProfile; prints the timed tok/s and the
functions with the most own time (the C kernels appear as the ctypes calls that run them). A diagnostic: the
timed figure is one run, not a benchmark median.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

import numpy as np


def profile_prefill(bundle: Path, threads: int, prompt: int, top: int) -> dict:
    """One thread count: the timed prefill's tok/s and the ``top`` functions by own time of a profiled one."""
    from edgespool.runtime.api import load

    m = load(bundle, n_threads=threads)
    eng = m.engine
    ids = np.random.default_rng(0).integers(3, m.config.vocab_size, size=prompt)
    eng.prefill(ids, eng.new_cache(prompt + 8))  # warm-up: weights resident, pools started
    t0 = time.perf_counter()
    eng.prefill(ids, eng.new_cache(prompt + 8))
    wall = time.perf_counter() - t0
    prof = cProfile.Profile()
    prof.enable()
    eng.prefill(ids, eng.new_cache(prompt + 8))
    prof.disable()
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = sorted(((v[2], v[3], v[1], f"{Path(k[0]).name}:{k[1]}({k[2]})") for k, v in st.stats.items()),
                  reverse=True)[:top]
    m.close()
    return {"threads": threads, "prompt": prompt, "prefill_s": wall, "prefill_tok_s": prompt / wall,
            "top_own_time": [{"fn": f, "own_s": round(tt, 4), "cum_s": round(ct, 4), "calls": n}
                             for tt, ct, n, f in rows]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args(argv)
    out = []
    for t in (int(x) for x in a.threads.split(",")):
        r = profile_prefill(a.bundle, t, a.prompt, a.top)
        out.append(r)
        print(f"threads {t}: prefill {a.prompt} tokens {r['prefill_s'] * 1e3:.0f} ms = {r['prefill_tok_s']:.1f} tok/s")
        for x in r["top_own_time"]:
            print(f"   {x['own_s'] * 1e3:8.1f} ms own {x['cum_s'] * 1e3:8.1f} ms cum {x['calls']:6d} x  {x['fn']}")
    if a.json_out:
        a.json_out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
