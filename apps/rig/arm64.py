"""The arm64 rig: a Debian arm64 root with Python and the aarch64 wheels of edgespool's runtime dependencies, run
under qemu-user through a PRIVATE binfmt_misc (never the host's).

Setup (``edgespool rig arm64 setup``), cached in ``~/.cache/edgespool/arm64`` with a stamp:
 1. ``debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 bookworm`` (downloads and verifies
    the .debs, unpacks the essential ones);
 2. unpack every downloaded .deb with ``dpkg-deb`` on the host. Maintainer scripts are NOT run (the debootstrap
    second stage would take ~6 min under qemu); a Python root needs none of them (/etc/passwd is copied from
    base-passwd's master file);
 3. ``pip install --target ROOT/opt/py --platform manylinux_*_aarch64 --only-binary=:all:`` of the runtime
    dependencies, pinned to the versions installed on the host (so host and rig compute with the same libraries);
 4. copy edgespool's Python files to ``ROOT/opt/edgespool`` (re-synced before every run);
 5. import every dependency inside the rig, then write the stamp. A second setup is a stamp check.

Running (``edgespool rig run --arch arm64 -- CMD``): ``python -m edgespool.apps.rig.arm64 --root R --cpu C -- CMD``
is the launcher. It starts ``unshare --user --mount --pid --fork``, writes uid/gid maps "0 0 65536" from outside,
and inside: mounts a new binfmt_misc instance (Linux >= 6.7 gives each user namespace its own), registers aarch64
ELF -> /usr/bin/qemu-aarch64-static (flags F: opened now, so the root needs no qemu; P: keep argv[0]), mounts a
fresh /proc (no /sys: onnxruntime's cpuinfo segfaults under qemu with both), binds /dev, the working directory
and path arguments at the same paths, and chroots. ``QEMU_CPU`` picks the emulated core (cortex-a72 = Pi 4,
cortex-a76 = Pi 5). Qemu checks correctness, not speed.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import RigError

RECIPE = 1  # bump when the setup steps change: invalidates every cached root
SUITE = "bookworm"
PY_VERSION = "3.11"  # bookworm's python3
MIRROR = "http://deb.debian.org/debian"
QEMU = "/usr/bin/qemu-aarch64-static"
# aarch64 ELF executables (e_machine 0xb7), the standard qemu-user binfmt magic/mask.
_MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
QEMU_CPUS = ("cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "neoverse-n1", "max")
# Profile CPUs qemu 7.2 lacks -> the closest core it has (same ISA level and extensions).
_QEMU_SUBSTITUTE = {"cortex-a78": "cortex-a76", "cortex-a78ae": "cortex-a76"}
_IMPORT_NAME = {"pillow": "PIL", "pyyaml": "yaml", "protobuf": "google.protobuf", "apache-tvm": "tvm", "apache-tvm-ffi": "tvm_ffi"}
_SYNC_SKIP_DIRS = {".git", "tests", "docs", "__pycache__", ".ci", "build", "dist", ".pytest_cache"}
_SYNC_EXT = {".py", ".txt", ".json", ".typed"}


def cache_dir() -> Path:
    """``$EDGESPOOL_CACHE_DIR/arm64``, else ``$XDG_CACHE_HOME/edgespool/arm64``, else ``~/.cache/edgespool/arm64``."""
    if os.environ.get("EDGESPOOL_CACHE_DIR"):
        return Path(os.environ["EDGESPOOL_CACHE_DIR"]) / "arm64"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgespool" / "arm64"


def pin(req: str) -> str:
    """``numpy>=1.26`` -> ``numpy==<version installed on this host>`` (unchanged when not installed here)."""
    name = re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0]
    try:
        return f"{name}=={md.version(name)}"
    except md.PackageNotFoundError:
        return req.strip()


def runtime_requirements() -> list[str]:
    """edgespool's runtime dependencies (no extras) pinned to the versions installed on this host."""
    return [pin(req) for req in md.requires("edgespool") or [] if ";" not in req]  # ";": extras/test-only


def _import_name(req: str) -> str:
    name = re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower()
    return _IMPORT_NAME.get(name, name.replace("-", "_"))


def installed_extras() -> list[str]:
    """Extra packages (``rig arm64 setup --extra``) installed in the cached root."""
    try:
        return json.loads((cache_dir() / "extras.json").read_text())
    except (OSError, ValueError):
        return []


