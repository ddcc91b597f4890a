"""The rig's own cgroups: create them under the caller's cgroup, set limits, read usage, and always remove them.

Works with cgroup v1 (one hierarchy per controller: ``memory``, ``blkio``, ``cpuset``, as on this machine) and
cgroup v2 (one unified hierarchy: ``memory``, ``io``, ``cpuset``). Every group is created below the cgroup this
process is already in (read from ``/proc/self/cgroup``) and named ``edgespool-rig-<pid>-<random>``; groups whose
owner pid is gone are swept on the next run. Nothing outside those groups is written, except enabling controllers
in our own cgroup's ``cgroup.subtree_control`` on v2 (undone afterwards when we were the only user).

Limits per controller (v1 file / v2 file):
    memory   memory.limit_in_bytes (+ memsw)      / memory.max (+ memory.swap.max=0)   includes page cache
    read     blkio.throttle.read_bps_device, _iops / io.max rbps=, riops=              per block device
    cpus     cpuset.cpus (+ cpuset.mems)          / cpuset.cpus
Usage: peak memory (memory.max_usage_in_bytes / memory.peak), OOM kills (memory.oom_control / memory.events
``oom_kill``), bytes read from each device (blkio.throttle.io_service_bytes / io.stat ``rbytes``).
"""
from __future__ import annotations

import errno
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import RigError
from ...units import pid_alive
from .blockdev import BlockDevice

PREFIX = "edgespool-rig-"
CONTROLLERS = ("memory", "blkio", "cpuset")  # v1 names; v2 calls blkio "io"
_V2 = {"memory": "memory", "blkio": "io", "cpuset": "cpuset"}


@dataclass(frozen=True)
class Hierarchy:
    """Where one controller lives for this process: cgroup version and our own cgroup directory in it."""

    controller: str  # v1 name: memory, blkio, cpuset
    version: int  # 1 or 2
    base: Path  # the cgroup this process is in (we create children here)

    @property
    def mechanism(self) -> str:
        """Short label for reports, e.g. ``cgroup v1 memory``."""
        return f"cgroup v{self.version} {self.controller if self.version == 1 else _V2[self.controller]}"


def _mounts() -> list[tuple[str, str, set[str]]]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                mnt = parts[1].replace("\\040", " ")
                out.append((mnt, parts[2], set(parts[3].split(","))))
    return out


def _self_paths() -> tuple[dict[str, str], str | None]:
    """({v1 controller: path}, v2 path or None) from /proc/self/cgroup."""
    v1: dict[str, str] = {}
    v2 = None
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if hid == "0" and ctrls == "":
                v2 = path
            for c in ctrls.split(","):
                if c:
                    v1[c] = path
    return v1, v2


def discover() -> tuple[dict[str, Hierarchy], dict[str, str]]:
    """Which controllers the rig can use: ({controller: Hierarchy}, {controller: why not}).

    A controller is usable when its hierarchy is mounted read-write and our own cgroup directory is writable.
    v1 is preferred for a controller bound to a v1 hierarchy (hybrid hosts); otherwise v2 when the controller is
    listed in our v2 cgroup's ``cgroup.controllers``."""
    usable: dict[str, Hierarchy] = {}
    why: dict[str, str] = {}
    try:
        mounts = _mounts()
        v1paths, v2path = _self_paths()
    except OSError as e:
        return {}, {c: f"cannot read cgroup mounts: {e}" for c in CONTROLLERS}
    unified = next((m for m in mounts if m[1] == "cgroup2"), None)
    for c in CONTROLLERS:
        v1 = next((m for m in mounts if m[1] == "cgroup" and c in m[2]), None)
        if v1 is not None:
            base = Path(v1[0]) / v1paths.get(c, "/").lstrip("/")
            if "ro" in v1[2]:
                why[c] = f"cgroup v1 {c} is mounted read-only at {v1[0]}"
            elif not os.access(base, os.W_OK):
                why[c] = f"cgroup v1 {c} directory {base} is not writable (not root?)"
            else:
                usable[c] = Hierarchy(c, 1, base)
            continue
        if unified is not None and v2path is not None:
            base = Path(unified[0]) / v2path.lstrip("/")
            try:
                ctrls = (base / "cgroup.controllers").read_text().split()
            except OSError:
                ctrls = []
            if _V2[c] not in ctrls:
                why[c] = f"cgroup v2 controller {_V2[c]!r} is not available in {base}"
            elif "ro" in unified[2]:
                why[c] = f"cgroup v2 is mounted read-only at {unified[0]}"
            elif not os.access(base, os.W_OK):
                why[c] = f"cgroup v2 directory {base} is not writable (not root, or not delegated)"
            else:
                usable[c] = Hierarchy(c, 2, base)
            continue
        why[c] = f"no cgroup hierarchy with the {c} controller is mounted"
    return usable, why


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise RigError(f"cannot write {value.strip()!r} to {path}: {e.strerror}") from None


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _kv(text: str, key: str) -> int | None:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return None


