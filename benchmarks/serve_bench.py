"""Serving under load (issue 14): 1 / 4 / 8 concurrent streaming chat clients against `edgespool serve` and
llama.cpp's llama-server, the same GGUF (Qwen2.5-Coder-0.5B-Instruct Q4_K_M), the same rig limits.

Each server runs as the command of a rig run (apps/rig: memory cgroup incl. page cache, blkio read throttle + IOPS
of the profile's storage, the profile's cores as far as the host has them; the weights evicted from the page cache
first); the load generator runs outside the rig on loopback. Systems:

  edgespool-resident   `edgespool serve BUNDLE --parallel 4` (a --quant keep bundle: the file's blocks, C kernels)
  edgespool-stream     the same with --memory-budget = 1/4 of the weights (the plan's KV cache split over 4 slots)
  llama-resident       `llama-server -m GGUF -np 4` (built from the llama-cpp-python 0.3.36 sdist's llama.cpp)
  llama-stream         the same under the streamed run's memory limit (its mmap'd weights page through the cache)
  llamacpp-python-resident / -stream   llama-cpp-python 0.3.36's `python -m llama_cpp.server` (no slots: it serves
                       one request at a time), EOS banned by logit_bias instead of ignore_eos
  llama-stream-norepack  the same with --no-repack (on x86 llama.cpp by default copies the weights into repacked
                       anonymous buffers, the whole model in RAM; without it they stay in the mmap)

Memory limits: resident runs get the profile's RAM; streamed runs get budget + ``--headroom`` (the same for both
servers). Per phase (k clients, each sending ``--requests`` requests one after the other; prompts differ per
request; greedy; ``ignore_eos`` so every request generates exactly max_tokens): aggregate tokens/s (all tokens /
phase wall time), TTFT p50/p99 (request sent -> first content chunk), inter-token latency p50/p99 (between content
chunks), errors (non-200 or broken streams). Per system: the rig's peak cgroup memory and OOM kills, and memory
growth = the server's RSS at idle after the largest phase run a second time minus at idle after its first run.

    python benchmarks/serve_bench.py --work /tmp/esserve --llama-server PATH/llama-server [--profile rpi5]
        [--clients 1,4,8] [--systems ...] [--json out.json]

Needs root cgroups (the rig). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

MiB = 1 << 20
QUESTION = "Write a Python function that returns the n-th Fibonacci number."


LLAMA_CPP_PYTHON_SDIST = "llama-cpp-python==0.3.36"
# explicit x86 flags, native off: a -march=native build SIGILLs on this VM (its CPU flags list AMX / AVX-512 FP16)
def llama_cmake_flags(cpu_flags: set[str] | None = None) -> list[str]:
    """cmake options for llama-server: the x86 ISA this CPU has (``cpu_flags``: /proc/cpuinfo's ``flags``), AMX
    off (its repack path segfaulted on a Sapphire Rapids VM). AVX-512 only where the CPU has it: a build with it
    dies of an illegal instruction on an AVX2-only Zen 3."""
    if cpu_flags is None:
        try:
            line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
            cpu_flags = set(line.split(":", 1)[1].split())
        except (OSError, StopIteration):
            cpu_flags = set()
    on = {"GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c", "GGML_AVX512": "avx512f",
          "GGML_AVX512_VNNI": "avx512_vnni", "GGML_AVX512_BF16": "avx512_bf16", "GGML_AVX_VNNI": "avx_vnni"}
    return (["-DGGML_NATIVE=OFF"] + [f"-D{k}={'ON' if v in cpu_flags else 'OFF'}" for k, v in on.items()]
            + ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"])


def llama_server_binary(work: Path, explicit: str | None = None) -> Path:
    """A llama-server binary: ``explicit`` (or $LLAMA_SERVER) when given, else one already built under ``work``,
    else built there from the llama-cpp-python 0.3.36 sdist's vendored llama.cpp (``pip download --no-binary`` +
    cmake with :func:`llama_cmake_flags`; minutes on 2 cores)."""
    import glob
    import tarfile

    given = explicit or os.environ.get("LLAMA_SERVER")
    if given:
        if not Path(given).is_file():
            raise SystemExit(f"--llama-server {given}: no such file")
        return Path(given)
    found = sorted(glob.glob(str(work / "llama-src/*/vendor/llama.cpp/build-noamx/bin/llama-server")))
    if found:
        return Path(found[0])
    src = work / "llama-src"
    src.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", LLAMA_CPP_PYTHON_SDIST, "--no-binary", ":all:",
                    "--no-deps", "-d", str(src)], check=True)
    tgz = next(src.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(tgz) as t:
        t.extractall(src, filter="data")
    lc = next(src.glob("llama_cpp_python-*/vendor/llama.cpp"))
    subprocess.run(["cmake", "-S", str(lc), "-B", str(lc / "build-noamx"), *llama_cmake_flags()], check=True)
    subprocess.run(["cmake", "--build", str(lc / "build-noamx"), "--target", "llama-server",
                    f"-j{len(os.sched_getaffinity(0))}"], check=True)
    return lc / "build-noamx/bin/llama-server"


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def one_request(port: int, i: int, max_tokens: int, model: str, extra: dict | None = None) -> dict:
    """One streaming chat completion; arrival times of its content chunks."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": f"{QUESTION} (request {i})"}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}, **(extra or {})})
    t0 = time.perf_counter()
    times: list[float] = []
    usage = None
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        c.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return {"error": f"HTTP {r.status}: {r.read()[:200]!r}"}
        done = False
        while True:
            line = r.fp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                break
            ev = json.loads(data)
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices") or []:
                if (ch.get("delta") or {}).get("content"):
                    times.append(time.perf_counter())
        c.close()
        if not done:
            return {"error": "stream ended without [DONE]"}
    except (OSError, http.client.HTTPException, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    n = (usage or {}).get("completion_tokens") or len(times)
    return {"t0": t0, "times": times, "tokens": n, "end": time.perf_counter()}


def phase(port: int, k: int, requests: int, max_tokens: int, model: str, base: int, extra: dict | None = None) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def client(j: int) -> None:
        for r in range(requests):
            res = one_request(port, base + j * requests + r, max_tokens, model, extra)
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(j,)) for j in range(k)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    ttft = [r["times"][0] - r["t0"] for r in ok if r["times"]]
    itl = [b - a for r in ok for a, b in zip(r["times"], r["times"][1:])]
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": k, "requests": len(results), "errors": len(results) - len(ok),
            "error_examples": [r["error"] for r in results if "error" in r][:3], "wall_s": wall, "tokens": tokens,
            "agg_tok_s": tokens / wall if wall > 0 else 0.0, "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
            "itl_p50": pct(itl, 50), "itl_p99": pct(itl, 99)}