def _pip_target(root: Path, reqs: list[str]) -> None:
    plats = [f"--platform=manylinux_2_{v}_aarch64" for v in range(17, 37)] + ["--platform=manylinux2014_aarch64"]
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-conflicts",
          "--upgrade", "--target", str(root / "opt" / "py"), *plats, f"--python-version={PY_VERSION}",
          "--implementation=cp", "--only-binary=:all:", *reqs], "pip install of aarch64 wheels")


def _check_imports(root: Path, reqs: list[str]) -> None:
    mods = [_import_name(r) for r in reqs]
    code = "import importlib,platform;[importlib.import_module(m) for m in %r];print(platform.machine())" % mods
    out = run_captured(root, ["python3", "-c", code], cpu="cortex-a72", timeout=900)
    if out.returncode != 0 or out.stdout.strip().splitlines()[-1:] != ["aarch64"]:
        raise RigError(f"the arm64 root cannot import {' '.join(mods)}: {(out.stderr or out.stdout).strip()[-400:]}")


def stamp_data(requirements: list[str] | None = None) -> dict:
    """What a cached root was built from; a different stamp means rebuild."""
    return {"recipe": RECIPE, "suite": SUITE, "python": PY_VERSION,
            "requirements": requirements if requirements is not None else runtime_requirements()}


def qemu_cpu(cpu: str) -> tuple[str, str]:
    """(qemu ``-cpu`` name, note) for a profile/LLVM CPU name; unknown names raise RigError."""
    if cpu in QEMU_CPUS:
        return cpu, ""
    if cpu in _QEMU_SUBSTITUTE:
        sub = _QEMU_SUBSTITUTE[cpu]
        return sub, f"qemu has no {cpu}; emulating {sub} (same Armv8.2 ISA, dotprod)"
    raise RigError(f"--cpu {cpu!r}: qemu emulates {', '.join(QEMU_CPUS)}")


@dataclass(frozen=True)
class SetupResult:
    """Outcome of ``rig arm64 setup``."""

    root: Path
    seconds: float
    cached: bool  # True: the stamp matched, nothing was rebuilt
    steps: dict  # step name -> seconds
    size_bytes: int


def root_dir() -> Path:
    """The arm64 root of the cache."""
    return cache_dir() / "root"


def is_ready(root: Path | None = None) -> bool:
    """True when a complete root with the current stamp exists."""
    root = root or root_dir()
    stamp = root.parent / "stamp.json"
    try:
        return root.is_dir() and json.loads(stamp.read_text()) == stamp_data()
    except (OSError, ValueError):
        return False


def _need_tools() -> None:
    missing = [t for t in ("debootstrap", "dpkg-deb", "tar", "unshare", "chroot") if shutil.which(t) is None]
    if not os.path.exists(QEMU):
        missing.append(QEMU)
    if missing:
        raise RigError(f"arm64 rig needs {', '.join(missing)}: apt-get install -y qemu-user-static debootstrap")
    if os.geteuid() != 0:
        raise RigError("arm64 rig setup needs root (uid maps of 65536 ids for the namespace; debootstrap)")


def _run(argv: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        raise RigError(f"{what} failed (exit {p.returncode}): {' | '.join(tail)}")
    return p


def package_dir() -> Path:
    """The edgespool package directory on the host (the repo root in a development install)."""
    import edgespool

    return Path(edgespool.__file__).resolve().parent


def sync_package(root: Path) -> int:
    """Mirror edgespool's Python files (and package data) into ``ROOT/opt/edgespool/edgespool``: copy new or
    changed files, delete stale ones. Returns the number of files copied."""
    src = package_dir()
    dst = root / "opt" / "edgespool" / "edgespool"
    want: set[Path] = set()
    copied = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if d not in _SYNC_SKIP_DIRS and not d.endswith(".egg-info")
                       and not d.startswith(".")]
        for fn in filenames:
            if Path(fn).suffix not in _SYNC_EXT:
                continue
            rel = Path(dirpath, fn).relative_to(src)
            want.add(rel)
            s, d = src / rel, dst / rel
            ss = s.stat()
            try:
                ds = d.stat()
                if ds.st_size == ss.st_size and int(ds.st_mtime) == int(ss.st_mtime):
                    continue
            except FileNotFoundError:
                pass
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)
            copied += 1
    if dst.exists():
        for dirpath, _, filenames in os.walk(dst):
            for fn in filenames:
                rel = Path(dirpath, fn).relative_to(dst)
                if rel not in want and "__pycache__" not in rel.parts:
                    (dst / rel).unlink()
    return copied


