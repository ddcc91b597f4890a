"""Preflight: does this bundle fit this board? Compares the facts the board agent reported (arch, CPU features,
glibc, Python, memory, free disk) with the bundle's target, compiled kernels and plan. A misfit is a
:class:`DeployError` whose one line names both sides, raised before any byte of the bundle moves."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import BudgetError, DeployError
from ...runtime.bundle.reader import Bundle
from ...units import fmt_bytes

_ISA = {"aarch64": "aarch64", "arm64": "aarch64", "x86_64": "x86_64", "amd64": "x86_64", "armv7l": "armv7"}
# target feature name -> the name /proc/cpuinfo uses for it
_CPUINFO = {"neon": "asimd", "dotprod": "asimddp", "fp16": "fphp", "i8mm": "i8mm", "sve": "sve",
            "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni"}
MIN_PYTHON = (3, 10)
DISK_MARGIN = 16 << 20  # keep this much free on the board after staging
RESIDENT_OVERHEAD = 128 << 20  # interpreter + numpy + tokenizer, beyond the weights, for a resident run


def isa_of(machine: str | None) -> str:
    return _ISA.get((machine or "").lower(), (machine or "?").lower())


def glibc_needed(kernels_dir: Path) -> tuple[int, int] | None:
    """The newest ``GLIBC_x.y`` symbol version any compiled kernel library in ``kernels_dir`` asks for."""
    best = None
    for so in kernels_dir.rglob("*.so"):
        for m in re.finditer(rb"GLIBC_(\d+)\.(\d+)", so.read_bytes()):
            v = (int(m.group(1)), int(m.group(2)))
            best = v if best is None or v > best else best
    return best


def _ver(s: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", s or "")[:3])


@dataclass
class Fit:
    """The preflight verdict: ``notes`` are facts worth printing; a misfit raised instead of returning."""

    needed_disk: int
    needed_memory: int
    plan_bytes: int | None = None  # the streaming plan's total under --memory-budget
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"needed_disk": self.needed_disk, "needed_memory": self.needed_memory, "plan_bytes": self.plan_bytes,
                "notes": self.notes}


def check_fit(bundle: Bundle, facts: dict[str, Any], device: str, *, bytes_to_send: int, bundle_bytes: int,
              memory_budget: int | None = None, need_edgespool: bool = False) -> Fit:
    """Raise DeployError on the first misfit between ``bundle`` and the board ``device`` described by ``facts``."""
    tgt = bundle.manifest.get("target", {}) or {}
    tname = tgt.get("name", "?")
    side = f"bundle {bundle.path.name} (target {tname})"
    board_isa = isa_of(facts.get("arch"))
    kernels = bundle.manifest.get("kernels")
    want_isa = tgt.get("isa")
    if kernels:
        want_isa = str(kernels.get("tvm_target", {}).get("mtriple", want_isa or "")).split("-")[0] or want_isa
    if want_isa and isa_of(want_isa) != board_isa:
        raise DeployError(f"{side} is built for {want_isa}, board {device!r} is {facts.get('arch')}; re-export with "
                          f"--target for this board")
    flags = set(facts.get("cpu_features") or [])
    if kernels:
        mattr = [a.lstrip("+") for a in kernels.get("tvm_target", {}).get("mattr", [])]
        for feat in list(tgt.get("features", [])) + mattr:
            name = _CPUINFO.get(feat, feat)
            if board_isa == "aarch64" and feat == "neon":
                continue  # NEON (asimd) is part of ARMv8-A
            if name not in flags:
                raise DeployError(f"{side} has kernels using {feat} ({name} in /proc/cpuinfo); board {device!r} "
                                  f"({facts.get('cpu_model') or facts.get('arch')}) lacks it; re-export for this board")
        need = glibc_needed(bundle.path / "kernels")
        have = _ver(facts.get("glibc"))
        if need and have and have[:2] < need:
            raise DeployError(f"{side} has kernels needing glibc {need[0]}.{need[1]}; board {device!r} has glibc "
                              f"{facts.get('glibc')}; export on an older toolchain")
    py = _ver(facts.get("python"))
    if py and py[:2] < MIN_PYTHON:
        raise DeployError(f"{side} needs Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} on the board; board {device!r} "
                          f"has {facts.get('python')} ({facts.get('python_executable')})")
    usable = facts.get("memory_usable")
    plan_total = None
    if memory_budget is not None and bundle.kind == "decoder":
        # the streaming plan the board will make: below the bundle's minimum it is refused here, not there
        from ...schedulers.memory_plan import plan_memory

        try:
            plan_total = plan_memory(bundle, None, memory_budget, stage=getattr(bundle, "stage", None)).total_bytes
        except BudgetError as e:
            raise DeployError(f"{side} cannot stream in --memory-budget {fmt_bytes(memory_budget)}: {e}") from None
    if memory_budget is not None:
        needed_mem = memory_budget
        what = f"a memory budget of {fmt_bytes(memory_budget)}"
    else:
        needed_mem = bundle.weights_nbytes + RESIDENT_OVERHEAD
        what = f"{fmt_bytes(needed_mem)} to run resident ({fmt_bytes(bundle.weights_nbytes)} of weights)"
    if usable and needed_mem > usable:
        hint = "pass a smaller --memory-budget" if memory_budget else "pass --memory-budget to stream the weights"
        raise DeployError(f"{side} needs {what}; board {device!r} has {fmt_bytes(usable)} usable memory; {hint}")
    needed_disk = bytes_to_send + bundle_bytes + DISK_MARGIN
    free = facts.get("disk_free")
    if free is not None and needed_disk > free:
        raise DeployError(f"{side} needs {fmt_bytes(needed_disk)} free on the board ({fmt_bytes(bytes_to_send)} to "
                          f"receive + {fmt_bytes(bundle_bytes)} to stage); board {device!r} has {fmt_bytes(free)} "
                          f"free under its device root")
    fit = Fit(needed_disk, needed_mem, plan_total)
    es = facts.get("edgespool") or {}
    if not es.get("version"):
        msg = f"no edgespool on board {device!r} ({es.get('error', 'not importable')}); ship one with --wheel"
        if need_edgespool:
            raise DeployError(msg)
        fit.notes.append(msg)
    if not kernels:
        fit.notes.append("bundle has no compiled kernels: the board runs the numpy reference kernels")
    return fit
