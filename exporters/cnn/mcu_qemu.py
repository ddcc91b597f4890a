"""Run the generated C project on an emulated Cortex-M (qemu-system-arm, MPS2 boards) and count instructions.

* ``compile_qemu(proj, cpu)``: arm-none-eabi-gcc build of ``main_qemu.c`` + the model with ``mps2.ld`` (bare metal,
  own vector table and semihosting; newlib-nano only for memcpy/memset). ``profile=True`` adds ``-DES_PROFILE``:
  per-node virtual-clock ticks around every kernel call.
* ``run_qemu(elf, cpu)``: ``qemu-system-arm -M mps2-an386`` (Cortex-M4) or ``mps2-an500`` (Cortex-M7) with
  ``-icount shift=6``: qemu advances its virtual clock by exactly 2**6 ns per executed instruction; the board's
  FPGAIO COUNTER register counts that clock at 25 MHz, so instructions = ticks * 40 / 64 (0.625 instruction
  resolution; the 32-bit counter's wraps are undone with the board's 1 Hz counter). A calibration loop of known
  length (2001 instructions) is measured in the same run.

**These are instructions executed under qemu, not cycles**: qemu does not model the pipeline, caches, flash wait
states, or the M7's dual issue (DWT->CYCCNT reads 0 under qemu 7.2).
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import DeployError
from .mcu_build import ARM_FLAGS, C_SOURCES, COMMON_CFLAGS

QEMU_MACHINES = {"cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500"}
ICOUNT_SHIFT = 6
INSNS_PER_TICK = 40.0 / 2 ** ICOUNT_SHIFT  # 25 MHz counter = 40 ns per tick; 64 ns per instruction
COUNTER_HZ = 25_000_000  # the MPS2 FPGAIO COUNTER's clock (the board's 25 MHz)
CALIB_INSNS = 2001  # movw + 1000 x (subs, bne) in main_qemu.c


@dataclass
class QemuRun:
    """One model_invoke() under qemu: the int8 output and instruction counts (not cycles)."""

    machine: str
    output: np.ndarray
    invoke_insns: float
    calib_insns: float  # measured instructions of the 2001-instruction calibration loop
    node_insns: dict[int, float] = field(default_factory=dict)  # -DES_PROFILE builds: per node, incl. ~5/call probe


def unwrap_ticks(ticks_mod32: int, seconds: int) -> int:
    """True tick count from the 32-bit COUNTER delta and the CLK1HZ delta of the same interval."""
    approx = seconds * COUNTER_HZ
    return ticks_mod32 + 2**32 * max(0, round((approx - ticks_mod32) / 2**32))


def qemu_available() -> str | None:
    """None when qemu-system-arm and arm-none-eabi-gcc exist, else the reason (for skips / errors)."""
    for tool, pkg in (("qemu-system-arm", "qemu-system-arm"), ("arm-none-eabi-gcc", "gcc-arm-none-eabi")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian: apt-get install -y {pkg} libnewlib-arm-none-eabi)"
    return None


def compile_qemu(proj: Path, cpu: str, *, profile: bool = False) -> Path:
    """Build ``model_qemu[_prof].elf`` for qemu's MPS2 board of ``cpu``; returns the ELF."""
    proj = Path(proj).resolve()  # gcc runs inside proj: a relative path would be doubled
    why = qemu_available()
    if why:
        raise DeployError(why)
    if cpu not in QEMU_MACHINES:
        raise DeployError(f"no qemu machine for cpu {cpu!r}; known: {', '.join(QEMU_MACHINES)}")
    elf = proj / ("model_qemu_prof.elf" if profile else "model_qemu.elf")
    cmd = ["arm-none-eabi-gcc", *COMMON_CFLAGS, *ARM_FLAGS[cpu], *(["-DES_PROFILE"] if profile else []),
           "-nostartfiles", "--specs=nano.specs", "-T", "mps2.ld", "-o", str(elf), "main_qemu.c",
           *C_SOURCES]
    r = subprocess.run(cmd, cwd=proj, capture_output=True, text=True)
    if r.returncode:
        raise DeployError(f"arm-none-eabi-gcc (qemu build) failed in {proj}: {r.stderr.strip()[:2000]}")
    return elf


def run_qemu(elf: Path, cpu: str, *, timeout: float = 600.0) -> QemuRun:
    """Run a :func:`compile_qemu` ELF on the emulated board; parse its semihosting output."""
    machine = QEMU_MACHINES[cpu]
    cmd = ["qemu-system-arm", "-M", machine, "-nographic", "-monitor", "none", "-serial", "none",
           "-semihosting-config", "enable=on,target=native", "-icount", f"shift={ICOUNT_SHIFT}",
           "-kernel", str(elf)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise DeployError(f"{elf.name} on qemu {machine}: no exit within {timeout:.0f} s") from e
    vals: dict[str, str] = {}
    nodes: dict[int, float] = {}
    for line in (r.stdout + "\n" + r.stderr).splitlines():  # semihosting writes to qemu's stderr
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ES_NODE":
            nodes[int(parts[1])] = int(parts[2]) * INSNS_PER_TICK
        elif len(parts) == 2 and parts[0].startswith("ES_"):
            vals[parts[0]] = parts[1]
    if r.returncode or "ES_OUT" not in vals:
        tail = (r.stdout + r.stderr).strip()[-500:]
        raise DeployError(f"{elf.name} on qemu {machine} failed (exit {r.returncode}): {tail}")
    empty = int(vals["ES_EMPTY"])
    out = np.frombuffer(bytes.fromhex(vals["ES_OUT"]), np.uint8).view(np.int8).copy()
    # COUNTER is 32 bits (wraps every 2^32 ticks = 2.7 G instructions): the whole-second counter read alongside
    # (25e6 ticks per virtual second, +-1 s) tells how many wraps the invoke spanned
    total = unwrap_ticks(int(vals["ES_TOTAL"]), int(vals.get("ES_SECONDS", 0)))
    return QemuRun(machine, out, (total - empty) * INSNS_PER_TICK,
                   (int(vals["ES_CALIB"]) - empty) * INSNS_PER_TICK, nodes)