def setup(force: bool = False, mirror: str = MIRROR, log=lambda msg: None, extras: tuple[str, ...] = ()) -> SetupResult:
    """Build (or find cached) the arm64 root, plus ``extras`` (e.g. ``apache-tvm`` for compiled kernels; pinned to
    the host's version) added into a cached root without rebuilding it. ``log`` receives one line per step."""
    t0 = time.monotonic()
    root = root_dir()
    extras = tuple(pin(e) for e in extras)
    if not force and is_ready(root):
        sync_package(root)
        missing = [e for e in extras if e not in installed_extras()]
        if not missing:
            return SetupResult(root, time.monotonic() - t0, True, {}, 0)
        log(f"pip: aarch64 wheels of {' '.join(missing)}")
        _pip_target(root, runtime_requirements() + list(extras))  # all together: extras must not move the pins
        _check_imports(root, missing)
        (cache_dir() / "extras.json").write_text(json.dumps(sorted({*installed_extras(), *missing})))
        return SetupResult(root, time.monotonic() - t0, False, {"extras": round(time.monotonic() - t0, 1)}, 0)
    _need_tools()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"root.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    steps: dict[str, float] = {}
    try:
        t = time.monotonic()
        log(f"debootstrap (first stage) {SUITE} arm64 -> {tmp}")
        _run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", "--include=python3", SUITE, str(tmp),
              mirror], "debootstrap")
        steps["debootstrap"] = time.monotonic() - t

        t = time.monotonic()
        debs = sorted((tmp / "var/cache/apt/archives").glob("*.deb"))
        log(f"unpacking {len(debs)} packages")
        for deb in debs:
            p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
            p2 = subprocess.run(["tar", "-C", str(tmp), "--keep-directory-symlink", "-xf", "-"], stdin=p1.stdout,
                                capture_output=True, text=True)
            p1.stdout.close()
            if p1.wait() != 0 or p2.returncode != 0:
                raise RigError(f"unpacking {deb.name} failed: {p2.stderr.strip()[-300:]}")
            deb.unlink()
        _fix_root(tmp)
        steps["unpack"] = time.monotonic() - t

        t = time.monotonic()
        reqs = runtime_requirements()
        log(f"pip: aarch64 wheels of {' '.join(reqs + list(extras))}")
        _pip_target(tmp, reqs + list(extras))
        steps["wheels"] = time.monotonic() - t

        t = time.monotonic()
        sync_package(tmp)
        launcher = tmp / "usr/local/bin/edgespool"
        launcher.parent.mkdir(parents=True, exist_ok=True)
        launcher.write_text("#!/usr/bin/python3\nfrom edgespool.apps.cli import main\nmain()\n")
        launcher.chmod(0o755)
        log("checking imports inside the rig")
        _check_imports(tmp, reqs + list(extras))
        steps["verify"] = time.monotonic() - t

        shutil.rmtree(root, ignore_errors=True)
        os.rename(tmp, root)
        (cache / "stamp.json").write_text(json.dumps(stamp_data(reqs), indent=1))
        (cache / "extras.json").write_text(json.dumps(sorted(extras)))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
    return SetupResult(root, time.monotonic() - t0, False, {k: round(v, 1) for k, v in steps.items()}, size)


def _fix_root(root: Path) -> None:
    """Make an unpacked (unconfigured) root usable: a real /proc mountpoint, passwd/group, a resolv.conf."""
    proc = root / "proc"
    if proc.is_symlink():  # debootstrap --foreign leaves proc -> /proc
        proc.unlink()
    proc.mkdir(exist_ok=True)
    for name in ("passwd", "group"):
        etc, master = root / "etc" / name, root / "usr/share/base-passwd" / f"{name}.master"
        if not etc.exists() and master.exists():
            shutil.copy(master, etc)
    (root / "tmp").chmod(0o1777)


# -- running inside ------------------------------------------------------------------------------------------------

