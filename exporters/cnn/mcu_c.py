"""MCU lowering: an int8 CNN + patch plan -> a self-contained C project (own C kernels, no TVM needed).

Project (``out_dir``)::

    es_kernels.h / es_kernels.c   int8 kernels on *views* (a buffer holding a box of a full tensor); positions
                                  outside the full tensor are the layer's padding, so one kernel serves whole
                                  maps and patches. Arithmetic = edgespool.runtime.cnn.executor's int8 path exactly
                                  (int32 accumulators, float32 requant multipliers, round-half-even, no FMA
                                  contraction: build with -ffp-contract=off). Plain C loops.
    es_kernels_s8.c, es_simd.h    CMSIS-NN-style kernels (``kernels="s8"``, the default): convs as im2col + GEMM
                                  with SXTB16/SMLAD dual 16-bit MACs (ACLE intrinsics on Armv7E-M, the same
                                  integer arithmetic in plain C on the host), depthwise 3x3, gemm; same results.
    model_weights.c               int8 weights, int32 biases, float32 multipliers, int8 LUTs as const arrays
    model.h / model.c             ONE static arena (offsets from schedulers.arena.arena_layout), the patch
                                  region table, model_invoke(): stage 1 patch by patch into the stage-1 buffer,
                                  then the rest layer by layer
    main_host.c                   host harness: input.bin (int8) -> output.bin (int8)
    main_mcu.c                    Cortex-M harness: runs on an embedded test input, keeps the result
    main_qemu.c, mps2.ld          bare-metal harness for qemu's mps2-an386 (M4) / mps2-an500 (M7): semihosting
                                  output, instruction counts from the virtual clock (see :mod:`.mcu_qemu`)
    Makefile

Flash = the const arrays (checked against TargetProfile.flash before anything is written); SRAM = the arena
(checked against TargetProfile.ram). Both failures raise BudgetError with the numbers.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BudgetError, OptionError, UnsupportedModelError
from ...runtime.bundle.cnn_graph import CnnGraph
from ...runtime.cnn.quant import QuantCnn
from ...schedulers.arena import arena_layout
from ...schedulers.patch_plan import PatchPlan
from .mcu_build import ARM_FLAGS, COMMON_CFLAGS, C_SOURCES, compile_arm, compile_host, makefile, run_host
from .mcu_kernels import KERNEL_SETS, conv_kernel, pack_s8

build_arm = compile_arm  # export_c_project's keyword compile_arm shadows the function
__all__ = ["ARM_FLAGS", "COMMON_CFLAGS", "C_SOURCES", "CProject", "compile_arm", "compile_host", "run_host",
           "export_c_project", "check_flash", "weight_bytes", "generate"]


@dataclass
class CProject:
    """The written C project and its measured sizes."""

    path: Path
    flash_weights_bytes: int
    arena_bytes: int
    plan_peak_bytes: int
    target: str
    arm_sizes: dict[str, int] | None = None  # .text/.data/.bss of the linked Cortex-M ELF (arm-none-eabi-size -A)
    arm_elf: str | None = None
    buffers: list[dict[str, Any]] = field(default_factory=list)
    kernels: str = "s8"
    scratch_bytes: int = 0  # the s8 kernels' q15 im2col buffer (static, outside the arena)
    nodes: list[dict[str, Any]] = field(default_factory=list)  # per node: name, op, C kernel, MACs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


_C_SRC = Path(__file__).resolve().parent / "c_src"  # the C sources of the generated project (package data)


def _c_source(name: str) -> str:
    """A C file of the generated project: es_kernels.h/.c (int8 kernels), main_host.c, main_mcu.c."""
    return (_C_SRC / name).read_text(encoding="utf-8")


def weight_bytes(q: QuantCnn) -> int:
    """Bytes of every const array the C project stores (int8 weights, int32 bias, float32 mult, LUTs)."""
    total = 0
    for qn in q.nodes.values():
        for k in ("w", "bias", "mult", "lut"):
            v = qn.get(k)
            if isinstance(v, np.ndarray) and v.ndim > 0:
                total += v.nbytes
    return total


def graph_weight_bytes(graph: CnnGraph) -> int:
    """Flash bytes the int8 C project needs for ``graph`` (same as :func:`weight_bytes` after quantisation)."""
    total = 0
    for n in graph.nodes:
        if n.op in ("conv", "gemm"):
            total += n.weights["w"].size + 8 * n.weights["w"].shape[0]  # int8 w, int32 bias, float32 mult
        elif n.op == "act":
            total += 256
    return total


def check_flash(graph: CnnGraph, q: QuantCnn | None, profile: Any) -> int:
    """BudgetError when the int8 weights cannot fit the target's flash; returns the weight bytes."""
    need = weight_bytes(q) if q is not None else graph_weight_bytes(graph)
    if profile.flash and need > profile.flash:
        raise BudgetError(f"{graph.name}: int8 weights need {need} B ({need / 1024:.0f} KiB) of flash, target "
                          f"{profile.name} has {profile.flash} B ({profile.flash / 1024:.0f} KiB); use a smaller "
                          "model (e.g. a lower MobileNetV2 --width) or a target with more flash")
    return need