@dataclass
class CgroupStats:
    """Usage read back from the rig's cgroups after (or during) a run; None where not measured."""

    peak_memory: int | None = None
    oom_kills: int | None = None
    read_bytes: dict[str, int] = field(default_factory=dict)  # "maj:min" -> bytes read from that device
    memory_source: str = ""
    read_source: str = ""


class RigCgroups:
    """One set of rig cgroups (a directory per v1 controller, or one v2 directory). Use as a context manager:
    the groups are removed on exit, after killing anything still inside them."""

    def __init__(self, controllers: tuple[str, ...] = CONTROLLERS, name: str | None = None):
        self.name = name or f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        usable, why = discover()
        self.hier = {c: usable[c] for c in controllers if c in usable}
        self.unavailable = {c: why[c] for c in controllers if c in why}
        self.dirs: dict[str, Path] = {}
        self._enabled_v2: list[tuple[Path, str]] = []
        self._self_leaf: tuple[Path, Path] | None = None  # (our original v2 cgroup, the leaf we moved into)

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def create(self) -> "RigCgroups":
        """Create the groups; a controller whose directory cannot be made moves to ``unavailable``."""
        for h in {h.base for h in self.hier.values()}:
            sweep_stale(h)
        for c, h in list(self.hier.items()):
            d = h.base / self.name
            try:
                if h.version == 2:
                    self._enable_v2(h.base, _V2[c])
                d.mkdir(exist_ok=True)
            except (OSError, RigError) as e:
                self.unavailable[c] = f"{h.mechanism}: cannot create {d}: {getattr(e, 'strerror', None) or e}"
                del self.hier[c]
                continue
            self.dirs[c] = d
        if "cpuset" in self.dirs and self.hier["cpuset"].version == 1:
            base = self.hier["cpuset"].base
            mems = _read(base / "cpuset.mems").strip() or _read(base / "cpuset.effective_mems").strip()
            _write(self.dirs["cpuset"] / "cpuset.mems", mems)
        return self

    def _enable_v2(self, base: Path, ctrl: str) -> None:
        sub = base / "cgroup.subtree_control"
        if ctrl in _read(sub).split():
            return
        try:
            with open(sub, "w") as f:
                f.write(f"+{ctrl}")
        except OSError as e:
            # v2 "no internal processes": a cgroup that hands controllers to children may hold no process. When
            # we are alone in our cgroup (e.g. `systemd-run --scope -p Delegate=yes`), step into a leaf and retry.
            if e.errno == errno.EBUSY and self._self_leaf is None and self._alone_in(base):
                leaf = base / f"{self.name}-self"
                leaf.mkdir(exist_ok=True)
                _write(leaf / "cgroup.procs", str(os.getpid()))
                self._self_leaf = (base, leaf)
                return self._enable_v2(base, ctrl)
            hint = (" (other processes share our cgroup; run the rig alone in a delegated cgroup, e.g. "
                    "`systemd-run --scope -p Delegate=yes edgespool rig run ...`)") if e.errno == errno.EBUSY else ""
            raise RigError(f"cannot enable +{ctrl} in {sub}: {e.strerror}{hint}") from None
        self._enabled_v2.append((base, ctrl))

    @staticmethod
    def _alone_in(base: Path) -> bool:
        try:
            return _read(base / "cgroup.procs").split() == [str(os.getpid())]
        except OSError:
            return False

    def __enter__(self) -> "RigCgroups":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.destroy()

    @property
    def procs_files(self) -> list[str]:
        """The distinct ``cgroup.procs`` files a process writes its pid into to join every rig group."""
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    def attach(self, pid: int) -> None:
        """Move ``pid`` into every rig group."""
        for p in self.procs_files:
            _write(Path(p), str(pid))

    def pids(self) -> set[int]:
        """Processes currently in any of the rig groups."""
        out: set[int] = set()
        for p in self.procs_files:
            try:
                out.update(int(x) for x in _read(Path(p)).split())
            except OSError:
                pass
        return out

    def kill_all(self, timeout: float = 10.0) -> None:
        """SIGKILL every process left in the groups and wait until they are gone (or raise RigError)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise RigError(f"processes {sorted(pids)} survive SIGKILL in {self.procs_files}")
            time.sleep(0.02)

    def destroy(self, timeout: float = 10.0) -> None:
        """Kill what is left inside, remove every group directory, undo v2 subtree_control changes we made."""
        errors = []
        try:
            self.kill_all(timeout)
        except RigError as e:
            errors.append(str(e))
        deadline = time.monotonic() + timeout
        for c, d in list(self.dirs.items()):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        errors.append(f"cannot remove cgroup {d}: {e.strerror}")
                        break
                    time.sleep(0.02)
            self.dirs.pop(c, None)
        leaf = self._self_leaf[1] if self._self_leaf else None
        for base, ctrl in self._enabled_v2:
            try:
                if not any(p.is_dir() and p != leaf for p in base.iterdir()):
                    _write(base / "cgroup.subtree_control", f"-{ctrl}")
            except (OSError, RigError) as e:
                if leaf is not None:
                    errors.append(f"cannot disable {ctrl} in {base}: {e}")
        self._enabled_v2.clear()
        if self._self_leaf is not None:  # step back into our own cgroup and remove the leaf
            base, leaf = self._self_leaf
            try:
                _write(base / "cgroup.procs", str(os.getpid()))
                leaf.rmdir()
            except (OSError, RigError) as e:
                errors.append(f"cannot leave {leaf}: {e}")
            self._self_leaf = None
        if errors:
            raise RigError("; ".join(errors))

    # -- limits ----------------------------------------------------------------------------------------------------
    def set_memory(self, limit: int) -> str:
        """Limit memory (anonymous + page cache) to ``limit`` bytes, no swap. Returns the mechanism label."""
        d, h = self.dirs["memory"], self.hier["memory"]
        if h.version == 1:
            _write(d / "memory.limit_in_bytes", str(limit))
            if (d / "memory.memsw.limit_in_bytes").exists():
                try:  # only writable with swap accounting; without swap it is moot
                    _write(d / "memory.memsw.limit_in_bytes", str(limit))
                except RigError:
                    pass
            return "cgroup v1 memory.limit_in_bytes (includes page cache)"
        _write(d / "memory.max", str(limit))
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", "0")
        return "cgroup v2 memory.max (includes page cache)"

    def set_read_throttle(self, devices: list[BlockDevice], bps: int | None, iops: int | None) -> str:
        """Throttle reads from each device to ``bps`` bytes/s and ``iops`` requests/s. Returns the mechanism."""
        d, h = self.dirs["blkio"], self.hier["blkio"]
        for dev in devices:
            if h.version == 1:
                if bps:
                    _write(d / "blkio.throttle.read_bps_device", f"{dev.majmin} {bps}")
                if iops:
                    _write(d / "blkio.throttle.read_iops_device", f"{dev.majmin} {iops}")
            else:
                parts = [dev.majmin] + ([f"rbps={bps}"] if bps else []) + ([f"riops={iops}"] if iops else [])
                _write(d / "io.max", " ".join(parts))
        names = ", ".join(str(x) for x in devices)
        if h.version == 1:
            files = "+".join(f for f, v in (("read_bps_device", bps), ("read_iops_device", iops)) if v)
            return f"cgroup v1 blkio.throttle.{files} on {names}"
        return f"cgroup v2 io.max on {names}"

    def set_cpus(self, cpus: list[int]) -> str:
        """Confine to the CPUs ``cpus``. Returns the mechanism label."""
        d, h = self.dirs["cpuset"], self.hier["cpuset"]
        _write(d / "cpuset.cpus", ",".join(str(c) for c in cpus))
        return f"cgroup v{h.version} cpuset.cpus={','.join(str(c) for c in cpus)}"

    # -- usage -----------------------------------------------------------------------------------------------------
    def stats(self) -> CgroupStats:
        """Peak memory, OOM kills and per-device bytes read, as far as the groups measure them."""
        st = CgroupStats()
        if "memory" in self.dirs:
            d, h = self.dirs["memory"], self.hier["memory"]
            if h.version == 1:
                st.peak_memory = int(_read(d / "memory.max_usage_in_bytes"))
                st.oom_kills = _kv(_read(d / "memory.oom_control"), "oom_kill")
                st.memory_source = "cgroup v1 memory.max_usage_in_bytes (includes page cache)"
            else:
                if (d / "memory.peak").exists():
                    st.peak_memory = int(_read(d / "memory.peak"))
                    st.memory_source = "cgroup v2 memory.peak (includes page cache)"
                st.oom_kills = _kv(_read(d / "memory.events"), "oom_kill")
        if "blkio" in self.dirs:
            d, h = self.dirs["blkio"], self.hier["blkio"]
            if h.version == 1:
                f = d / "blkio.throttle.io_service_bytes_recursive"
                f = f if f.exists() else d / "blkio.throttle.io_service_bytes"
                for line in _read(f).splitlines():
                    parts = line.split()
                    if len(parts) == 3 and parts[1] == "Read":
                        st.read_bytes[parts[0]] = st.read_bytes.get(parts[0], 0) + int(parts[2])
                st.read_source = f"cgroup v1 {f.name}"
            else:
                for line in _read(d / "io.stat").splitlines():
                    parts = line.split()
                    for kv in parts[1:]:
                        if kv.startswith("rbytes="):
                            st.read_bytes[parts[0]] = int(kv.split("=", 1)[1])
                st.read_source = "cgroup v2 io.stat rbytes"
        return st


def sweep_stale(base: Path) -> list[Path]:
    """Remove empty ``edgespool-rig-<pid>-*`` groups under ``base`` whose owner pid no longer exists (left behind
    when a rig was SIGKILLed). Returns the removed directories."""
    removed = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    for d in entries:
        if not d.name.startswith(PREFIX) or not d.is_dir():
            continue
        try:
            owner = int(d.name[len(PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid_alive(owner):
            continue
        try:
            if not _read(d / "cgroup.procs").split():
                d.rmdir()
                removed.append(d)
        except OSError:
            pass
    return removed


def rig_groups_present(owner: int | None = None) -> list[Path]:
    """Every ``edgespool-rig-*`` group under this process's own cgroups, or only those created by the rig process
    ``owner`` (tests use it to check cleanup)."""
    usable, _ = discover()
    prefix = PREFIX if owner is None else f"{PREFIX}{owner}-"
    out = []
    for h in {h.base for h in usable.values()}:
        try:
            out += [d for d in h.iterdir() if d.name.startswith(prefix)]
        except OSError:
            pass
    return sorted(out)
