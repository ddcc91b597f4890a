"""Run one command under the rig's limits and measure it: wall time, peak memory, bytes read from the device,
OOM kills, exit code. Each limit is reported as ``real`` (enforced by the kernel through a cgroup or affinity) or
``emulated`` (a weaker stand-in, see :mod:`.fallback`).

Read top to bottom: pick the devices -> create cgroups -> set limits -> spawn the child (it joins the groups
before exec) -> wait (forwarding signals) -> read usage -> kill leftovers and remove the groups (always).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...errors import RigError
from .blockdev import devices_for_paths
from .cgroups import RigCgroups
from .fallback import apply_in_child, io_env, pick_cpus
from ...units import fmt_bytes, fmt_rate
from .limits import RigLimits
from .pagecache import cached_fraction, evict

_CACHE_WARN = 0.5  # warn when more than half of a file the command reads is already in the page cache
_CACHE_CHECK_FILES = 5000


@dataclass(frozen=True)
class LimitReport:
    """One limit as applied: its value, ``real``/``emulated``/``none``, how, and where the value came from."""

    name: str  # memory | read_bandwidth | read_iops | cores
    value: int | None
    display: str
    mode: str  # "real" | "emulated" | "none"
    mechanism: str
    source: str


@dataclass
class RigReport:
    """The outcome of one rig run; every figure says how it was measured (``*_source``)."""

    command: list[str]
    exit_code: int  # shell convention: 128 + N when killed by signal N (137 = SIGKILL, e.g. the OOM killer)
    signal: str | None
    wall_s: float
    peak_memory: int | None
    peak_memory_source: str
    max_rss: int | None  # largest resident set of any process of the run (wait4 rusage)
    device_read_bytes: int | None
    device_read_source: str
    oom_kills: int | None
    limits: list[LimitReport]
    devices: list[str]
    profile: str | None = None
    storage: str | None = None
    arch: str = ""
    cached_before: dict[str, float] = field(default_factory=dict)  # path -> fraction in page cache at start
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dictionary (``edgespool rig run --json``)."""
        return asdict(self)

    def format_table(self) -> str:
        """Human-readable report."""
        rows = [
            ("command", " ".join(self.command)),
            ("target", (self.profile or "-") + (f" ({self.storage})" if self.storage else "") +
             (f", {self.arch}" if self.arch else "")),
            ("exit code", f"{self.exit_code}" + (f" ({self.signal})" if self.signal else "")),
            ("wall time", f"{self.wall_s:.3f} s"),
            ("peak memory", f"{fmt_bytes(self.peak_memory)}  [{self.peak_memory_source}]"),
            ("max RSS", f"{fmt_bytes(self.max_rss)}  [wait4 rusage]"),
            ("device reads", f"{fmt_bytes(self.device_read_bytes)}  [{self.device_read_source}]"),
            ("OOM kills", "-" if self.oom_kills is None else str(self.oom_kills)),
        ]
        out = [f"{k:13s} {v}" for k, v in rows]
        out.append("limits:")
        for lim in self.limits:
            out.append(f"  {lim.name:15s} {lim.display:>10s}  {lim.mode:8s} {lim.mechanism}"
                       + (f"  (from {lim.source})" if lim.source else ""))
        for w in self.warnings:
            out.append(f"warning: {w}")
        return "\n".join(out)


def _signal_name(code: int) -> str | None:
    if code > 128:
        try:
            return signal.Signals(code - 128).name
        except ValueError:
            return None
    return None


def _read_paths(cmd: list[str], cwd: str, extra: list[str]) -> tuple[list[str], list[str]]:
    """(paths whose devices get the throttle: explicit ones, else the cwd plus existing path arguments;
    paths whose page-cache residency is checked: explicit ones and path arguments, never the whole cwd)."""
    args = []
    for a in cmd[1:]:
        p = a if os.path.isabs(a) else os.path.join(cwd, a)
        if a and not a.startswith("-") and os.path.exists(p) and not os.path.samefile(p, cwd):
            args.append(os.path.abspath(p))
    if extra:
        return [os.path.abspath(p) for p in extra], [os.path.abspath(p) for p in extra] + args
    return [cwd] + args, args


