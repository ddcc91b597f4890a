"""The Pi/Jetson rig: real cgroup limits (memory + OOM, blkio read throttle, cpuset), cleanup, fallbacks, the
read rate limiter, and the arm64 qemu smoke test.

Independent references: bandwidth and CPU use are measured by the child with its own clock/rusage, page-cache
residency is checked against util-linux ``fincore``, block devices against ``findmnt``/``lsblk``, OOM kills against
the exit status, and arm64 output against the same command on the host.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgespool.apps.rig.blockdev import device_for_path
from edgespool.apps.rig.cgroups import PREFIX, RigCgroups, discover, rig_groups_present
from edgespool.apps.rig.limits import resolve_limits
from edgespool.units import parse_bytes as parse_size, parse_rate
from edgespool.apps.rig.pagecache import cached_fraction, evict, is_cached
from edgespool.apps.rig.runner import run_in_rig
from edgespool.errors import OptionError, RigError, TargetError
from edgespool.runtime.bundle.ratelimit import RateLimiter, from_env
from edgespool.targets import get_target

PY = sys.executable
MB = 1_000_000
MiB = 1 << 20


def _rig_available() -> str | None:
    """None when this process can create rig cgroups with all three controllers, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    try:
        with RigCgroups() as cg:
            missing = [f"{c}: {cg.unavailable.get(c)}" for c in ("memory", "blkio", "cpuset") if c not in cg.dirs]
    except RigError as e:
        return f"cannot create rig cgroups: {e}"
    return "cgroups not usable: " + "; ".join(missing) if missing else None


_RIG_SKIP = _rig_available()


