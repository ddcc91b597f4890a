"""The board side of `edgespool deploy`: a stdlib-only program the client sends over ssh and runs with the board's
``python3`` (``python3 -c <bootstrap>`` reads this source from stdin, then frames follow on the same pipe).

It must not import edgespool (the board may have none, or an older one). It speaks length-prefixed frames: 4 bytes
big-endian length + a JSON object; a ``put`` request is followed by its raw payload. Every path it touches is
resolved under the device root and refused when it would leave it (``..``, absolute names, symlinks out).

Layout under the root::

    chunks/<sha256>            received chunks (fsynced, named by the hash of their bytes)
    chunks/tmp/<sha256>.part   a chunk being received (dropped on the next session)
    releases/<rid>/            one verified bundle per release (rid = hash of the release's chunk plan)
    releases/<rid>.json        that release's chunk plan (written after verification: its presence = complete)
    releases/.staging-<rid>/   a release being assembled (never pointed at by ``current``)
    current -> releases/<rid>  symlink, swapped by an atomic rename
    history.json               the releases in deploy order (rollback walks it back)
    env/<version>/, env/current  edgespool unpacked from a shipped wheel (PYTHONPATH for the remote commands)
"""
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib

PROTOCOL = 1
HEX64 = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
BLOCK = 1 << 20
FLUSH_BYTES = 4 << 20  # received bytes made durable together (see Agent.flush)


class AgentError(Exception):
    """An error reported back to the client as one line."""


# -- framing ---------------------------------------------------------------------------------------------------
def read_exact(f, n):
    buf = bytearray()
    while len(buf) < n:
        b = f.read(n - len(buf))
        if not b:
            raise EOFError("client went away")
        buf += b
    return bytes(buf)


def recv(f):
    (n,) = struct.unpack(">I", read_exact(f, 4))
    return json.loads(read_exact(f, n).decode("utf-8"))


def send(f, obj):
    data = json.dumps(obj).encode("utf-8")
    f.write(struct.pack(">I", len(data)) + data)
    f.flush()


