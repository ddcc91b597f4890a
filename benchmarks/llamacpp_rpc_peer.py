"""The peer of edgespool's cluster mode (issue 19): llama.cpp's RPC backend (``-DGGML_RPC=ON``), one
``ggml-rpc-server`` per EMULATED board, ``llama-bench --rpc`` as the client on the host side.

    python benchmarks/llamacpp_rpc_peer.py --build /var/tmp/h19b/lcbuild --gguf A.gguf[,B.gguf] [--boards 1,2]
        [--links ethernet,wifi] [--limits none,1/4,1/4+600MiB] [-p 16 -n 8 -r 2] [--json OUT]

The boards are the same as the cluster bench's (``apps/cluster/boards.py`` EmulatedBoards): a network namespace
each, tc tbf on its veth, a rig cgroup with a one-core cpuset, the blkio read throttle (``--read-mbps``, on the
disk of ``--cache-dir``: an RPC server gets its weights over the network, or with ``-c`` from its local cache
folder there) and a memory limit (``--limits``: ``none``, a size, a fraction of the GGUF's bytes, or
``F/D+SIZE``: the fraction plus an allowance, e.g. the 600 MiB our boards get for the interpreter). The servers
run ``-t 1 -c`` (one thread, the local tensor cache: after the first load a server reads its share from its own
disk instead of the link). Links: tc tbf on BOTH ends of each board's veth (server -> client inside the
namespace, client -> server on the host side) plus a SIMULATED latency: the client reaches each server through a
userspace TCP proxy on the host that holds every chunk RTT/2 in each direction (netem is absent on this kernel).
The proxy also counts the link traffic: bytes each way and the client's RPC commands (it parses the request
framing ``| cmd (1 byte) | size (8 bytes) | data |``). One llama-bench call per configuration runs the tests
pp16, tg8 and tg24 (``-o jsonl`` flushes each result when its test ends, so the proxy's counters are read at
each test's end): per decode token traffic = (tg24's traffic - tg8's) / (r x 16).

llama.cpp splits the model by layers over the RPC devices (``-sm layer``: pipeline parallel; its ``row`` split is
CUDA/SYCL only) in proportion to the free memory each server reports (the host's: psutil-style, the cgroup limit
is not seen, so the split is even). An RPC server holds its whole share in RAM (no streaming): under a memory
limit below its share it is OOM-killed; that is recorded (server exit status, the cgroup's oom_kill) as the
result. The client holds the token embedding table (llama.cpp keeps the input layer on the CPU) and computes
nothing else with ``-ngl 99``."""
from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

MiB = 1 << 20
PORT = 50052


class DelayProxy:
    """A TCP proxy on 127.0.0.1 to ``(host, port)`` that holds each chunk ``delay_s`` in each direction and counts
    bytes both ways and the client's RPC commands (by command byte)."""

    def __init__(self, host: str, port: int, delay_s: float) -> None:
        self.target, self.delay = (host, port), delay_s
        self.lock = threading.Lock()
        self.up_bytes = self.down_bytes = 0
        self.commands: dict[int, int] = {}
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self) -> dict:
        with self.lock:
            return {"up_bytes": self.up_bytes, "down_bytes": self.down_bytes, "commands": dict(self.commands)}

    def close(self) -> None:
        self.closed = True
        self.srv.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(self.target, timeout=10)
                s.settimeout(None)
            except OSError:  # the server is gone (e.g. OOM-killed): the client sees its connection closed
                c.close()
                continue
            for x in (c, s):
                x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            parser = _CommandParser(self)
            for a, b, up in ((c, s, True), (s, c, False)):
                q: queue.Queue = queue.Queue()
                threading.Thread(target=self._read, args=(a, q, up, parser), daemon=True).start()
                threading.Thread(target=self._write, args=(b, q), daemon=True).start()

    def _read(self, sock: socket.socket, q: queue.Queue, up: bool, parser: _CommandParser) -> None:
        while True:
            try:
                data = sock.recv(1 << 20)
            except OSError:
                data = b""
            q.put((time.monotonic() + self.delay, data))
            if not data:
                return
            with self.lock:
                if up:
                    self.up_bytes += len(data)
                    parser.feed(data)
                else:
                    self.down_bytes += len(data)

    @staticmethod
    def _write(sock: socket.socket, q: queue.Queue) -> None:
        while True:
            due, data = q.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    return
                sock.sendall(data)
            except OSError:
                return