def server_pid(port: int) -> int | None:
    import psutil

    for p in psutil.Process().children(recursive=True):
        try:
            if str(port) in p.cmdline():
                return p.pid
        except psutil.Error:
            pass
    return None


def rss(pid: int | None) -> int | None:
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss) if pid else None
    except psutil.Error:
        return None


def run_system(name: str, cmd: list[str], port: int, limits, device_paths: list[str], clients: list[int],
               requests: int, max_tokens: int, model: str, ready_timeout: float, extra: dict | None = None) -> dict:
    """Start ``cmd`` (a server) as a rig run in this (the main) thread -- the rig forwards signals, which only the
    main thread may handle -- while a driver thread waits for /v1/models, runs the phases and stops the server."""
    from edgespool.apps.rig.runner import run_in_rig

    row: dict = {"system": name, "phases": []}

    def drive() -> None:
        t0 = time.perf_counter()
        ready = False
        while time.perf_counter() - t0 < ready_timeout:
            try:
                if get(port, "/v1/models")[0] == 200:  # 503 while loading (edgespool); llama-cpp-python has no /health
                    ready = True
                    break
            except OSError:
                pass
            time.sleep(0.2)
        row["load_s"] = time.perf_counter() - t0
        pid = server_pid(port)
        if not ready:
            row["error"] = "server not ready"
        else:
            idle = []
            for i, k in enumerate(clients):
                row["phases"].append(phase(port, k, requests, max_tokens, model, base=1000 * i, extra=extra))
                time.sleep(0.5)
                idle.append(rss(pid))
                p = row["phases"][-1]
                print(f"  {name} k={k}: {p['agg_tok_s']:.2f} tok/s, errors {p['errors']} {p['error_examples']}",
                      file=sys.stderr, flush=True)
            # growth: the largest phase once more; the idle RSS after it minus after its first run (the same load
            # twice, so the allocator's high-water mark of that load is already reached)
            again = phase(port, clients[-1], requests, max_tokens, model, base=1000 * len(clients), extra=extra)
            row["again"] = again
            time.sleep(0.5)
            idle.append(rss(pid))
            row["idle_rss"] = idle
            row["rss_growth"] = (idle[-1] - idle[-2]) if len(idle) > 1 and None not in idle[-2:] else None
        if pid:
            os.kill(pid, signal.SIGTERM if ready else signal.SIGKILL)

    t = threading.Thread(target=drive, daemon=True)
    t.start()
    try:
        rep = run_in_rig(cmd, limits, device_paths=device_paths, evict_paths=device_paths, timeout=3600)
        row.update(peak_cgroup=rep.peak_memory, oom_kills=rep.oom_kills, exit_code=rep.exit_code,
                   limits={lim.name: lim.display + f" ({lim.mode})" for lim in rep.limits})
    except Exception as e:  # reported in the row
        row["rig_error"] = f"{type(e).__name__}: {e}"
    t.join(timeout=60)
    return row