# -- paths -----------------------------------------------------------------------------------------------------
def confined(root, rel):
    """``root/rel`` after checking that ``rel`` is relative, has no ``..`` and resolves (symlinks followed) inside
    ``root``."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        raise AgentError("path %r refused: not a relative path under the device root" % (rel,))
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise AgentError("path %r refused: '..', '.' or empty components would leave the device root" % (rel,))
    full = os.path.join(root, *parts)
    real_root = os.path.realpath(root)
    real = os.path.realpath(full)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise AgentError("path %r refused: it resolves outside the device root (%s)" % (rel, real))
    return full


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(BLOCK), b""):
            h.update(b)
    return h.hexdigest()


def check_rid(rid):
    if not isinstance(rid, str) or not HEX64.match(rid):
        raise AgentError("release id %r refused (expected 64 hex digits)" % (rid,))
    return rid


# -- facts -----------------------------------------------------------------------------------------------------
def _read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _cgroup_memory_limit():
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if ctrls == "":
            v = _read("/sys/fs/cgroup" + path + "/memory.max")
            if v and v != "max":
                return int(v)
        elif "memory" in ctrls.split(","):
            v = _read("/sys/fs/cgroup/memory" + path + "/memory.limit_in_bytes")
            if v and int(v) < (1 << 60):
                return int(v)
    return None


def _meminfo():
    out = {}
    for line in (_read("/proc/meminfo", "") or "").splitlines():
        k, _, v = line.partition(":")
        parts = v.split()
        if parts and parts[0].isdigit():
            out[k] = int(parts[0]) * 1024
    return out


def _cpu():
    flags, model = [], None
    for line in (_read("/proc/cpuinfo", "") or "").splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k in ("flags", "Features") and not flags:
            flags = v.split()
        elif k in ("model name", "Model") and model is None:
            model = v.strip()
        elif k == "CPU part" and model is None:
            model = "ARM part " + v.strip()
    return flags, model


# aarch64 HWCAP / HWCAP2 bits (linux/arch/arm64/include/uapi/asm/hwcap.h) -> /proc/cpuinfo feature names
_HWCAP = {0: "fp", 1: "asimd", 3: "aes", 4: "pmull", 5: "sha1", 6: "sha2", 7: "crc32", 8: "atomics", 9: "fphp",
          10: "asimdhp", 12: "asimdrdm", 16: "dcpop", 17: "sha3", 20: "asimddp", 21: "sha512", 22: "sve"}
_HWCAP2 = {1: "sve2", 13: "i8mm", 14: "bf16"}


def hwcap_features():
    """The CPU features the kernel gives this process (getauxval AT_HWCAP/AT_HWCAP2), on aarch64: what glibc and
    compiled code see. Unlike /proc/cpuinfo it is also right under qemu-user (the emulated CPU's, not the host's)."""
    if platform.machine() not in ("aarch64", "arm64"):
        return None
    try:
        import ctypes

        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        h1, h2 = getauxval(16), getauxval(26)
    except (OSError, AttributeError):
        return None
    return ([n for b, n in sorted(_HWCAP.items()) if h1 >> b & 1] +
            [n for b, n in sorted(_HWCAP2.items()) if h2 >> b & 1])


def _fs_type(path):
    best, fstype = "", None
    real = os.path.realpath(path)
    for line in (_read("/proc/mounts", "") or "").splitlines():
        f = line.split()
        if len(f) >= 3 and (real == f[1] or real.startswith(f[1].rstrip("/") + "/")) and len(f[1]) >= len(best):
            best, fstype = f[1], f[2]
    return fstype


def cold_read(root, size):
    """Write ``size`` bytes under the root, fsync, drop them from the page cache, time one sequential read back."""
    path = os.path.join(root, ".readtest")
    block = os.urandom(BLOCK)
    with open(path, "wb") as f:
        for _ in range(max(1, size // BLOCK)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            t0 = time.perf_counter()
            n, half, t_half = 0, None, None
            while True:
                b = os.read(fd, BLOCK)
                if not b:
                    break
                n += len(b)
                if t_half is None and n >= size // 2:
                    half, t_half = n, time.perf_counter()
            t1 = time.perf_counter()
            dt = t1 - t0
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    finally:
        os.unlink(path)
    # A kernel read throttle lets an initial burst through, so a short read overshoots the set rate; the second
    # half of the read is past that burst and is what a long streamed read will see.
    sustained = (n - half) / (t1 - t_half) if half is not None and n > half and t1 > t_half else None
    return {"bytes": n, "seconds": dt, "bandwidth": n / dt if dt > 0 else None, "sustained_bandwidth": sustained,
            "fs_type": _fs_type(root)}


def thermal():
    """Governor, temperatures and the Pi's throttled flags, where readable (None where not)."""
    temps = {}
    base = "/sys/class/thermal"
    if os.path.isdir(base):
        for z in sorted(os.listdir(base)):
            t = _read(os.path.join(base, z, "temp"))
            if t and t.lstrip("-").isdigit():
                temps[_read(os.path.join(base, z, "type"), z)] = int(t) / 1000.0
    throttled = None
    if shutil.which("vcgencmd"):
        try:
            out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5).stdout
            throttled = out.strip().partition("=")[2] or None
        except (OSError, subprocess.SubprocessError):
            throttled = None
    return {"governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "cur_freq_khz": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
            "temperatures_c": temps or None, "throttled": throttled}


def env_dir(root):
    cur = os.path.join(root, "env", "current")
    return cur if os.path.isdir(cur) else None


def remote_env(root):
    env = dict(os.environ)
    d = env_dir(root)
    if d:
        env["PYTHONPATH"] = os.path.realpath(d) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def edgespool_there(root):
    code = ("import json, importlib.metadata as m, edgespool\n"
            "try:\n    v = m.version('edgespool')\nexcept m.PackageNotFoundError:\n"
            "    v = getattr(edgespool, '__version__', None)  # a copy of the sources, no metadata\n"
            "print(json.dumps({'version': v, 'file': edgespool.__file__}))")
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=remote_env(root))
    except (OSError, subprocess.SubprocessError) as e:
        return {"version": None, "error": str(e)}
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"version": None, "error": last}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    d = env_dir(root)
    out["wheel_sha256"] = _read(os.path.join(d, ".wheel-sha256")) if d else None
    return out