class _CommandParser:
    """Counts the RPC requests in the client -> server byte stream (called under the proxy's lock)."""

    def __init__(self, proxy: DelayProxy) -> None:
        self.proxy, self.buf, self.skip = proxy, b"", 0

    def feed(self, data: bytes) -> None:
        if self.skip >= len(data):
            self.skip -= len(data)
            return
        self.buf += data[self.skip:]
        self.skip = 0
        while len(self.buf) >= 9:
            cmd, size = self.buf[0], struct.unpack("<Q", self.buf[1:9])[0]
            self.proxy.commands[cmd] = self.proxy.commands.get(cmd, 0) + 1
            rest = len(self.buf) - 9
            if size <= rest:
                self.buf = self.buf[9 + size:]
            else:
                self.skip, self.buf = size - rest, b""


def parse_limit(text: str, gguf_bytes: int) -> int | None:
    """``none`` -> None; a size; ``F/D`` of the GGUF's bytes; ``F/D+SIZE``."""
    from edgespool.units import parse_bytes

    t = text.strip()
    if t == "none":
        return None
    frac, _, extra = t.partition("+")
    if "/" in frac:
        n, d = frac.split("/")
        base = gguf_bytes * int(n) // int(d)
    else:
        return parse_bytes(t, "--limits")
    return base + (parse_bytes(extra, "--limits") if extra else 0)


def bench(build: Path, gguf: str, endpoints: list[str], args: list[str], timeout: float,
          proxies: list[DelayProxy]) -> tuple[list[dict], list[list[dict]], str]:
    """Run llama-bench (``-o jsonl``: one line per test, flushed when the test ends) with these RPC endpoints;
    returns its results, the proxies' counters when each result line arrived (one list per line, plus the counters
    at the start first) and an error line ('' when it worked)."""
    cmd = [str(build / "bin" / "llama-bench"), "-m", gguf, "--rpc", ",".join(endpoints), "-ngl", "99", "-t", "1",
           "-o", "jsonl", *args]
    snaps, results, err = [[p.snapshot() for p in proxies]], [], ""
    import tempfile

    with tempfile.TemporaryFile("w+") as errf:  # a file, not a pipe: its log must not block the result lines
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True)
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        try:
            for line in p.stdout:  # type: ignore[union-attr]
                if line.startswith("{"):
                    snaps.append([x.snapshot() for x in proxies])
                    results.append(json.loads(line))
            rc = p.wait()
        finally:
            killer.cancel()
        errf.seek(0)
        stderr = errf.read()
    if rc != 0:
        tail = [ln for ln in stderr.splitlines() if ln.strip()][-3:]
        err = f"llama-bench exited {rc}" + (" (killed at the time limit)" if rc == -9 else "") + ": " + " | ".join(tail)
    return results, snaps, err