def _script(root: Path, argv: list[str], cpu: str, binds: list[str], cwd: str, env: dict[str, str],
            sync_fd: int) -> str:
    q = shlex.quote
    r = str(root)
    # wait until the parent has written our uid/gid maps (it writes one line to the pipe on fd ``sync_fd``)
    lines = ["set -e", f"read _ <&{sync_fd}", f"exec {sync_fd}<&-",
             "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc",
             f"printf '%s' {q(f':edgespool-aarch64:M::{_MAGIC}:{_MASK}:{QEMU}:FP')} "
             "> /proc/sys/fs/binfmt_misc/register",
             f"mount -t proc proc {q(r + '/proc')}",
             f"mount --rbind /dev {q(r + '/dev')}"]
    for b in binds:
        target = r + b
        mk = f"mkdir -p {q(target)}" if os.path.isdir(b) else f"mkdir -p {q(os.path.dirname(target))}; touch {q(target)}"
        lines += [mk, f"mount --rbind {q(b)} {q(target)}"]
    full_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
                "PYTHONPATH": "/opt/edgespool:/opt/py", "QEMU_CPU": cpu, **env}
    assigns = " ".join(q(f"{k}={v}") for k, v in full_env.items())
    # not exec'd: the shell stays PID 1 of the namespace, so the command gets default signal handling
    lines += ["set +e", f"chroot {q(r)} /usr/bin/env -i -C {q(cwd)} {assigns} {' '.join(q(a) for a in argv)}",
              "exit $?"]
    return "\n".join(lines) + "\n"


def spawn(root: Path, argv: list[str], cpu: str = "cortex-a76", binds: list[str] | None = None,
          cwd: str | None = None, env: dict[str, str] | None = None, **popen_kw) -> subprocess.Popen:
    """Start ``argv`` inside the arm64 root in private user/mount/pid namespaces; returns the ``unshare`` process
    (its exit status is the command's, 128+N for signal N)."""
    cwd = os.path.abspath(cwd or os.getcwd())
    binds = list(dict.fromkeys(os.path.abspath(b) for b in [cwd, *(binds or [])] if os.path.exists(b)))
    binds = [b for b in binds if b != "/" and not b.startswith(str(root))]
    r, w = os.pipe()  # r keeps its number in the child (pass_fds): it may be > 9 (pytest holds fds), so the
    # script runs in bash: dash only redirects single-digit fds
    script = _script(root, argv, cpu, binds, cwd, env or {}, r)
    try:
        p = subprocess.Popen(["unshare", "--user", "--mount", "--pid", "--fork", "--kill-child", "bash", "-c", script],
                             pass_fds=(r,), **popen_kw)
    finally:
        os.close(r)
    try:
        me = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{p.pid}/ns/user") == me:
            if p.poll() is not None or time.monotonic() > deadline:
                raise RigError("unshare did not enter a new user namespace (kernel without user namespaces?)")
            time.sleep(0.002)
        for f in ("uid_map", "gid_map"):
            with open(f"/proc/{p.pid}/{f}", "w") as fh:
                fh.write("0 0 65536\n")
        os.write(w, b"go\n")
    except BaseException:
        p.kill()
        p.wait()
        raise
    finally:
        os.close(w)
    return p


def run_captured(root: Path, argv: list[str], cpu: str = "cortex-a76", timeout: float | None = None,
                 **kw) -> subprocess.CompletedProcess:
    """Run inside the arm64 root and capture stdout/stderr (text)."""
    p = spawn(root, argv, cpu=cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise RigError(f"{' '.join(argv)} in the arm64 rig timed out after {timeout} s") from None
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def launcher_argv(cpu: str, binds: list[str], env: dict[str, str]) -> list[str]:
    """The host command that runs what follows it inside the arm64 root (used by `rig run --arch arm64`)."""
    argv = [sys.executable, "-m", "edgespool.apps.rig.arm64", "--root", str(root_dir()), "--cpu", cpu]
    for b in binds:
        argv += ["--bind", b]
    for k, v in env.items():
        argv += ["--env", f"{k}={v}"]
    return argv + ["--"]


def _main(args: list[str] | None = None) -> int:
    """The launcher process: ignore job-control signals (the command receives them), propagate its exit status."""
    ap = argparse.ArgumentParser(prog="python -m edgespool.apps.rig.arm64")
    ap.add_argument("--root", required=True)
    ap.add_argument("--cpu", default="cortex-a76")
    ap.add_argument("--bind", action="append", default=[])
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("argv", nargs=argparse.REMAINDER)
    ns = ap.parse_args(args)
    argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    # EDGESPOOL_* settings (including the rig's emulated EDGESPOOL_IO_BANDWIDTH) pass through to the command
    env = {k: v for k, v in os.environ.items() if k.startswith("EDGESPOOL_")}
    env.update(kv.split("=", 1) for kv in ns.env)
    p = spawn(Path(ns.root), argv, cpu=ns.cpu, binds=ns.bind, env=env)
    code = p.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    try:
        sys.exit(_main())
    except RigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(125)
