"""Measure the rig itself: cold-read bandwidth achieved through the blkio throttle, and the qemu slowdown of a small
numpy workload. ``python -m edgespool.apps.rig.bench [--sizes-mib 256] [--throttles 50MB/s,440MB/s] [--qemu]``.

Every figure is measured by the child process with its own clock (``time.monotonic``) after evicting the file from
the page cache; the device bytes come from the cgroup. Prints a table, or JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from ...units import parse_rate
from .limits import resolve_limits
from .pagecache import evict
from .runner import run_in_rig

_READER = r"""
import json, mmap, os, sys, time
path, mode = sys.argv[1], sys.argv[2]
flags = os.O_RDONLY | (os.O_DIRECT if mode == "direct" else 0)
fd = os.open(path, flags)
buf = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT needs
t = time.monotonic(); n = 0; off = 0
while True:
    k = os.preadv(fd, [buf], off)
    if k <= 0:
        break
    n += k; off += k
print(json.dumps({"bytes": n, "seconds": time.monotonic() - t}))
"""

_NUMPY = r"""
import time, numpy as np
rng = np.random.default_rng(0)
a = rng.standard_normal((384, 384), dtype=np.float32)
x = rng.standard_normal((384, 64), dtype=np.float32)
t = time.monotonic()
for _ in range(50):  # a small decoder-like step: GEMM, activation, softmax, top-k
    y = np.tanh(a @ x)
    e = np.exp(y - y.max(axis=0))
    p = e / e.sum(axis=0)
    k = np.argsort(p, axis=0)[-8:]
print(time.monotonic() - t, float(p[k[-1, 0], 0]))
"""


def cold_read(path: str, throttle: int | None, mode: str = "buffered") -> dict:
    """One cold read of ``path`` through the rig with a ``throttle`` bytes/s read limit (None: unthrottled)."""
    evict(path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # run the rig in a child so the reader's stdout can be captured through a pipe
        os.close(r)
        os.dup2(w, 1)
        rep = run_in_rig([sys.executable, "-c", _READER, path, mode],
                         resolve_limits(None, read_bandwidth=str(throttle) if throttle else None),
                         device_paths=[path])
        os.write(1, ("\n" + json.dumps({"device_read_bytes": rep.device_read_bytes}) + "\n").encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    os.waitpid(pid, 0)
    got, dev = json.loads(lines[0]), json.loads(lines[1])
    return {"MBps": got["bytes"] / got["seconds"] / 1e6, "bytes": got["bytes"], **dev}


def qemu_slowdown(cpu: str = "cortex-a76", repeats: int = 3) -> dict:
    """Best-of-``repeats`` time of the numpy workload (one BLAS thread) on the host and inside the arm64 rig."""
    from . import arm64

    if not arm64.is_ready():
        raise SystemExit("arm64 root not set up: run `edgespool rig arm64 setup`")
    host, rig = [], []
    one = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # single-threaded on both sides
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _NUMPY], capture_output=True, text=True, check=True,
                             env={**os.environ, **one}).stdout
        host.append(float(out.split()[0]))
        out = arm64.run_captured(arm64.root_dir(), ["python3", "-c", _NUMPY], cpu=cpu, timeout=600, env=one)
        rig.append(float(out.stdout.split()[0]))
    return {"host_s": min(host), "qemu_s": min(rig), "slowdown": min(rig) / min(host), "cpu": cpu}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m edgespool.apps.rig.bench")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--throttles", default="none,50MB/s,440MB/s")
    ap.add_argument("--modes", default="buffered,direct")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="Directory for the test file (default: the system temp dir).")
    ap.add_argument("--qemu", action="store_true", help="Also time a numpy workload on the host vs the arm64 rig.")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        path = os.path.join(d, "cold.bin")
        chunk = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(a.size_mib):
                f.write(chunk)
        for thr in a.throttles.split(","):
            bps = None if thr == "none" else parse_rate(thr, "--throttles")
            for mode in a.modes.split(","):
                runs = [cold_read(path, bps, mode) for _ in range(a.repeats)]
                mbps = [r["MBps"] for r in runs]
                results.append({"throttle": thr, "mode": mode, "size_mib": a.size_mib,
                                "median_MBps": round(statistics.median(mbps), 1),
                                "runs_MBps": [round(x, 1) for x in mbps],
                                "device_read_bytes": runs[-1]["device_read_bytes"]})
    out = {"cold_reads": results}
    if a.qemu:
        out["qemu_numpy"] = qemu_slowdown()
    if a.json:
        print(json.dumps(out, indent=1))
        return
    for r in results:
        print(f"{r['throttle']:>9s} {r['mode']:8s} {r['size_mib']} MiB: median {r['median_MBps']:7.1f} MB/s  "
              f"runs {r['runs_MBps']}  device reads {r['device_read_bytes']}")
    if a.qemu:
        q = out["qemu_numpy"]
        print(f"numpy workload: host {q['host_s']:.3f} s, qemu {q['cpu']} {q['qemu_s']:.3f} s, "
              f"slowdown {q['slowdown']:.1f}x")


if __name__ == "__main__":
    t0 = time.monotonic()
    main()
    print(f"(bench took {time.monotonic() - t0:.0f} s)", file=sys.stderr)