def run_config(a, gguf: str, k: int, link, limit: int | None) -> dict:
    """One configuration: k boards (each an rpc-server), one link, one memory limit."""
    from edgespool.apps.cluster.boards import BoardLimits, EmulatedBoards

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # "none": the host's RAM (the peak is measured)
    limits = BoardLimits(memory=limit or ram, read_bps=int(a.read_mbps * 1e6), storage=(a.cache_dir,),
                         cpus=tuple(range(min(2, os.cpu_count() or 1))))
    res: dict = {"gguf": Path(gguf).name, "boards": k, "link": link.name, "rate_mbit": link.rate_mbit,
                 "rtt_ms": link.rtt_ms, "memory_limit": limit, "started_utc": time.strftime("%H:%M:%S", time.gmtime())}
    with EmulatedBoards(k, rate_mbit=link.rate_mbit, limits=limits) as boards:
        for veth in boards.veth:  # the client -> server direction too (EmulatedBoards shapes the board's egress)
            subprocess.run(["tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", f"{link.rate_mbit}mbit", "burst",
                            f"{max(32, int(link.rate_mbit * 1000 // 8 // 100))}kb", "latency", "50ms"],
                           check=True, capture_output=True)
        servers = []
        for i, host in enumerate(boards.hosts):
            cache = Path(a.cache_dir) / f"board{i}"
            cache.mkdir(parents=True, exist_ok=True)
            with open(Path(a.cache_dir) / f"server{i}.log", "w") as log:
                servers.append(subprocess.Popen(
                    [str(boards.agent), host, f"LLAMA_CACHE={cache} exec {a.build}/bin/ggml-rpc-server -H {host} "
                     f"-p {PORT} -t 1 -c"], stdout=log, stderr=subprocess.STDOUT))
        for host in boards.hosts:
            _wait_port(host, PORT, 30)
        proxies = [DelayProxy(h, PORT, link.rtt_ms / 2e3) for h in boards.hosts]
        ends = [f"127.0.0.1:{p.port}" for p in proxies]
        try:
            t0 = time.perf_counter()
            n2 = a.n * 3
            out, snaps, err = bench(a.build, gguf, ends, ["-p", str(a.p), "-n", f"{a.n},{n2}", "-r", str(a.r)],
                                    a.timeout, proxies)
            res["wall_s"] = time.perf_counter() - t0
            res["error"] = err
            for t, after, before in zip(out, snaps[1:], snaps):
                kind = "pp" if t["n_gen"] == 0 else f"tg{t['n_gen']}"
                res[f"{kind}_tok_s"] = t["avg_ts"]
                res[f"{kind}_samples_ns"] = t["samples_ns"]
                res[f"{kind}_traffic"] = [_diff(x, y) for x, y in zip(after, before)]
            if f"tg{n2}_traffic" in res:  # the longer test's extra tokens: r x (n2 - n) of them
                res["tg_tok_s"], res["tg_samples_ns"] = res[f"tg{a.n}_tok_s"], res[f"tg{a.n}_samples_ns"]
                extra = a.r * (n2 - a.n)
                res["per_token"] = [{key: (l[key] - s_[key]) / extra for key in ("up_bytes", "down_bytes", "commands")}
                                    for s_, l in zip(res[f"tg{a.n}_traffic"], res[f"tg{n2}_traffic"])]
        finally:
            for p in proxies:
                p.close()
            res["server_exit"] = [s.poll() for s in servers]
            res["cgroups"] = boards.board_stats()
    return res


def _diff(after: dict, before: dict) -> dict:
    return {"up_bytes": after["up_bytes"] - before["up_bytes"], "down_bytes": after["down_bytes"] - before["down_bytes"],
            "commands": sum(after["commands"].values()) - sum(before["commands"].values())}


def _wait_port(host: str, port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"rpc-server on {host}:{port} did not come up within {timeout:g} s")