def _cache_report(paths: list[str]) -> dict[str, float]:
    out = {}
    budget = _CACHE_CHECK_FILES
    for p in paths:
        n = sum(1 for _ in Path(p).rglob("*")) if os.path.isdir(p) else 1
        if n > budget:
            continue
        budget -= n
        try:
            out[p] = round(cached_fraction(p), 4)
        except OSError:
            pass
    return out


class _Forwarder:
    """Forward SIGINT/SIGTERM/SIGHUP sent to the rig to the child's process group; a second one kills it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, pgid: int, cgroups: RigCgroups | None):
        self.pgid, self.cgroups, self.count, self.received = pgid, cgroups, 0, []
        self.old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, _frame) -> None:
        self.count += 1
        self.received.append(signal.Signals(signum).name)
        sig = signum if self.count == 1 else signal.SIGKILL
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass
        if self.count > 1 and self.cgroups is not None:
            self.cgroups.kill_all()

    def restore(self) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)


def run_in_rig(cmd: list[str], limits: RigLimits, *, device_paths: list[str] | None = None, emulate: bool = False,
               evict_paths: list[str] | None = None, timeout: float | None = None, cwd: str | None = None,
               env: dict[str, str] | None = None, launcher: list[str] | None = None, arch: str = "") -> RigReport:
    """Run ``cmd`` under ``limits`` and return the report. ``launcher`` is prepended to the command actually spawned
    (the arm64 rig's namespace helper) while device paths are taken from ``cmd``. ``emulate`` skips cgroups and uses
    the fallbacks for every limit. The child's stdin/stdout/stderr are the rig's own."""
    if not cmd:
        raise RigError("no command given: use `edgespool rig run [OPTIONS] -- CMD ...`")
    cwd = os.path.abspath(cwd or os.getcwd())
    warnings = list(limits.notes)
    for p in evict_paths or []:
        evict(p)
    throttle_paths, check_paths = _read_paths(cmd, cwd, device_paths or [])
    devices, unbacked = devices_for_paths(throttle_paths)
    cached = _cache_report(check_paths)
    wants_io = bool(limits.read_bandwidth or limits.read_iops)
    for p, frac in cached.items():
        if frac > _CACHE_WARN and wants_io:
            warnings.append(f"{p} is {frac:.0%} in the page cache: those reads will not be throttled (evict it "
                            "first with --evict, or read with O_DIRECT)")

    controllers = ("memory", "blkio") + (("cpuset",) if limits.cores else ())
    cg = None if emulate else RigCgroups(controllers)
    reports: list[LimitReport] = []
    child_env = dict(os.environ if env is None else env)
    cpus_affinity: list[int] | None = None
    rlimit_as: int | None = None

    def why(c: str) -> str:
        return "--emulate" if emulate else cg.unavailable.get(c, "unavailable")

    try:
        if cg is not None:
            cg.create()
        # memory
        if limits.memory:
            if cg is not None and "memory" in cg.dirs:
                reports.append(LimitReport("memory", limits.memory, fmt_bytes(limits.memory), "real",
                                           cg.set_memory(limits.memory), limits.source("memory")))
            else:
                rlimit_as = limits.memory
                reports.append(LimitReport("memory", limits.memory, fmt_bytes(limits.memory), "emulated",
                                           f"RLIMIT_AS (virtual memory, excludes page cache; {why('memory')})",
                                           limits.source("memory")))
        # storage
        if wants_io:
            real_io = cg is not None and "blkio" in cg.dirs and devices
            mech = ""
            if real_io:
                mech = cg.set_read_throttle(devices, limits.read_bandwidth, limits.read_iops)
                if unbacked:
                    warnings.append(f"no block device backs {', '.join(unbacked)} (tmpfs?): reads there are not "
                                    "throttled")
            else:
                child_env.update(io_env(limits.read_bandwidth, limits.read_iops))
                reason = why("blkio") if (emulate or cg is None or "blkio" not in cg.dirs) else \
                    f"no block device backs {', '.join(unbacked)}"
                mech = f"EDGESPOOL_IO_BANDWIDTH/_IOPS for edgespool's reader only ({reason})"
            for name, val, disp in (("read_bandwidth", limits.read_bandwidth, fmt_rate(limits.read_bandwidth)),
                                    ("read_iops", limits.read_iops, f"{limits.read_iops}/s")):
                if val:
                    reports.append(LimitReport(name, val, disp, "real" if real_io else "emulated", mech,
                                               limits.source(name)))
        # cores
        if limits.cores:
            cpus = pick_cpus(limits.cores)
            if cg is not None and "cpuset" in cg.dirs:
                mech = cg.set_cpus(cpus)
            else:
                cpus_affinity = cpus
                mech = f"sched_setaffinity {cpus} (not locked: the command may widen it; {why('cpuset')})"
            reports.append(LimitReport("cores", limits.cores, str(limits.cores), "real", mech, limits.source("cores")))

        procs = cg.procs_files if cg is not None else []
        interactive = sys.stdin is not None and sys.stdin.isatty() and _is_foreground()

        def preexec() -> None:  # in the child, between fork and exec
            os.setpgid(0, 0)
            if interactive:  # give the terminal to the child's process group so Ctrl-C reaches it (only it)
                old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
                try:
                    os.tcsetpgrp(0, os.getpgrp())
                finally:
                    signal.signal(signal.SIGTTOU, old)
            for p in procs:
                fd = os.open(p, os.O_WRONLY)
                try:
                    os.write(fd, str(os.getpid()).encode())
                finally:
                    os.close(fd)
            apply_in_child(cpus_affinity, rlimit_as)

        argv = list(launcher or []) + list(cmd)
        t0 = time.monotonic()
        try:
            child = subprocess.Popen(argv, cwd=cwd, env=child_env, preexec_fn=preexec)
        except OSError as e:
            raise RigError(f"cannot start {argv[0]!r}: {e.strerror}") from None
        fwd = _Forwarder(child.pid, cg)
        try:
            status, rusage = _wait(child, timeout, cg, warnings)
        finally:
            fwd.restore()
            if interactive:
                _take_terminal_back()
        wall = time.monotonic() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        code = child.returncode if child.returncode >= 0 else 128 - child.returncode
        if fwd.received:
            warnings.append(f"the rig received {', '.join(fwd.received)} and forwarded it to the command")

        st = cg.stats() if cg is not None else None
        if cg is not None:
            left = cg.pids()
            if left:
                warnings.append(f"{len(left)} process(es) the command left behind were killed")
        peak = st.peak_memory if st and st.peak_memory is not None else None
        if st is not None and "blkio" in cg.dirs:
            dev_keys = {d.majmin for d in devices}
            read = sum(v for k, v in st.read_bytes.items() if not dev_keys or k in dev_keys)
            read_src = st.read_source + (f" on {', '.join(sorted(dev_keys))}" if dev_keys else "")
        else:
            read, read_src = rusage.ru_inblock * 512, "wait4 rusage ru_inblock (all devices)"
        return RigReport(
            command=list(cmd), exit_code=code, signal=_signal_name(code), wall_s=round(wall, 4),
            peak_memory=peak if peak is not None else rusage.ru_maxrss * 1024,
            peak_memory_source=st.memory_source if peak is not None else "wait4 rusage ru_maxrss (largest process)",
            max_rss=rusage.ru_maxrss * 1024, device_read_bytes=read, device_read_source=read_src,
            oom_kills=st.oom_kills if st else None, limits=reports, devices=[str(d) for d in devices],
            profile=limits.profile, storage=limits.storage, arch=arch, cached_before=cached, warnings=warnings)
    finally:
        if cg is not None:
            cg.destroy()


def _wait(child: subprocess.Popen, timeout: float | None, cg: RigCgroups | None, warnings: list[str]):
    """wait4 the child (signals arriving meanwhile run the forwarder); on timeout SIGTERM, then SIGKILL."""
    if timeout is None:
        _, status, rusage = os.wait4(child.pid, 0)
        return status, rusage
    deadline = time.monotonic() + timeout
    stage = 0
    while True:
        pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            return status, rusage
        now = time.monotonic()
        if now > deadline and stage < 2:
            sig = signal.SIGTERM if stage == 0 else signal.SIGKILL
            warnings.append(f"timed out after {timeout:g} s: sent SIGTERM" if stage == 0
                            else "still running 5 s after SIGTERM: killed")
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                pass
            if stage == 1 and cg is not None:
                cg.kill_all()
            stage, deadline = stage + 1, now + 5
        time.sleep(0.01)


def _is_foreground() -> bool:
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _take_terminal_back() -> None:
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(0, os.getpgrp())
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, old)
