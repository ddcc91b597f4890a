"""Named target profiles (plain data) and the one lookup function.

Figures are public specifications / widely reported measurements of each board; the ``source`` of each storage
medium says where its number comes from. ``host`` is detected at lookup time (see :mod:`.host`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import TargetError

MiB = 1 << 20
GiB = 1 << 30
MB = 1_000_000


@dataclass(frozen=True)
class StorageSpec:
    """One storage medium of a board: sequential read bandwidth and small random read IOPS."""

    medium: str  # e.g. "nvme", "microsd", "emmc", "flash"
    read_bandwidth: int  # bytes/s, sequential large reads
    read_iops: int  # 4 KiB random reads per second at QD1 (what page-fault style reads get)
    source: str = ""


@dataclass(frozen=True)
class GpuSpec:
    """The board's GPU, if any."""

    name: str
    arch: str  # CUDA arch, e.g. "sm_87"
    memory: int  # bytes usable by the GPU
    shared_memory: bool  # True when CPU and GPU share the same DRAM (Jetson)
    tvm_target: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetProfile:
    """Everything edgespool needs to know about a target: ISA, cores, memory, storage, GPU, TVM target."""

    name: str
    description: str
    triple: str  # e.g. "aarch64-linux-gnu", "thumbv7em-none-eabihf"
    isa: str  # "x86_64", "aarch64", "armv7e-m"
    features: tuple[str, ...]
    cpu: str  # LLVM mcpu name
    cores: int
    ram: int  # bytes of DRAM (or SRAM for MCUs)
    storage: tuple[StorageSpec, ...]  # first is the default medium
    tvm_target: dict[str, Any]
    gpu: GpuSpec | None = None
    flash: int = 0  # MCUs: bytes of on-chip flash for weights/code
    kind: str = "linux"  # "linux" or "mcu"
    cross_cc: str | None = None  # C compiler for cross-compiling kernels, None = host cc

    def storage_medium(self, medium: str | None = None) -> StorageSpec:
        """The storage spec named ``medium`` (default: the profile's first); unknown names raise TargetError."""
        if medium is None:
            return self.storage[0]
        for s in self.storage:
            if s.medium == medium:
                return s
        names = ", ".join(s.medium for s in self.storage)
        raise TargetError(f"target {self.name!r} has no storage medium {medium!r}; it has: {names}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (used by `edgespool targets --json` and bundle manifests)."""
        d = asdict(self)
        d["features"] = list(self.features)
        d["storage"] = [asdict(s) for s in self.storage]
        return d


_ARM_A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
_ARM_A76 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}
_ARM_A57 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a57", "mattr": ["+neon"]}
_ARM_A78AE = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a78", "mattr": ["+neon", "+dotprod"]}

_X86_V3 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"}
_X86_ADL = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "alderlake"}

# cpuinfo flags (as targets/host.py reports them) that code compiled for an x86 LLVM mcpu needs from the CPU it
# runs on: such kernels fit any CPU with these flags (an AVX2 export runs on an AVX-512 machine), not only its mcpu
X86_MCPU_NEEDS: dict[str, frozenset[str]] = {
    "x86-64": frozenset(),
    "x86-64-v3": frozenset({"avx2", "fma"}),
    "znver3": frozenset({"avx2", "fma"}),
    "alderlake": frozenset({"avx2", "fma", "avx_vnni"}),
    "skylake-avx512": frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl"}),
    "cascadelake": frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}),
    "znver4": frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}),
}