def print_table(rows: list[dict]) -> None:
    print("| model | boards | memory limit per board | link | decode tok/s | prompt tok/s (pp16) | prompt s | "
          "link bytes/token (up / down, all boards) | RPC commands/token | peak MiB per board | OOM kills | result |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lim = "none" if r["memory_limit"] is None else f"{r['memory_limit'] / MiB:.0f} MiB"
        pt = r.get("per_token") or []
        up = sum(x["up_bytes"] for x in pt)
        down = sum(x["down_bytes"] for x in pt)
        cmds = sum(x["commands"] for x in pt)
        peak = "/".join(f"{(c['peak_memory'] or 0) / MiB:.0f}" for c in r["cgroups"])
        ooms = "/".join(str(c["oom_kills"]) for c in r["cgroups"])
        killed = [i for i, (x, c) in enumerate(zip(r["server_exit"], r["cgroups"])) if x == -9 and c["oom_kills"]]
        ok = ("ok" if not r["error"] else
              f"board {'/'.join(map(str, killed))}'s server OOM-killed (cgroup oom_kill), llama-bench aborted"
              if killed else r["error"][:160])
        tg, pp = r.get("tg_tok_s"), r.get("pp_tok_s")
        print(f"| {r['gguf']} | {r['boards']} | {lim} | {r['link']} ({r['rate_mbit']:g} Mbit, {r['rtt_ms']:g} ms) | "
              f"{tg:.2f} | {pp:.1f} | {16 / pp:.2f} | {up:.0f} / {down:.0f} | {cmds:.1f} | {peak} | {ooms} | {ok} |"
              if tg and pp and pt else
              f"| {r['gguf']} | {r['boards']} | {lim} | {r['link']} ({r['rate_mbit']:g} Mbit, {r['rtt_ms']:g} ms) | - | "
              f"- | - | - | - | {peak} | {ooms} | {ok} (server exit {r['server_exit']}) |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True, help="the llama.cpp build folder (bin/ggml-rpc-server, bin/llama-bench)")
    ap.add_argument("--gguf", required=True, help="GGUF file(s), comma-separated")
    ap.add_argument("--boards", default="1,2")
    ap.add_argument("--links", default="ethernet,wifi")
    ap.add_argument("--limits", default="none", help="memory limits per board (comma-separated; see the docstring)")
    ap.add_argument("--read-mbps", type=float, default=90.0)
    ap.add_argument("--cache-dir", default="/var/tmp/h19b/rpc", help="the servers' cache folders (on a disk)")
    ap.add_argument("-p", type=int, default=16)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("-r", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0, help="per llama-bench call (s)")
    ap.add_argument("--json", default="")
    ap.add_argument("--merge", default="", help="print one table from these --json files; no runs")
    a = ap.parse_args()
    if a.merge:
        rows = [r for f in a.merge.split(",") if f for r in json.loads(Path(f).read_text())["rows"]]
        print_table(rows)
        return
    from edgespool.apps.cluster.solve import parse_link

    a.build = Path(a.build).resolve()
    Path(a.cache_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for gguf in a.gguf.split(","):
        size = os.path.getsize(gguf)
        for lim_text in a.limits.split(","):
            limit = parse_limit(lim_text, size)
            for ln in [parse_link(x) for x in a.links.split(",")]:
                for k in [int(x) for x in a.boards.split(",")]:
                    r = run_config(a, gguf, k, ln, limit)
                    r["limit_text"] = lim_text
                    rows.append(r)
                    if a.json:  # after every configuration (a time limit keeps what was measured)
                        Path(a.json).write_text(json.dumps({"rows": rows, "argv": sys.argv}, indent=1))
                    print(f"  {Path(gguf).name} {k} board(s) limit {lim_text} {ln.name}: tg {r.get('tg_tok_s')} "
                          f"pp {r.get('pp_tok_s')} {r['error'][:200]}", file=sys.stderr, flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "argv": sys.argv}, indent=1))
    print(f"llama.cpp RPC peer: EMULATED boards (netns + rig cgroup, one core, blkio {a.read_mbps:g} MB/s on the "
          "cache disk), servers -t 1 -c, client llama-bench -ngl 99 -t 1 on the host; link tc tbf both ways + "
          f"SIMULATED latency (delay proxy); -p {a.p} -n {a.n} -r {a.r}")
    print_table(rows)
    print("tg tok/s of each repetition: " + "; ".join(f"{r['gguf']}/{r['boards']}/{r['limit_text']}/{r['link']}: "
                                         + ", ".join(f"{1e9 * a.n / s:.2f}" for s in r.get("tg_samples_ns", []))
                                         for r in rows))


if __name__ == "__main__":
    main()
