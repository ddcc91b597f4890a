"""Detect the machine we are running on as a :class:`TargetProfile` named ``host``."""
from __future__ import annotations

import functools
import os
import platform

from .profiles import StorageSpec, TargetProfile

# Map CPU model strings to LLVM mcpu names (TVM rejects mcpu=native).
_X86_MCPU = [("EPYC 9", "znver4"), ("EPYC 7", "znver3"), ("Ryzen", "znver3")]
# Intel model strings in VMs say only "Intel(R) Xeon(R) Processor": infer the generation from the features, newest
# first (an mcpu whose features the CPU lacks would compile illegal instructions; one older loses VNNI kernels).
_INTEL_BY_FEATURES = [({"amx_int8", "avx512_fp16"}, "sapphirerapids"), ({"avx512_vnni", "avx512_bf16"}, "cooperlake"),
                      ({"avx512_vnni"}, "cascadelake"), ({"avx512f", "avx512bw", "avx512vl"}, "skylake-avx512")]


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# AT_HWCAP bits of aarch64 Linux (asm/hwcap.h) -> the /proc/cpuinfo feature names
_AARCH64_HWCAP = {1 << 1: "asimd", 1 << 9: "fphp", 1 << 20: "asimddp", 1 << 22: "sve"}


def _aarch64_hwcaps() -> set[str]:
    """aarch64 features from the kernel's AT_HWCAP (``getauxval``): right natively and under qemu-user, which
    sets it for the emulated core (there /proc/cpuinfo is missing or describes the x86 host)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.getauxval.restype, libc.getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
        bits = int(libc.getauxval(16))  # AT_HWCAP
    except (OSError, AttributeError):
        return set()
    return {name for bit, name in _AARCH64_HWCAP.items() if bits & bit}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _ram_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # pragma: no cover - psutil is a dependency
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@functools.lru_cache(maxsize=1)
def detect_host() -> TargetProfile:
    """The running machine as a profile: ISA, vector features, usable cores, RAM; storage speed is not measured
    here (``read_bandwidth`` 0 means unknown; `edgespool bench` measures it with a cold read)."""
    machine = platform.machine().lower()
    flags = _cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    storage = (StorageSpec("local", 0, 0, "not measured: use `edgespool bench` for a cold-read figure"),)
    if machine in ("x86_64", "amd64"):
        feats = tuple(f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni") if f in flags)
        model = _cpu_model()
        mcpu = next((m for key, m in _X86_MCPU if key in model), "")
        if not mcpu and "EPYC" in model:  # model string without a generation number (VMs): infer from features
            mcpu = "znver4" if "avx512f" in flags else "znver3"
        if not mcpu and ("Intel" in model or "Xeon" in model):
            mcpu = next((m for need, m in _INTEL_BY_FEATURES if need <= flags), "")
        mcpu = mcpu or ("x86-64-v3" if "avx2" in flags else "x86-64")
        tvm = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu}
        return TargetProfile(
            name="host", description=f"this machine: {model}", triple="x86_64-linux-gnu", isa="x86_64",
            features=feats, cpu=mcpu, cores=cores, ram=_ram_bytes(), storage=storage, tvm_target=tvm,
        )
    if machine in ("aarch64", "arm64"):
        flags = _aarch64_hwcaps() or flags  # the kernel's word first (qemu-user: the emulated core's)
        feats = tuple(f for f in ("asimd", "asimddp", "fphp", "sve") if f in flags)
        mattr = ["+neon"] + (["+dotprod"] if "asimddp" in flags else [])
        mcpu = "cortex-a76" if "asimddp" in flags else "cortex-a72"
        tvm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": mattr}
        return TargetProfile(
            name="host", description=f"this machine: aarch64 ({_cpu_model() or 'unknown cpu'})",
            triple="aarch64-linux-gnu", isa="aarch64", features=feats, cpu=mcpu, cores=cores, ram=_ram_bytes(),
            storage=storage, tvm_target=tvm,
        )
    return TargetProfile(
        name="host", description=f"this machine: {machine}", triple=f"{machine}-linux-gnu", isa=machine,
        features=(), cpu="generic", cores=cores, ram=_ram_bytes(), storage=storage,
        tvm_target={"kind": "llvm"},
    )