# Registry: a plain dict literal (MLC-LLM habit). `host` is filled in by detection at lookup time.
PROFILES: dict[str, TargetProfile] = {
    "rpi4": TargetProfile(
        name="rpi4",
        description="Raspberry Pi 4 Model B (BCM2711, 4x Cortex-A72 @1.8 GHz), 4 GB",
        triple="aarch64-linux-gnu", isa="aarch64", features=("neon",), cpu="cortex-a72", cores=4, ram=4 * GiB,
        storage=(
            StorageSpec("microsd", 45 * MB, 1500, "Pi 4 SDR50 microSD bus, ~45 MB/s typical sequential reads"),
            StorageSpec("usb-ssd", 350 * MB, 8000, "USB 3.0 SATA SSD, ~350 MB/s"),
        ),
        tvm_target=_ARM_A72, cross_cc="aarch64-linux-gnu-gcc",
    ),
    "rpi5": TargetProfile(
        name="rpi5",
        description="Raspberry Pi 5 (BCM2712, 4x Cortex-A76 @2.4 GHz), 8 GB",
        triple="aarch64-linux-gnu", isa="aarch64", features=("neon", "dotprod", "fp16"), cpu="cortex-a76",
        cores=4, ram=8 * GiB,
        storage=(
            StorageSpec("nvme", 440 * MB, 50000, "M.2 HAT NVMe on PCIe 2.0 x1, ~440 MB/s sequential"),
            StorageSpec("microsd", 90 * MB, 2500, "SDR104 microSD, ~90 MB/s sequential"),
        ),
        tvm_target=_ARM_A76, cross_cc="aarch64-linux-gnu-gcc",
    ),
    "jetson-nano": TargetProfile(
        name="jetson-nano",
        description="NVIDIA Jetson Nano (4x Cortex-A57, 128-core Maxwell GPU sm_53), 4 GB shared",
        triple="aarch64-linux-gnu", isa="aarch64", features=("neon",), cpu="cortex-a57", cores=4, ram=4 * GiB,
        storage=(StorageSpec("microsd", 60 * MB, 1500, "Jetson Nano dev kit microSD, ~60 MB/s"),),
        tvm_target=_ARM_A57,
        gpu=GpuSpec("Maxwell 128-core", "sm_53", 4 * GiB, True, {"kind": "cuda", "arch": "sm_53"}),
        cross_cc="aarch64-linux-gnu-gcc",
    ),
    "jetson-orin-nano": TargetProfile(
        name="jetson-orin-nano",
        description="NVIDIA Jetson Orin Nano 8GB (6x Cortex-A78AE, 1024-core Ampere GPU sm_87), 8 GB shared",
        triple="aarch64-linux-gnu", isa="aarch64", features=("neon", "dotprod", "fp16"), cpu="cortex-a78",
        cores=6, ram=8 * GiB,
        storage=(
            StorageSpec("nvme", 1300 * MB, 100000, "NVMe on PCIe 3.0 x4 carrier slot, >=1.3 GB/s"),
            StorageSpec("microsd", 67 * MB, 2000, "microSD UHS-1, ~67 MB/s"),
        ),
        tvm_target=_ARM_A78AE,
        gpu=GpuSpec("Ampere 1024-core", "sm_87", 8 * GiB, True, {"kind": "cuda", "arch": "sm_87"}),
        cross_cc="aarch64-linux-gnu-gcc",
    ),
    "x86-avx2": TargetProfile(
        name="x86-avx2",
        description="any x86-64 CPU with AVX2 and FMA (x86-64-v3: Haswell and later, Zen 1-3, Intel N-series "
                    "mini PCs); no AVX-512, no VNNI",
        triple="x86_64-linux-gnu", isa="x86_64", features=("avx2", "fma"), cpu="x86-64-v3", cores=4, ram=8 * GiB,
        storage=(StorageSpec("nvme", 1500 * MB, 100000, "a PCIe 3.0 x2-x4 NVMe SSD, ~1.5 GB/s sequential"),),
        tvm_target=_X86_V3,
    ),
    "intel-n100": TargetProfile(
        name="intel-n100",
        description="Intel N100 mini PC (Alder Lake-N, 4x Gracemont E-cores @3.4 GHz, AVX2 + AVX-VNNI, "
                    "single-channel DDR5-4800), 16 GB",
        triple="x86_64-linux-gnu", isa="x86_64", features=("avx2", "fma", "avx_vnni"), cpu="alderlake", cores=4,
        ram=16 * GiB,
        storage=(StorageSpec("nvme", 1600 * MB, 80000, "M.2 NVMe on the N100's PCIe 3.0 x2 lanes, ~1.6 GB/s"),),
        tvm_target=_X86_ADL,
    ),
    "mcu-m4": TargetProfile(
        name="mcu-m4",
        description="Cortex-M4F MCU class (e.g. STM32F412: 256 KB SRAM, 1 MB flash)",
        triple="thumbv7em-none-eabihf", isa="armv7e-m", features=("dsp", "fpv4-sp-d16"), cpu="cortex-m4",
        cores=1, ram=256 * 1024,
        storage=(StorageSpec("flash", 100 * MB, 1_000_000, "on-chip flash, memory-mapped"),),
        tvm_target={"kind": "c", "mcpu": "cortex-m4"}, flash=1 * MiB, kind="mcu", cross_cc="arm-none-eabi-gcc",
    ),
    "mcu-m7": TargetProfile(
        name="mcu-m7",
        description="Cortex-M7 MCU class (e.g. STM32F746: 320 KB SRAM, 1 MB flash)",
        triple="thumbv7em-none-eabihf", isa="armv7e-m", features=("dsp", "fpv5-sp-d16"), cpu="cortex-m7",
        cores=1, ram=320 * 1024,
        storage=(StorageSpec("flash", 200 * MB, 1_000_000, "on-chip flash, memory-mapped"),),
        tvm_target={"kind": "c", "mcpu": "cortex-m7"}, flash=1 * MiB, kind="mcu", cross_cc="arm-none-eabi-gcc",
    ),
}


def target_names() -> list[str]:
    """All valid target names, `host` first."""
    return ["host", *PROFILES]


def get_target(name: str) -> TargetProfile:
    """Look up a target profile by name; ``host`` is detected. Unknown names raise TargetError listing valid ones."""
    if name == "host":
        from .host import detect_host

        return detect_host()
    try:
        return PROFILES[name]
    except KeyError:
        raise TargetError(f"unknown target {name!r}; valid targets: {', '.join(target_names())}") from None
