"""Launching a cluster run: the worker command line, mpirun on emulated boards (or real hosts over ssh), and the
ranks' JSON result lines read back."""
from __future__ import annotations

import json
import os
import re
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


_BANNER = re.compile(r"[-=*]{8,}.*$")
_NOTICED = re.compile(r"process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+)(?: \(([^)]*)\))?")


def failure_message(stderr: str, returncode: int) -> str:
    """One line saying why a cluster job failed: the first rank's ``edgespool cluster: error`` line, else what
    mpirun noticed (a rank killed by a signal: a board that died), else mpirun's last line."""
    lines = [ln for ln in stderr.splitlines() if "edgespool cluster: error" in ln]
    if lines:  # mpirun may write its abort banner (a row of dashes) onto the end of the rank's line: cut it
        return _BANNER.sub("", lines[0].split("edgespool cluster: error: ", 1)[1]).strip()
    m = _NOTICED.search(" ".join(stderr.split()))
    if m:
        rank, node, sig, name = m.groups()
        return (f"rank {rank} on board {node} was killed by signal {sig}{f' ({name})' if name else ''} mid-run: "
                "the job was ended on the other boards")
    tail = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not set(ln.strip()) <= set("-=*")][-1:]
    return f"mpirun exited {returncode}: {tail[0] if tail else '(no output)'}"


def _session_pids(sid: int) -> list[int]:
    """The processes of session ``sid`` (field 6 of /proc/PID/stat)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
                out.append(int(d))
    return out


def _end(p: subprocess.Popen) -> None:
    """End the mpirun we started and everything it started: mpirun gets SIGTERM (it then stops the ranks it can
    reach); whatever of its session is left after 3 s -- e.g. the daemon of a board whose link is cut, which
    Open MPI's launcher puts in a process group of its own -- gets SIGKILL, by pid."""
    import signal

    try:
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=3.0)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for pid in _session_pids(p.pid):  # start_new_session: the session id is mpirun's pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()


def run_cluster(mpirun: list[str], worker: list[str], timeout_s: float = 600.0, grace_s: float = 5.0) -> ClusterRun:
    """Run ``mpirun + worker`` and read rank 0's result; a failed job raises :class:`ClusterError` with the
    ranks' one-line error (or what mpirun noticed, or its last line). Once a rank has printed its error line,
    mpirun gets ``grace_s`` to end the job; a launcher still waiting after that (a board whose link is cut stays
    unreachable, so Open MPI cannot tear its daemon down) is ended here: a fault never hangs the caller."""
    import threading
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    t0 = time.perf_counter()
    p = subprocess.Popen(mpirun + worker, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    out: list[str] = []
    err: list[str] = []
    failed = threading.Event()

    def pump_err() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            err.append(line)
            if "edgespool cluster: error" in line:
                failed.set()

    def pump_out() -> None:
        assert p.stdout is not None
        out.append(p.stdout.read())

    pumps = [threading.Thread(target=f, daemon=True) for f in (pump_err, pump_out)]
    for t in pumps:
        t.start()
    timed_out = False
    while p.poll() is None:
        if failed.wait(0.2):
            try:
                p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _end(p)
            break
        if time.perf_counter() - t0 > timeout_s:
            timed_out = True
            _end(p)
            break
    p.wait()
    for t in pumps:  # the pipes close once every process holding them is gone
        t.join(timeout=10)
    wall = time.perf_counter() - t0
    stdout, stderr = "".join(out), "".join(err)
    if timed_out and not failed.is_set():
        raise ClusterError(f"cluster run did not finish within {timeout_s:g} s")
    objs = rank_objects(stdout)
    first = next((o for o in objs if o.get("rank") == 0 and "tokens" in o), None)
    if p.returncode != 0 or first is None:
        raise ClusterError(failure_message(stderr, p.returncode))
    return ClusterRun(tokens=first["tokens"], ttft_s=first["ttft_s"], decode_s=first["decode_s"],
                      prompt_tokens=first["prompt_tokens"], ranks=sorted(objs, key=lambda o: o["rank"]), wall_s=wall)