def facts(root, read_test_bytes):
    flags, model = _cpu()
    hw = hwcap_features()
    if hw is not None:
        flags = hw
    mem = _meminfo()
    du = shutil.disk_usage(root)
    cg = _cgroup_memory_limit()
    ram = mem.get("MemTotal")
    out = {
        "arch": platform.machine(), "cpu_model": model, "cpu_features": flags,
        "cpu_features_source": "hwcap" if hw is not None else "/proc/cpuinfo",
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "glibc": (platform.libc_ver()[1] or None), "kernel": platform.release(),
        "python": platform.python_version(), "python_executable": sys.executable,
        "ram_total": ram, "ram_available": mem.get("MemAvailable"), "cgroup_memory_limit": cg,
        "memory_usable": min(x for x in (ram, cg) if x) if (ram or cg) else None,
        "disk_free": du.free, "disk_total": du.total, "edgespool": edgespool_there(root),
        "thermal": thermal(),
    }
    if read_test_bytes:
        out["storage"] = cold_read(root, int(read_test_bytes))
    return out


# -- chunks and releases ---------------------------------------------------------------------------------------
class Agent:
    def __init__(self, root, inp, out):
        self.root = root
        self.inp, self.out = inp, out
        self.pending, self.pending_bytes = [], 0  # received chunks not yet fsynced and renamed
        for d in ("chunks", "chunks/tmp", "releases", "env"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        # chunks received by a session that died before flushing: kept when their bytes hash to their name (the
        # process was killed, the page cache kept them), dropped otherwise (the one cut mid-payload, or a power cut)
        tmp = os.path.join(root, "chunks", "tmp")
        for name in os.listdir(tmp):
            path = os.path.join(tmp, name)
            sha = name[:-5] if name.endswith(".part") else ""
            if HEX64.match(sha) and file_sha256(path) == sha:
                self.pending.append((path, sha))
            else:
                os.unlink(path)
        self.flush()

    def p(self, rel):
        return confined(self.root, rel)

    def releases(self):
        """Complete releases: rid -> plan (a release is complete once its plan file exists)."""
        out = {}
        rdir = self.p("releases")
        for name in os.listdir(rdir):
            if name.endswith(".json") and HEX64.match(name[:-5]) and os.path.isdir(os.path.join(rdir, name[:-5])):
                try:
                    with open(os.path.join(rdir, name)) as f:
                        out[name[:-5]] = json.load(f)
                except (OSError, ValueError):
                    continue
        return out

    def current(self):
        link = os.path.join(self.root, "current")
        if not os.path.islink(link):
            return None
        target = os.readlink(link)
        rid = os.path.basename(target)
        return rid if HEX64.match(rid) else None

    def history(self):
        try:
            with open(os.path.join(self.root, "history.json")) as f:
                return [r for r in json.load(f) if isinstance(r, str) and HEX64.match(r)]
        except (OSError, ValueError):
            return []

    def have_map(self):
        """sha256 -> where the board has those bytes: ('chunk', path) or ('release', path, offset)."""
        have = {}
        for rid, plan in self.releases().items():
            for fe in plan["files"]:
                off = 0
                for sha, size in fe["chunks"]:
                    have.setdefault(sha, ("release", os.path.join(self.root, "releases", rid, *fe["path"].split("/")),
                                          off, size))
                    off += size
        cdir = self.p("chunks")
        for name in os.listdir(cdir):
            if HEX64.match(name):
                have[name] = ("chunk", os.path.join(cdir, name), 0, os.path.getsize(os.path.join(cdir, name)))
        return have

    # ops ----------------------------------------------------------------------------------------------------
    def op_facts(self, req):
        return {"facts": facts(self.root, req.get("read_test_bytes", 0)), "current": self.current()}

    def op_inventory(self, req):
        have = self.have_map()
        return {"have": sorted(have), "releases": sorted(self.releases()), "current": self.current(),
                "history": self.history()}

    def op_put(self, req):
        sha, size = req["sha"], int(req["size"])
        if not HEX64.match(sha):
            read_exact(self.inp, size)
            raise AgentError("chunk name %r refused" % (sha,))
        part = self.p("chunks/tmp/%s.part" % sha)
        h = hashlib.sha256()
        err = None
        f = None
        try:
            f = open(part, "wb")
        except OSError as e:
            err = e
        zlib_coded = req.get("encoding") == "zlib"  # the payload is zlib data; the sha256 names the raw bytes
        z = zlib.decompressobj() if zlib_coded else None
        left = size
        while left:
            b = read_exact(self.inp, min(left, BLOCK))
            left -= len(b)
            if z is not None:
                try:
                    b = z.decompress(b)
                except zlib.error:
                    b, z = b"", None
            h.update(b)
            if err is None:
                try:
                    f.write(b)
                except OSError as e:
                    err = e
        if z is not None:
            tail = z.flush()
            h.update(tail)
            if err is None and tail:
                try:
                    f.write(tail)
                except OSError as e:
                    err = e
        if f is not None:
            try:
                f.close()
            except OSError as e:
                err = err or e
        if err is not None:
            try:
                os.unlink(part)
            except OSError:
                pass
            raise AgentError("writing chunk %s on the board failed: %s (free %d bytes under %s)"
                             % (sha[:12], os.strerror(err.errno) if err.errno else err,
                                shutil.disk_usage(self.root).free, self.root))
        if h.hexdigest() != sha:
            os.unlink(part)
            raise AgentError("chunk %s arrived corrupt (sha256 %s)" % (sha[:12], h.hexdigest()[:12]))
        self.pending.append((part, sha))
        self.pending_bytes += size
        if self.pending_bytes >= FLUSH_BYTES:
            self.flush()
        return {"stored": sha}

    def flush(self):
        """Make the received chunks durable: fsync each, then rename it to its hash and fsync the directory (a
        chunk has its final name only once its bytes are on the disk). Runs every FLUSH_BYTES, before staging and
        when the client goes away, so a cut connection loses no received chunk and a power cut at most FLUSH_BYTES."""
        for part, sha in self.pending:
            fd = os.open(part, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(part, self.p("chunks/" + sha))
        if self.pending:
            fsync_dir(self.p("chunks"))
        self.pending, self.pending_bytes = [], 0

    def _copy_chunk(self, src, dst_f, sha):
        kind, path, off, size = src
        h = hashlib.sha256()
        with open(path, "rb") as f:
            f.seek(off)
            left = size
            while left:
                b = f.read(min(left, BLOCK))
                if not b:
                    raise AgentError("chunk %s: %s is shorter than its plan says" % (sha[:12], path))
                h.update(b)
                dst_f.write(b)
                left -= len(b)
        if h.hexdigest() != sha:
            raise AgentError("chunk %s on the board is corrupt (%s); redeploy resends it" % (sha[:12], path))

    def op_stage(self, req):
        rid = check_rid(req["rid"])
        final = self.p("releases/" + rid)
        if rid in self.releases():
            return {"rid": rid, "staged": False}
        self.flush()
        staging = self.p("releases/.staging-" + rid)
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        have = self.have_map()
        missing = [c[0] for fe in req["files"] for c in fe["chunks"] if c[0] not in have]
        if missing:
            raise AgentError("%d chunks are missing on the board (first %s); rerun the deploy" %
                             (len(missing), missing[0][:12]))
        try:
            for fe in req["files"]:
                dst = confined(staging, fe["path"])
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                with open(dst, "wb") as f:
                    for sha, size in fe["chunks"]:
                        self._copy_chunk(have[sha], f, sha)
                    f.flush()
                    os.fsync(f.fileno())
                if os.path.getsize(dst) != int(fe["size"]):
                    raise AgentError("%s: staged %d bytes, plan says %d" % (fe["path"], os.path.getsize(dst), fe["size"]))
            crc = verify_bundle(staging)
            for dirpath, _, _ in os.walk(staging):
                fsync_dir(dirpath)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise AgentError("staging release %s failed: %s (free %d bytes under %s)"
                             % (rid[:12], os.strerror(e.errno) if e.errno else e, shutil.disk_usage(self.root).free,
                                self.root))
        except AgentError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.replace(staging, final)
        write_atomic(final + ".json", json.dumps({"files": req["files"], "meta": req.get("meta", {})}).encode())
        # received chunks now live inside the release: free their space
        for sha, (kind, path, _, _) in have.items():
            if kind == "chunk":
                os.unlink(path)
        fsync_dir(self.p("chunks"))
        return {"rid": rid, "staged": True, "crc_checked_tensors": crc}

    def _switch(self, rid):
        tmp = os.path.join(self.root, ".current.tmp")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink("releases/" + rid, tmp)
        os.replace(tmp, os.path.join(self.root, "current"))
        fsync_dir(self.root)

    def op_switch(self, req):
        rid = check_rid(req["rid"])
        if rid not in self.releases():
            raise AgentError("release %s is not complete on the board" % rid[:12])
        verify_bundle(self.p("releases/" + rid)) if req.get("verify", True) else None
        self._switch(rid)
        hist = [r for r in self.history() if r != rid] + [rid]
        write_atomic(os.path.join(self.root, "history.json"), json.dumps(hist).encode())
        removed = self.gc(int(req.get("keep", 3)), hist)
        return {"current": rid, "history": hist, "removed": removed}

    def gc(self, keep, hist):
        """Keep the current release and the ``keep`` before it in the history; remove the other releases."""
        cur = self.current()
        kept = set(hist[-(keep + 1):]) | {cur}
        removed = []
        for rid in self.releases():
            if rid not in kept:
                os.unlink(self.p("releases/%s.json" % rid))
                shutil.rmtree(self.p("releases/" + rid))
                removed.append(rid)
        return removed

    def op_rollback(self, req):
        hist = [r for r in self.history() if r in self.releases()]
        cur = self.current()
        if cur in hist:
            hist = hist[: hist.index(cur)]
        if not hist:
            raise AgentError("no earlier release to roll back to under %s" % self.root)
        prev = hist[-1]
        verify_bundle(self.p("releases/" + prev))
        self._switch(prev)
        write_atomic(os.path.join(self.root, "history.json"), json.dumps(hist).encode())
        return {"current": prev, "previous": cur, "history": hist}

    def op_verify(self, req):
        rel = req.get("path", "current")
        return {"crc_checked_tensors": verify_bundle(self.p(rel))}

    def op_install(self, req):
        """Unpack a shipped edgespool wheel (already stored as a chunk) into env/<version>, switch env/current."""
        sha, version = req["sha"], req["version"]
        if not HEX64.match(sha) or not NAME.match(version):
            raise AgentError("install request refused")
        self.flush()
        have = self.have_map()
        if sha not in have:
            raise AgentError("the wheel chunk %s is not on the board" % sha[:12])
        dest = self.p("env/" + version)
        tmp = dest + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        with zipfile.ZipFile(have[sha][1]) as z:
            for info in z.infolist():
                target = confined(tmp, info.filename.rstrip("/")) if info.filename.rstrip("/") else tmp
                if info.is_dir():
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        write_atomic(os.path.join(tmp, ".wheel-sha256"), sha.encode())
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        link_tmp = self.p("env") + "/.current.tmp"
        if os.path.lexists(link_tmp):
            os.unlink(link_tmp)
        os.symlink(version, link_tmp)
        os.replace(link_tmp, self.p("env/current"))
        fsync_dir(self.p("env"))
        if have[sha][0] == "chunk":
            os.unlink(have[sha][1])
        return {"edgespool": edgespool_there(self.root)}

    def op_exec(self, req):
        """Run ``python -m edgespool ARGS`` on the board (bundle paths are relative to the root), streaming its
        stdout/stderr back as frames; ends with the exit code."""
        args = [str(a) for a in req["args"]]
        for i in req.get("path_args", []):
            args[i] = confined(self.root, args[i])
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-u", "-m", "edgespool"] + args, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT if req.get("merge") else subprocess.PIPE,
                             env=remote_env(self.root), cwd=self.root)
        import threading

        lock = threading.Lock()

        def pump(stream, name):
            while True:
                b = os.read(stream.fileno(), 65536)
                if not b:
                    break
                with lock:
                    send(self.out, {"stream": name, "data": b.decode("utf-8", "replace")})

        threads = [threading.Thread(target=pump, args=(p.stdout, "stdout"))]
        if p.stderr is not None:
            threads.append(threading.Thread(target=pump, args=(p.stderr, "stderr")))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rc = p.wait()
        return {"exit": rc, "seconds": time.perf_counter() - t0}

    def op_bye(self, req):
        self.flush()
        return {}

    def op_thermal(self, req):
        return {"thermal": thermal()}

    def serve(self):
        while True:
            try:
                req = recv(self.inp)
            except EOFError:
                self.flush()
                return
            op = req.get("op")
            fn = getattr(self, "op_" + str(op), None)
            try:
                if fn is None:
                    raise AgentError("unknown request %r" % (op,))
                res = fn(req)
                res["ok"] = True
            except EOFError:  # the connection went away in the middle of a request (a chunk's payload)
                self.flush()
                return
            except AgentError as e:
                res = {"ok": False, "error": str(e)}
            except OSError as e:
                res = {"ok": False, "error": "%s: %s" % (getattr(e, "filename", "") or op, e.strerror or e)}
            send(self.out, res)
            if op == "bye":
                return


def verify_bundle(path):
    """Check every tensor's CRC32 recorded in the bundle's manifest (the same check edgespool's reader does)."""
    with open(os.path.join(path, "manifest.json"), "rb") as f:
        m = json.loads(f.read().decode("utf-8"))
    if m.get("magic") != "edgespool-bundle":
        raise AgentError("%s: not an edgespool bundle manifest" % path)
    wpath = confined(path, m["weights"]["file"])
    n = 0
    with open(wpath, "rb") as f:
        for name, rec in m["tensors"].items():
            crc = 0
            for part in rec["parts"].values():
                f.seek(int(rec["offset"]) + int(part["offset"]))
                left = int(part["nbytes"])
                while left:
                    b = f.read(min(left, BLOCK))
                    if not b:
                        raise AgentError("%s: truncated at tensor %r" % (wpath, name))
                    crc = zlib.crc32(b, crc)
                    left -= len(b)
            if crc != int(rec["crc32"]):
                raise AgentError("%s: checksum mismatch in tensor %r" % (wpath, name))
            n += 1
    return n


def main():
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing may write into the frame stream by accident
    hello = recv(inp)
    root = os.path.expanduser(hello["root"])
    if os.path.realpath(root) in ("/", os.path.realpath(os.path.expanduser("~"))):
        send(out, {"ok": False, "error": "device root %r refused: use a folder of its own (e.g. ~/edgespool), not / "
                                         "or the home directory" % hello["root"]})
        return
    if hello.get("protocol") != PROTOCOL:
        send(out, {"ok": False, "error": "protocol %r not spoken by this agent" % hello.get("protocol")})
        return
    try:
        os.makedirs(root, exist_ok=True)
        lock = open(os.path.join(root, ".lock"), "a")
        # one session at a time per device root; a session cut a moment ago may still be flushing
        deadline = time.time() + 30
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    send(out, {"ok": False, "error": "device root %s is busy: another edgespool session holds its "
                                                     "lock" % root})
                    return
                time.sleep(0.1)
        agent = Agent(root, inp, out)
    except OSError as e:
        send(out, {"ok": False, "error": "device root %s: %s" % (root, e.strerror or e)})
        return
    send(out, {"ok": True, "root": os.path.realpath(root), "protocol": PROTOCOL})
    agent.serve()


if __name__ == "__main__":
    main()