def _py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def _big_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        chunk = os.urandom(MiB)
        for _ in range(size // MiB):
            f.write(chunk)
    return path


_READ = """
import json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
t = time.monotonic(); n = 0
while True:
    b = os.read(fd, 1 << 20)
    if not b:
        break
    n += len(b)
print(json.dumps({"bytes": n, "seconds": time.monotonic() - t}))
"""


def _run_read(path: Path, capfd, **limits) -> tuple[dict, object]:
    rep = run_in_rig([PY, "-c", _READ, str(path)], resolve_limits(None, **limits), device_paths=[str(path)])
    out = capfd.readouterr().out.strip().splitlines()[-1]
    return json.loads(out), rep


# --- parsing and profiles (no privileges) -------------------------------------------------------------------------

def test_parse_units():
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("512MB") == 512 * MB
    assert parse_size("1.5 KiB") == 1536
    assert parse_size("4096") == 4096
    assert parse_rate("90MB/s") == 90 * MB
    assert parse_rate("1.3GB/s") == 1_300_000_000
    assert parse_rate("440M/s") == 440 * MB
    for bad in ("", "1X", "-1MB", "MB", "0"):
        with pytest.raises(OptionError, match="--memory"):
            parse_size(bad, "--memory")


def test_resolve_profile_limits():
    rpi5 = get_target("rpi5")
    lim = resolve_limits(rpi5, host_cores=8)
    assert (lim.memory, lim.read_bandwidth, lim.read_iops, lim.cores) == (8 << 30, 440 * MB, 50000, 4)
    assert lim.storage == "nvme" and lim.source("memory") == "profile rpi5"
    sd = resolve_limits(rpi5, storage="microsd", memory="1GiB", cores=1, host_cores=8)
    assert (sd.memory, sd.read_bandwidth, sd.cores) == (1 << 30, 90 * MB, 1)
    assert sd.source("memory") == "--memory" and "microsd" in sd.source("read_bandwidth")
    orin = resolve_limits(get_target("jetson-orin-nano"), storage="microsd", host_cores=2)
    assert orin.read_bandwidth == 67 * MB and orin.cores == 2 and "6 wanted" in orin.notes[0]
    with pytest.raises(TargetError, match="sata"):
        resolve_limits(rpi5, storage="sata")
    with pytest.raises(TargetError, match="MCU"):
        resolve_limits(get_target("mcu-m7"))
    with pytest.raises(OptionError, match="--storage"):
        resolve_limits(None, storage="nvme")


def test_qemu_cpu_names():
    from edgespool.apps.rig.arm64 import qemu_cpu

    assert qemu_cpu("cortex-a72") == ("cortex-a72", "")
    sub, note = qemu_cpu(get_target("jetson-orin-nano").cpu)
    assert sub == "cortex-a76" and "cortex-a78" in note
    with pytest.raises(RigError, match="cortex-m4"):
        qemu_cpu("cortex-m4")


def test_block_device_matches_lsblk(tmp_path):
    if not (shutil.which("findmnt") and shutil.which("lsblk")):
        pytest.skip("findmnt/lsblk not installed")
    dev = device_for_path(tmp_path)
    src = subprocess.run(["findmnt", "-nvo", "SOURCE", "--target", str(tmp_path)], capture_output=True,
                         text=True).stdout.strip()
    if not src.startswith("/dev/"):
        assert dev is None or src == ""
        pytest.skip(f"{tmp_path} is on {src or 'no device'}")
    pk = subprocess.run(["lsblk", "-ndo", "PKNAME", src], capture_output=True, text=True).stdout.strip()
    disk = f"/dev/{pk}" if pk else src
    majmin = subprocess.run(["lsblk", "-ndo", "MAJ:MIN", disk], capture_output=True, text=True).stdout.strip()
    assert dev is not None and dev.majmin == majmin.replace(" ", "")
    assert device_for_path("/proc") is None


def test_page_cache_residency_matches_fincore(tmp_path):
    if not shutil.which("fincore"):
        pytest.skip("util-linux fincore not installed")
    f = _big_file(tmp_path / "f.bin", 8 * MiB)

    def fincore_bytes() -> int:
        out = subprocess.run(["fincore", "-bno", "RES", str(f)], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[0])

    evict(f)
    assert cached_fraction(f) == 0.0 and fincore_bytes() == 0 and not is_cached(f)
    f.read_bytes()
    assert cached_fraction(f) == pytest.approx(fincore_bytes() / (8 * MiB)) and is_cached(f)
    assert cached_fraction(tmp_path) == pytest.approx(1.0)


def test_rate_limiter_threads():
    lim = RateLimiter(40 * MB)
    import threading

    t0 = time.monotonic()

    def worker():
        for _ in range(8):
            lim.acquire(MiB // 2)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    achieved = 16 * MiB / (time.monotonic() - t0)
    assert achieved == pytest.approx(40 * MB, rel=0.1)
    ops = RateLimiter(1e12, ops_per_s=200)
    t0 = time.monotonic()
    for _ in range(40):
        ops.acquire(1)
    assert 40 / 200 - ops.burst_s - 0.01 <= time.monotonic() - t0 <= 40 / 200 + 0.05
    assert from_env({}) is None
    assert from_env({"EDGESPOOL_IO_BANDWIDTH": "90MB/s"}).bytes_per_s == 90 * MB
    assert from_env({"EDGESPOOL_IO_BANDWIDTH": "5000000"}).bytes_per_s == 5 * MB
    with pytest.raises(OptionError, match="EDGESPOOL_IO_BANDWIDTH"):
        from_env({"EDGESPOOL_IO_BANDWIDTH": "fast"})


def test_emulated_fallback(capfd):
    """--emulate (what a non-root user gets): affinity, RLIMIT_AS, and the env var for edgespool's reader."""
    code = """
    import os
    print(len(os.sched_getaffinity(0)), os.environ.get("EDGESPOOL_IO_BANDWIDTH"))
    try:
        x = bytearray(512 << 20)
        print("allocated")
    except MemoryError:
        print("MemoryError")
    """
    rep = run_in_rig(_py(code), resolve_limits(None, memory="256MiB", read_bandwidth="50MB/s", cores=1),
                     emulate=True)
    out = capfd.readouterr().out.split()
    assert out == ["1", str(50 * MB), "MemoryError"]
    modes = {lim.name: lim.mode for lim in rep.limits}
    assert modes == {"memory": "emulated", "read_bandwidth": "emulated", "cores": "real"}
    assert rep.exit_code == 0 and rep.oom_kills is None and "rusage" in rep.peak_memory_source


# --- real limits (root + writable cgroups) ------------------------------------------------------------------------

@pytest.mark.rig
@pytest.mark.skipif(_RIG_SKIP is not None, reason=str(_RIG_SKIP))
@pytest.mark.parametrize("via_cli", [False, True])
def test_oom_kill_reported(via_cli, capfd):
    code = "x = bytearray(256 << 20)\nprint('survived')"
    if via_cli:
        p = subprocess.Popen([PY, "-m", "edgespool", "rig", "run", "--json", "--memory", "64MiB", "--", PY, "-c", code],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 137, err
        rep = json.loads(out)
        assert rep["oom_kills"] >= 1 and rep["signal"] == "SIGKILL" and not out.startswith("survived")
        assert rep["limits"][0]["mode"] == "real" and rep["peak_memory"] <= 64 * MiB
        assert not rig_groups_present(owner=p.pid)
    else:
        rep = run_in_rig([PY, "-c", code], resolve_limits(None, memory="64MiB"))
        assert (rep.exit_code, rep.signal) == (137, "SIGKILL") and rep.oom_kills >= 1
        assert "survived" not in capfd.readouterr().out
        ok = run_in_rig([PY, "-c", "x = bytearray(16 << 20)"], resolve_limits(None, memory="64MiB"))
        assert ok.exit_code == 0 and ok.oom_kills == 0 and 16 * MiB <= ok.peak_memory <= 64 * MiB


@pytest.mark.rig
@pytest.mark.skipif(_RIG_SKIP is not None, reason=str(_RIG_SKIP))
def test_cold_read_throttled(tmp_path, capfd):
    if device_for_path(tmp_path) is None:
        pytest.skip(f"{tmp_path} is not on a block device")
    f = _big_file(tmp_path / "cold.bin", 64 * MiB)
    evict(f)
    assert not is_cached(f)
    got, rep = _run_read(f, capfd, read_bandwidth="50MB/s")
    assert got["bytes"] == 64 * MiB
    bw = got["bytes"] / got["seconds"]
    assert bw == pytest.approx(50 * MB, rel=0.15), f"cold read {bw / MB:.1f} MB/s through a 50 MB/s throttle"
    assert rep.device_read_bytes >= 0.95 * 64 * MiB
    assert rep.limits[0].mode == "real" and not rep.warnings


_RANDOM_4K = """
import json, mmap, os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
blocks = os.fstat(fd).st_size // 4096
buf = mmap.mmap(-1, 4096)
rng = random.Random(0)
t = time.monotonic()
for _ in range(300):
    os.preadv(fd, [buf], rng.randrange(blocks) * 4096)
print(json.dumps({"iops": 300 / (time.monotonic() - t)}))
"""


@pytest.mark.rig
@pytest.mark.skipif(_RIG_SKIP is not None, reason=str(_RIG_SKIP))
def test_read_iops_throttled(tmp_path, capfd):
    if device_for_path(tmp_path) is None:
        pytest.skip(f"{tmp_path} is not on a block device")
    f = _big_file(tmp_path / "random.bin", 16 * MiB)
    try:
        os.close(os.open(f, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        pytest.skip("the filesystem does not support O_DIRECT")
    rep = run_in_rig([PY, "-c", _RANDOM_4K, str(f)], resolve_limits(None, read_iops=200), device_paths=[str(f)])
    iops = json.loads(capfd.readouterr().out.strip().splitlines()[-1])["iops"]
    assert iops == pytest.approx(200, rel=0.15) and rep.limits[0].mode == "real"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_not_root_falls_back_with_reasons():
    """An unprivileged user gets emulated limits, each with the reason, and the command still runs."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*nobody, PY, "-c", "import edgespool.apps.rig.runner"], capture_output=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run {PY} with edgespool (a venv under /root?)")
    p = subprocess.run([*nobody, PY, "-m", "edgespool", "rig", "run", "--json", "--memory", "256MiB",
                        "--read-bandwidth", "50MB/s", "--cores", "1", "--", "sh", "-c",
                        'echo "$(nproc) $EDGESPOOL_IO_BANDWIDTH"'], capture_output=True, text=True, timeout=60, cwd="/")
    assert p.returncode == 0, p.stderr
    first, end = p.stdout.split("\n", 1)
    assert first == f"1 {50 * MB}"
    limits = {lim["name"]: lim for lim in json.loads(end)["limits"]}
    assert limits["memory"]["mode"] == limits["read_bandwidth"]["mode"] == "emulated"
    assert "not writable" in limits["memory"]["mechanism"] and "sched_setaffinity" in limits["cores"]["mechanism"]


@pytest.mark.rig
@pytest.mark.skipif(_RIG_SKIP is not None, reason=str(_RIG_SKIP))
def test_warm_read_recognised(tmp_path, capfd):
    if device_for_path(tmp_path) is None:
        pytest.skip(f"{tmp_path} is not on a block device")
    f = _big_file(tmp_path / "warm.bin", 64 * MiB)
    f.read_bytes()
    assert is_cached(f)
    got, rep = _run_read(f, capfd, read_bandwidth="50MB/s")
    assert got["bytes"] / got["seconds"] > 3 * 50 * MB  # served from memory: the throttle never sees it
    assert rep.device_read_bytes < 0.05 * 64 * MiB
    assert rep.cached_before[str(f)] == pytest.approx(1.0) and "page cache" in rep.warnings[0]


@pytest.mark.rig
@pytest.mark.skipif(_RIG_SKIP is not None, reason=str(_RIG_SKIP))
def test_core_limit(capfd):
    code = """
    import json, os, resource, subprocess, sys, time
    spin = "import time\\nt = time.monotonic()\\nwhile time.monotonic() - t < 0.6: pass"
    t = time.monotonic()
    ps = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    [p.wait() for p in ps]
    wall = time.monotonic() - t
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    allowed = open("/proc/self/status").read().split("Cpus_allowed_list:")[1].split()[0]
    print(json.dumps({"affinity": len(os.sched_getaffinity(0)), "allowed": allowed,
                      "cpu_per_wall": (ru.ru_utime + ru.ru_stime) / wall}))
    """
    rep = run_in_rig(_py(code), resolve_limits(None, cores=1))
    got = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert got["affinity"] == 1 and "-" not in got["allowed"] and "," not in got["allowed"]
    assert got["cpu_per_wall"] < 1.25, got  # two busy processes share one CPU
    assert rep.limits[0].name == "cores" and "cpuset" in rep.limits[0].mechanism and rep.exit_code == 0


@pytest.mark.rig
@pytest.mark.skipif(_RIG_SKIP is not None, reason=str(_RIG_SKIP))
@pytest.mark.parametrize("case", ["success", "failure", "crash", "SIGINT", "SIGTERM"])
def test_no_cgroup_left_behind(case):
    action = {"success": "pass", "failure": "raise SystemExit(3)",
              "crash": "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
              "SIGINT": "import time; time.sleep(30)", "SIGTERM": "import time; time.sleep(30)"}[case]
    body = f"import sys\nprint('ready', flush=True)\nsys.stdin.readline()\n{action}"
    def default_signals() -> None:  # a shell runs background jobs with SIGINT ignored, and ignored stays ignored
        for s in (signal.SIGINT, signal.SIGTERM):  # across exec: the rig and its command would inherit that
            signal.signal(s, signal.SIG_DFL)
    p = subprocess.Popen([PY, "-m", "edgespool", "rig", "run", "--memory", "256MiB", "--cores", "1",
                          "--read-bandwidth", "200MB/s", "--", PY, "-c", body],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=default_signals)
    assert p.stdout.readline().strip() == "ready"
    assert rig_groups_present(owner=p.pid), "the rig's cgroups should exist while the command runs"
    p.stdin.write("go\n")
    p.stdin.flush()
    if case in ("SIGINT", "SIGTERM"):
        time.sleep(0.2)
        p.send_signal(getattr(signal, case))
    rc = p.wait(timeout=30)
    err = p.stderr.read()
    expected = {"success": 0, "failure": 3, "crash": 128 + signal.SIGSEGV, "SIGINT": 128 + signal.SIGINT,
                "SIGTERM": 128 + signal.SIGTERM}[case]
    assert rc == expected, err
    assert not rig_groups_present(owner=p.pid)


@pytest.mark.rig
@pytest.mark.skipif(_RIG_SKIP is not None, reason=str(_RIG_SKIP))
def test_stale_groups_of_dead_rigs_are_swept():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [discover()[0][c].base / f"{PREFIX}{dead.pid}-dead00" for c in ("memory", "blkio")]
    for d in stale:
        d.mkdir()
    with RigCgroups(("memory", "blkio")) as cg:
        assert cg.dirs and all(not d.exists() for d in stale)
    assert not any(d.exists() for d in cg.dirs.values())


# --- arm64 under qemu -----------------------------------------------------------------------------------------------

def _arm64_skip() -> str | None:
    from conftest import arm64_skip_reason

    return arm64_skip_reason()


@pytest.fixture(scope="module")
def arm64_root():
    from edgespool.apps.rig import arm64

    why = _arm64_skip()
    if why:
        pytest.skip(why)
    res = arm64.setup()  # cached after the first time (~50 s: debootstrap, unpack, wheels, verify)
    return res.root


@pytest.mark.arm64
@pytest.mark.slow
def test_arm64_targets_inside(arm64_root, tmp_path):
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    before = sorted(os.listdir(binfmt)) if binfmt.is_dir() else None
    p = subprocess.Popen([PY, "-m", "edgespool", "rig", "run", "--json", "--profile", "rpi4", "--arch", "arm64", "--",
                          "python3", "-m", "edgespool", "targets", "host", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    host, end = json.JSONDecoder().raw_decode(out)
    report = json.loads(out[end:])
    assert host["isa"] == "aarch64" and host["triple"] == "aarch64-linux-gnu"
    assert "cortex-a72" in report["arch"] and report["limits"][0]["mode"] == "real"
    assert not rig_groups_present(owner=p.pid)
    after = sorted(os.listdir(binfmt)) if binfmt.is_dir() else None
    assert before == after and "edgespool-aarch64" not in (after or [])  # the host's binfmt_misc is untouched


@pytest.mark.arm64
@pytest.mark.slow
def test_arm64_tiny_bundle_matches_host(arm64_root, tmp_path):
    """A tiny random Mixtral-style bundle exported for rpi5 generates the same greedy tokens in the arm64 rig
    (numpy on aarch64 under qemu) as on the host."""
    synth = pytest.importorskip("edgespool.exporters.synth")
    export = pytest.importorskip("edgespool.exporters.export")
    from edgespool.exporters.compress import QuantPolicy

    src = synth.synth_demo_model(seed=0, hidden=64, layers=2, experts=4, moe_intermediate=128, heads=4, kv_heads=2)
    bundle = export.export_model(src, tmp_path / "b", target="rpi5", policy=QuantPolicy(quant="int8", expert_bits=4,
                                 dense_bits=8), overwrite=True, onnx=False, kernels=False, progress=False).path
    gen = ["-m", "edgespool", "run", str(bundle), "-n", "8", "--json", "--prompt", "Once upon"]
    host = json.loads(subprocess.run([PY, *gen], capture_output=True, text=True, check=True, timeout=120).stdout)
    p = subprocess.run([PY, "-m", "edgespool", "rig", "run", "--json", "--profile", "rpi5", "--memory", "512MiB",
                        "--arch", "arm64", "--", "python3", *gen], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    inside, end = json.JSONDecoder().raw_decode(p.stdout)
    report = json.loads(p.stdout[end:])
    assert len(host["tokens"]) == 8 and inside["tokens"] == host["tokens"]
    assert "cortex-a76" in report["arch"] and report["oom_kills"] == 0


def test_timeout_terminates_command():
    rep = run_in_rig(["sleep", "30"], resolve_limits(None, cores=1), emulate=True, timeout=0.3)
    assert rep.exit_code == 128 + signal.SIGTERM and rep.wall_s < 5 and "timed out" in rep.warnings[0]


_KERNEL_CHECK = """
import json, platform, sys
import numpy as np
from edgespool.kernels.quant import linear, quantize
from edgespool.kernels.tvm_build import LinearSpec
kdir, out = sys.argv[1], sys.argv[2]
meta = json.load(open(kdir + "/kernels.json"))
kern = None
if platform.machine() == "aarch64":
    from edgespool.kernels.tvm_backend import TvmKernels
    kern = TvmKernels.from_dir(kdir)
res = {}
for k in meta["kernels"]:
    s = LinearSpec.from_dict(k["spec"])
    rng = np.random.default_rng([s.out_features, s.in_features])
    w = quantize(rng.standard_normal((s.out_features, s.in_features)).astype(np.float32), s.scheme, s.group_size or 32)
    x = rng.standard_normal((1 if s.batch == "gemv" else 4, s.in_features)).astype(np.float32)
    res[k["file"]] = kern.linear(x, w) if kern is not None else linear(x, w)  # numpy reference on the host
np.savez(out, **res)
print(json.dumps({"machine": platform.machine(), "calls": kern.calls if kern else 0,
                  "fallbacks": kern.fallbacks if kern else {}}))
"""


@pytest.mark.arm64
@pytest.mark.slow
@pytest.mark.tvm
def test_arm64_tvm_kernels_match_host(arm64_root, tmp_path):
    """The aarch64 kernels an rpi5 export cross-compiles (TVM, NEON + dotprod) run in the rig, under qemu's
    cortex-a76, and agree with the host's numpy reference."""
    pytest.importorskip("tvm")
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed (apt-get install gcc-aarch64-linux-gnu)")
    from edgespool.apps.rig import arm64
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.synth import synth_demo_model

    arm64.setup(extras=("apache-tvm",))  # ~25 s the first time, then cached
    src = synth_demo_model(seed=0, hidden=64, layers=2, experts=4, moe_intermediate=128, heads=4, kv_heads=2)
    # int4 g64 experts: TVM linear kernels (int8 and int4 g32 go to the C block kernels, checked in the rig by
    # tests/test_kernels_blocks.py)
    bundle = export_model(src, tmp_path / "b", target="rpi5", policy=QuantPolicy(quant="int8", expert_bits=4,
                          dense_bits=8, group_size=64), overwrite=True, onnx=False, kernels=True, progress=False,
                          kernel_activations="f32").path  # float activations: comparable with host numpy
    # (the q8 / sdot kernels are checked against the Q8_0 reference in tests/test_kernels_tvm.py)
    kdir = Path(bundle) / "kernels"
    if not (kdir / "kernels.json").exists():
        pytest.skip("the export wrote no kernels")
    (tmp_path / "check.py").write_text(_KERNEL_CHECK)
    subprocess.run([PY, "check.py", str(kdir), "host.npz"], cwd=tmp_path, check=True, capture_output=True)
    p = subprocess.run([PY, "-m", "edgespool", "rig", "run", "--profile", "rpi5", "--arch", "arm64", "--",
                        "python3", "check.py", str(kdir), "arm.npz"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[0])
    import numpy as np

    host, arm = np.load(tmp_path / "host.npz"), np.load(tmp_path / "arm.npz")
    assert got["machine"] == "aarch64" and got["calls"] == len(host.files) > 0 and not got["fallbacks"]
    for name in host.files:
        np.testing.assert_allclose(arm[name], host[name], rtol=1e-5, atol=1e-4, err_msg=name)