def _carr(ctype: str, name: str, arr: np.ndarray) -> str:
    flat = np.asarray(arr).reshape(-1)
    if ctype == "float":
        vals = [float(np.float32(v)).hex() + "f" for v in flat]
    else:
        vals = [str(int(v)) for v in flat]
    lines = [", ".join(vals[i: i + 24]) for i in range(0, len(vals), 24)]
    return f"const {ctype} {name}[{len(vals)}] = {{\n  " + ",\n  ".join(lines) + "\n};\n"


def _f(v: Any) -> str:
    return float(np.float32(v)).hex() + "f"


def generate(graph: CnnGraph, q: QuantCnn, plan: PatchPlan, out_dir: Path,
             test_input: np.ndarray | None = None, kernels: str = "s8") -> tuple[int, list[Any], int, list[dict]]:
    """Write the C sources; returns (arena bytes, arena buffers, scratch bytes, per-node kernel table)."""
    if kernels not in KERNEL_SETS:
        raise OptionError(f"MCU export: kernels={kernels!r}; choose one of {', '.join(KERNEL_SETS)}")
    alias = {}
    for n in graph.nodes:
        if n.op == "reshape":
            alias[n.output] = alias.get(n.inputs[0], n.inputs[0])
    if not plan.input_resident:
        raise UnsupportedModelError("MCU export keeps the input image resident in SRAM (input_resident=True plans)")
    arena, bufs = arena_layout(graph, plan, itemsize=1, alias=alias)
    offs = {b.name: b.offset for b in bufs}
    tensors = [graph.input] + [n.output for n in graph.nodes]
    tid = {t: i for i, t in enumerate(tensors)}
    split = plan.split_index
    stage1 = graph.nodes[: split + 1] if split >= 0 else []
    t_cut = stage1[-1].output if stage1 else None
    regions = plan.patch_regions()
    s1_tensors = [graph.input] + [n.output for n in stage1]

    w: list[str] = ['#include "model.h"\n']
    body: list[str] = []
    kern = {i: conv_kernel(graph, i, kernels) for i, n in enumerate(graph.nodes) if n.op in ("conv", "gemm")}
    k4s: dict[int, int] = {}
    ncol = 4
    uses_col = any(k.endswith("_s8") for k in kern.values())
    for i, k in kern.items():
        if k == "es_dwconv3x3_s8":  # 3 rows of (ow - 1) * s + 3 int8 columns + 4 slack, stride rounded up to 4
            ow, s = graph.shapes[graph.nodes[i].output][2], graph.nodes[i].attrs["stride"][1]
            ncol = max(ncol, -(-3 * (((ow - 1) * s + 3 + 7) & ~3) // 2))
    for i, n in enumerate(graph.nodes):
        qn = q.nodes.get(n.name, {})
        if "w" in qn and kern.get(i) in ("es_conv_s8", "es_gemm_s8"):
            packed, k4s[i] = pack_s8(qn["w"])
            ncol = max(ncol, k4s[i] * (2 if kern[i] == "es_conv_s8" else 1))
            w.append(_carr("int8_t", f"W{i}", packed).replace("const int8_t", "const int8_t __attribute__((aligned(4)))", 1))
        elif "w" in qn:
            w.append(_carr("int8_t", f"W{i}", qn["w"]))
        if "w" in qn:
            w.append(_carr("int32_t", f"B{i}", qn["bias"]))
            w.append(_carr("float", f"M{i}", qn["mult"]))
        if "lut" in qn:
            w.append(_carr("int8_t", f"L{i}", qn["lut"]))
    if test_input is not None:
        w.append(_carr("int8_t", "es_test_input", test_input))
    decl = [f"extern const int8_t W{i}[]; extern const int32_t B{i}[]; extern const float M{i}[];"
            for i, n in enumerate(graph.nodes) if "w" in q.nodes.get(n.name, {})]
    decl += [f"extern const int8_t L{i}[];" for i, n in enumerate(graph.nodes) if "lut" in q.nodes.get(n.name, {})]

    def call(i: int, in_patch: bool) -> str:
        n = graph.nodes[i]
        qn = q.nodes.get(n.name, {})
        zo = q.tensors[n.output][1]
        zi = [q.tensors[t][1] for t in n.inputs]
        lo, hi = qn.get("clamp", (-128, 127))
        vi = [f"&V[{tid[t]}]" for t in n.inputs]
        vo = f"&V[{tid[n.output]}]"
        ob = f"box_of({vo})" if not (in_patch and n.output == t_cut) else f"reg(p, {s1_tensors.index(t_cut)})"
        a = n.attrs
        if n.op == "conv" and kern[i] == "es_dwconv3x3_s8":
            return (f"es_dwconv3x3_s8({vi[0]}, {vo}, {ob}, W{i}, B{i}, M{i}, {zi[0]}, {zo}, {lo}, {hi}, "
                    f"{a['stride'][0]}, {a['pads'][0]}, {a['pads'][1]}, (int8_t *)es_col);")
        if n.op == "conv" and kern[i] == "es_conv_s8":
            (kh, kw), (sh, sw), (pt, pl, _, _), (dh, dw) = a["kernel"], a["stride"], a["pads"], a["dilation"]
            return (f"es_conv_s8({vi[0]}, {vo}, {ob}, W{i}, B{i}, M{i}, {zi[0]}, {zo}, {lo}, {hi}, "
                    f"{graph.shapes[n.output][0]}, {kh}, {kw}, {sh}, {sw}, {pt}, {pl}, {dh}, {dw}, {a['group']}, "
                    f"{k4s[i]}, es_col);")
        if n.op == "conv":
            (kh, kw), (sh, sw), (pt, pl, _, _), (dh, dw) = a["kernel"], a["stride"], a["pads"], a["dilation"]
            return (f"es_conv2d({vi[0]}, {vo}, {ob}, W{i}, B{i}, M{i}, {zi[0]}, {zo}, {lo}, {hi}, "
                    f"{graph.shapes[n.output][0]}, {kh}, {kw}, {sh}, {sw}, {pt}, {pl}, {dh}, {dw}, {a['group']});")
        if n.op == "maxpool":
            (kh, kw), (sh, sw), (pt, pl, _, _), (dh, dw) = a["kernel"], a["stride"], a["pads"], a["dilation"]
            return f"es_maxpool({vi[0]}, {vo}, {ob}, {kh}, {kw}, {sh}, {sw}, {pt}, {pl}, {dh}, {dw});"
        if n.op == "avgpool":
            (kh, kw), (sh, sw), (pt, pl, _, _) = a["kernel"], a["stride"], a["pads"]
            return (f"es_avgpool({vi[0]}, {vo}, {ob}, {_f(qn['mult'])}, {zi[0]}, {zo}, {lo}, {hi}, {kh}, {kw}, "
                    f"{sh}, {sw}, {pt}, {pl}, {int(a.get('count_include_pad', 0))});")
        if n.op == "gap":
            _, h, ww = graph.shapes[n.inputs[0]]
            return (f"es_avgpool({vi[0]}, {vo}, {ob}, {_f(qn['mult'])}, {zi[0]}, {zo}, {lo}, {hi}, {h}, {ww}, "
                    f"1, 1, 0, 0, 0);")
        if n.op == "add":
            return (f"es_add({vi[0]}, {vi[1]}, {vo}, {ob}, {zi[0]}, {zi[1]}, {_f(qn['m1'])}, {_f(qn['m2'])}, "
                    f"{zo}, {lo}, {hi});")
        if n.op == "mul":
            return f"es_mul({vi[0]}, {vi[1]}, {vo}, {ob}, {zi[0]}, {zi[1]}, {_f(qn['mult'])}, {zo}, {lo}, {hi});"
        if n.op == "concat":
            out, off = [], 0
            for k, t in enumerate(n.inputs):
                out.append(f"es_requant_copy({vi[k]}, {vo}, {ob}, {off}, {zi[k]}, {_f(qn['mults'][k])}, {zo});")
                off += graph.shapes[t][0]
            return " ".join(out)
        if n.op == "act":
            return f"es_lut({vi[0]}, {vo}, {ob}, L{i});"
        if n.op == "gemm" and kern[i] == "es_gemm_s8":
            k = int(np.prod(graph.shapes[n.inputs[0]]))
            return (f"es_gemm_s8(V[{tid[n.inputs[0]]}].data, V[{tid[n.output]}].data, {k}, "
                    f"{graph.shapes[n.output][0]}, W{i}, B{i}, M{i}, {zi[0]}, {zo}, {lo}, {hi}, {k4s[i]}, es_col);")
        if n.op == "gemm":
            k = int(np.prod(graph.shapes[n.inputs[0]]))
            return (f"es_gemm(V[{tid[n.inputs[0]]}].data, V[{tid[n.output]}].data, {k}, "
                    f"{graph.shapes[n.output][0]}, W{i}, B{i}, M{i}, {zi[0]}, {zo}, {lo}, {hi});")
        if n.op == "reshape":
            return "/* reshape: shares its input's buffer */"
        raise UnsupportedModelError(f"MCU export: op {n.op!r} (node {n.name!r}) has no C kernel")

    def full_view(t: str) -> str:
        shp = graph.shapes[t]
        c, h, ww = shp if len(shp) == 3 else (int(np.prod(shp)), 1, 1)
        return (f"  V[{tid[t]}] = (es_view){{es_arena + {offs[alias.get(t, t)]}, {c}, {h}, {ww}, 0, 0, {h}, "
                f"{ww}}};")

    body.append("void model_invoke(void) {")
    for t in tensors:
        if t not in s1_tensors or t == t_cut or (t == graph.input and plan.input_resident):
            body.append(full_view(t))
    if stage1:
        body.append(f"  for (int32_t p = 0; p < {len(regions)}; p++) {{")
        for k, t in enumerate(s1_tensors):
            if t == t_cut or (t == graph.input and plan.input_resident):
                continue
            c, h, ww = graph.shapes[t]
            body.append(f"    set_view(&V[{tid[t]}], es_arena + {offs[t]}, {c}, {h}, {ww}, reg(p, {k}));")
        for i in range(len(stage1)):
            body.append(f"    ES_PROF({i}, {call(i, True)});")
        body.append("  }")
    for i in range(split + 1, len(graph.nodes)):
        c = call(i, False)
        body.append(f"  ES_PROF({i}, {c});" if not c.startswith("/*") else "  " + c)
    body.append("}")

    reg_rows = []
    for r in regions:
        reg_rows.append("{" + ", ".join("{%d, %d, %d, %d}" % r[t] for t in s1_tensors) + "}")
    c_in = int(np.prod(graph.shapes[graph.input]))
    c_out = int(np.prod(graph.shapes[graph.output]))
    model_h = f"""/* {graph.name}: generated by edgespool. Arena {arena} B (plan peak {plan.peak_bytes} B). */
#ifndef MODEL_H
#define MODEL_H
#include <stdint.h>
#include "es_kernels.h"
#define MODEL_ARENA_BYTES {arena}
#define MODEL_INPUT_BYTES {c_in}
#define MODEL_OUTPUT_BYTES {c_out}
#define MODEL_NODES {len(graph.nodes)}
#define MODEL_KERNELS "{kernels}"
#ifdef ES_PROFILE /* per-node virtual-clock ticks, summed over patches; es_prof_now() comes from the harness */
uint32_t es_prof_now(void);
extern uint64_t es_prof_ticks[MODEL_NODES];
#define ES_PROF(i, CALL) do {{ uint32_t t0_ = es_prof_now(); CALL; es_prof_ticks[i] += (uint32_t)(es_prof_now() - t0_); }} while (0)
#else
#define ES_PROF(i, CALL) do {{ CALL; }} while (0)
#endif
/* input: int8, scale {q.tensors[graph.input][0]!r}, zero point {q.tensors[graph.input][1]};
   output: int8, scale {q.tensors[graph.output][0]!r}, zero point {q.tensors[graph.output][1]} */
int8_t *model_input(void);
const int8_t *model_output(void);
void model_invoke(void);
#endif
"""
    model_c = ['#include "model.h"\n',
               "static int8_t es_arena[MODEL_ARENA_BYTES] __attribute__((aligned(16)));",
               f"static es_view V[{len(tensors)}];",
               (f"static int16_t es_col[{ncol}] __attribute__((aligned(4))); /* s8 kernels' scratch */"
                if uses_col else ""),
               "#ifdef ES_PROFILE\nuint64_t es_prof_ticks[MODEL_NODES];\n#endif",
               *decl]
    if regions:
        model_c.append(f"static const int16_t REG[{len(regions)}][{len(s1_tensors)}][4] = {{\n  "
                       + ",\n  ".join(reg_rows) + "\n};")
        model_c.append("static es_box reg(int32_t p, int32_t k) { es_box b = {REG[p][k][0], REG[p][k][1], "
                       "REG[p][k][2], REG[p][k][3]}; return b; }")
        model_c.append("static void set_view(es_view *v, int8_t *d, int32_t c, int32_t H, int32_t W, es_box b) {\n"
                       "  v->data = d; v->c = c; v->H = H; v->W = W; v->y0 = b.y0; v->x0 = b.x0;\n"
                       "  v->h = b.y1 - b.y0; v->w = b.x1 - b.x0;\n}")
    model_c.append("static es_box box_of(const es_view *v) { es_box b = {v->y0, v->y0 + v->h, v->x0, "
                   "v->x0 + v->w}; return b; }")
    model_c.append(f"int8_t *model_input(void) {{ return es_arena + {offs[graph.input]}; }}")
    model_c.append(f"const int8_t *model_output(void) {{ return es_arena + {offs[alias.get(graph.output, graph.output)]}; }}")
    model_c += body
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "es_kernels.h").write_text(_c_source("es_kernels.h"))
    for name in ("es_kernels.c", "es_kernels_s8.c", "es_simd.h", "main_qemu.c", "mps2.ld"):
        (out_dir / name).write_text(_c_source(name))
    (out_dir / "model.h").write_text(model_h)
    (out_dir / "model.c").write_text("\n".join(model_c) + "\n")
    (out_dir / "model_weights.c").write_text("".join(w))
    (out_dir / "main_host.c").write_text(_c_source("main_host.c"))
    (out_dir / "main_mcu.c").write_text(_c_source("main_mcu.c"))
    table = [{"index": i, "name": n.name, "op": n.op, "kernel": kern.get(i, f"es_{n.op}"),
              "macs": int(graph.node_macs(n))} for i, n in enumerate(graph.nodes)]
    return arena, bufs, 2 * ncol if uses_col else 0, table


def export_c_project(graph: CnnGraph, q: QuantCnn, plan: PatchPlan, profile: Any, out_dir: str | Path, *,
                     test_input: np.ndarray | None = None, compile_arm: bool = True,
                     kernels: str = "s8") -> CProject:
    """Write (and, when arm-none-eabi-gcc exists and ``compile_arm``, cross-compile) the C project.

    ``kernels``: "s8" (CMSIS-NN-style SIMD kernels, default) or "plain" (plain C loops); same outputs.
    Raises BudgetError when the weights exceed ``profile.flash`` or the arena + im2col scratch exceed
    ``profile.ram``."""
    out = Path(out_dir)
    wbytes = check_flash(graph, q, profile)
    if plan.itemsize != 1:
        raise BudgetError("MCU export needs an int8 (itemsize 1) patch plan")
    if test_input is None:
        test_input = np.zeros(int(np.prod(graph.shapes[graph.input])), np.int8)
    arena, bufs, scratch, table = generate(graph, q, plan, out, test_input, kernels)
    if profile.ram and arena + scratch > profile.ram:
        shutil.rmtree(out, ignore_errors=True)
        raise BudgetError(f"{graph.name}: the activation arena needs {arena} B ({arena / 1024:.1f} KiB; plan peak "
                          f"{plan.peak_bytes} B; + {scratch} B im2col scratch) but target {profile.name} has {profile.ram} B "
                          f"({profile.ram / 1024:.0f} KiB) of SRAM; lower --activation-budget or the resolution")
    (out / "Makefile").write_text(makefile(profile.cpu))
    proj = CProject(out, wbytes, arena, plan.peak_bytes, profile.name,
                    buffers=[{"name": b.name, "offset": b.offset, "size": b.size} for b in bufs],
                    kernels=kernels, scratch_bytes=scratch, nodes=table)
    if compile_arm and shutil.which("arm-none-eabi-gcc") and profile.kind == "mcu":
        elf, sizes = build_arm(out, profile.cpu)
        proj.arm_sizes = sizes
        proj.arm_elf = str(elf.name)
        flash_used = sizes.get(".text", 0) + sizes.get(".rodata", 0) + sizes.get(".data", 0) + \
            sizes.get(".ARM.exidx", 0)
        ram_used = sizes.get(".data", 0) + sizes.get(".bss", 0)
        if profile.flash and flash_used > profile.flash:
            raise BudgetError(f"{graph.name}: linked image needs {flash_used} B of flash (.text+.rodata+.data), "
                              f"target {profile.name} has {profile.flash} B")
        if profile.ram and ram_used > profile.ram:
            raise BudgetError(f"{graph.name}: linked image needs {ram_used} B of SRAM (.data+.bss), target "
                              f"{profile.name} has {profile.ram} B")
    (out / "model_info.json").write_text(json.dumps(proj.to_dict(), indent=1))
    return proj