def table(rows: list[dict], meta: dict) -> str:
    out = [f"Rig {meta['profile']}; weights {meta['weights'] / MiB:.0f} MiB; streamed budget "
           f"{meta['budget'] / MiB:.0f} MiB, streamed memory limit {meta['stream_limit'] / MiB:.0f} MiB; "
           f"{meta['requests']} request(s) per client, {meta['max_tokens']} tokens each; --parallel 4 on both",
           "", "| system | clients | agg tok/s | x 1 client | TTFT p50 / p99 s | ITL p50 / p99 ms | errors | "
           "peak cgroup | OOM | RSS growth |", "|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, fmt="{:.2f}", scale=1.0):
        return "-" if v is None else fmt.format(v * scale)

    for r in rows:
        if not r["phases"]:
            out.append(f"| {r['system']} | - | {r.get('error') or r.get('rig_error')} | | | | | "
                       f"{f(r.get('peak_cgroup'), '{:.0f} MiB', 1 / MiB)} | {r.get('oom_kills')} | |")
            continue
        one = r["phases"][0]["agg_tok_s"]
        phases = r["phases"] + ([dict(r["again"], clients=f"{r['again']['clients']} again")] if r.get("again") else [])
        for i, p in enumerate(phases):
            last = i == len(phases) - 1
            out.append(f"| {r['system'] if i == 0 else ''} | {p['clients']} | {p['agg_tok_s']:.2f} | "
                       f"{p['agg_tok_s'] / one if one else 0:.2f}x | {f(p['ttft_p50'])} / {f(p['ttft_p99'])} | "
                       f"{f(p['itl_p50'], '{:.0f}', 1e3)} / {f(p['itl_p99'], '{:.0f}', 1e3)} | {p['errors']} | "
                       + (f"{f(r.get('peak_cgroup'), '{:.0f} MiB', 1 / MiB)} | {r.get('oom_kills')} | "
                          f"{f(r.get('rss_growth'), '{:+.1f} MiB', 1 / MiB)} |" if last else "| | |"))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--profile", default="rpi5")
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--systems", default="edgespool-resident,edgespool-stream,llama-resident,llama-stream")
    ap.add_argument("--llama-server", default=None, help="path of a llama-server binary (llama-* systems)")
    ap.add_argument("--requests", type=int, default=1, help="requests per client per phase")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--stream-max-tokens", type=int, default=16, help="max_tokens in the streamed runs")
    ap.add_argument("--headroom", default="96MiB", help="streamed memory limit = budget + this (both servers)")
    ap.add_argument("--ready-timeout", type=float, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from edgespool.apps.assets import fetch
    from edgespool.apps.rig.limits import resolve_limits
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.targets import get_target
    from edgespool.units import parse_bytes

    args.work.mkdir(parents=True, exist_ok=True)
    gguf = fetch("qwen2.5-coder-0.5b")
    bundle_dir = args.work / "qwen05-keep"
    if not (bundle_dir / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "edgespool", "export", str(gguf), "-o", str(bundle_dir), "--quant",
                        "keep", "--target", "host"], check=True)
    b = Bundle(bundle_dir)
    weights = int(b.weights_nbytes)
    budget = weights // 4
    stream_limit = budget + parse_bytes(args.headroom, "--headroom")
    prof, _, medium = args.profile.partition(":")
    target = get_target(prof)
    clients = [int(x) for x in args.clients.split(",")]
    rows = []
    for name in args.systems.split(","):
        port = free_port()
        streamed = "-stream" in name
        limits = resolve_limits(target, medium or None, memory=str(stream_limit) if streamed else None)
        extra = None
        if name.startswith("llamacpp-python"):  # llama-cpp-python's own server (one request at a time)
            cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port",
                   str(port), "--n_ctx", "2048", "--n_threads", str(len(os.sched_getaffinity(0))),
                   "--model_alias", gguf.name]
            paths = [str(gguf)]
            model = gguf.name
            extra = {"logit_bias": {"151645": -100, "151643": -100}}  # no ignore_eos there: EOS ids banned
        elif name.startswith("edgespool"):
            cmd = [sys.executable, "-m", "edgespool", "serve", str(bundle_dir), "--port", str(port), "--parallel",
                   "4"] + (["--memory-budget", str(budget)] if streamed else ["--ctx-size", "2048"])
            paths = [str(bundle_dir / "weights.bin")]
            model = bundle_dir.name
        else:
            if not args.llama_server:
                print(f"skip {name}: no --llama-server", file=sys.stderr)
                continue
            cmd = [args.llama_server, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", "4",
                   "-c", "2048", "-t", str(len(os.sched_getaffinity(0))), "--no-webui"] + \
                (["--no-repack"] if name.endswith("-norepack") else [])
            paths = [str(gguf)]
            model = gguf.name
        mt = args.stream_max_tokens if streamed else args.max_tokens
        print(f"{name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        rows.append(run_system(name, cmd, port, limits, paths, clients, args.requests, mt, model,
                               args.ready_timeout, extra))
    meta = {"profile": args.profile, "weights": weights, "budget": budget, "stream_limit": stream_limit,
            "requests": args.requests, "max_tokens": f"{args.max_tokens} (streamed: {args.stream_max_tokens})",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg()}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    print(table(rows, meta))
    print(f"\nload average {meta['load'][0]:.1f}; {meta['date']}")


if __name__ == "__main__":
    main()
