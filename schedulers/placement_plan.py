"""CPU/GPU placement under a GPU memory budget: ``plan_placement(groups, link, gpu_budget) -> Placement``.

A pure function, like :func:`edgespool.schedulers.memory_plan.plan_memory`: from per-group costs (bytes on each
side, measured compute time per decode token on the CPU and on the GPU), a link model (host-to-device bandwidth,
per-call overhead, unified memory or not) and a byte budget it decides, for each streaming group (a layer, the
head, ...), one of

* ``gpu``: resident in the GPU arena for the whole run (uploaded once; on a unified-memory board, placed once in
  memory both processors address, 0 bytes copied);
* ``stream``: computed on the GPU, its weights copied host-to-device every token into one of two staging slots of
  the arena while the group before it computes (overlap: the step costs ``max(copy, compute)``);
* ``cpu``: computed on the CPU from host memory (which, under a host memory budget, streams from storage as
  without a GPU: :mod:`edgespool.schedulers.memory_plan` plans those bytes).

Cost model (printed with the plan): ``cpu = cpu_s``, ``gpu = gpu_s``, ``stream = max(bytes / bandwidth + overhead,
gpu_s)``, plus ``activation bytes / bandwidth + the measured cost of a crossing`` at each boundary where the activations cross between a
CPU group and a GPU group (once per boundary: consecutive GPU groups keep them on the device). Choice: resident
groups by time saved per byte (greedy knapsack, ties in compute order so the GPU layers are contiguous; the
same greedy with each non-layer group such as the head left out, or put first, is evaluated too and the plan
with the least predicted time per token, boundaries included, wins), the rest CPU or stream, whichever is faster; the plan with staging slots is kept only when it predicts less time than the
plan without. The GPU arena is one allocation of :attr:`Placement.arena_bytes` (resident weights + their KV cache
+ staging + activation workspace), never larger than the budget.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

from ..errors import BudgetError
from ..targets.profiles import TargetProfile
from ..units import fmt_bytes

GPU, STREAM, CPU = "gpu", "stream", "cpu"
ARENA_ALIGN = 256  # bytes: every arena piece starts on a 256-byte boundary (cudaMalloc's own alignment)


def arena_align(n: int) -> int:
    """``n`` rounded up to :data:`ARENA_ALIGN`."""
    return (int(n) + ARENA_ALIGN - 1) // ARENA_ALIGN * ARENA_ALIGN


@dataclass(frozen=True)
class GroupCost:
    """One streaming group as the planner sees it.

    ``kind``: layer, attention, shared_expert, expert, head (or kv). ``host_bytes``: its bytes as stored (what a
    stream copies); ``gpu_bytes``: what it occupies in the arena when resident (weights as the GPU kernels read
    them, plus ``kv_bytes``, the group's KV cache, which stays on the GPU whenever the group computes there);
    ``cpu_s`` / ``gpu_s``: measured compute time per decode token on each side; ``gpu_ok`` False (with
    ``why_not``) when the GPU cannot compute it; ``calls``: expected uses per token (routed experts: < 1)."""

    name: str
    kind: str
    host_bytes: int
    gpu_bytes: int
    cpu_s: float
    gpu_s: float
    kv_bytes: int = 0
    gpu_ok: bool = True
    why_not: str = ""
    calls: float = 1.0
    streamable: bool = True  # False: resident or CPU only (e.g. the head)
    stream_gpu_s: float = 0.0  # GPU time when streamed (the eager path, not a CUDA graph); 0: ``gpu_s``


@dataclass(frozen=True)
class LinkModel:
    """The CPU<->GPU link: host-to-device bytes/s (pinned), the per-call overhead (one launch or copy) in seconds,
    whether CPU and GPU share one DRAM (Jetson: nothing is copied), and where each figure came from."""

    h2d_bytes_s: float
    call_overhead_s: float
    unified: bool = False
    source: str = ""
    boundary_s: float = 0.0  # measured fixed cost of one CPU<->GPU crossing (0: ``call_overhead_s``)

    def cross_s(self, nbytes: int) -> float:
        """One crossing of ``nbytes`` of activations: the copy plus the measured fixed cost of a crossing (a GPU
        run's graph launch, the hidden state's copy call and the host-side sync; ``call_overhead_s`` when not
        measured). 0 on unified memory."""
        if self.unified:
            return 0.0
        return nbytes / self.h2d_bytes_s + (self.boundary_s or self.call_overhead_s)

    def copy_s(self, nbytes: int) -> float:
        """Time to move ``nbytes`` host-to-device (0 on unified memory: nothing moves)."""
        if self.unified or nbytes <= 0:
            return 0.0
        return nbytes / self.h2d_bytes_s + self.call_overhead_s


def link_for_profile(profile: TargetProfile, h2d_bytes_s: float, call_overhead_s: float, source: str) -> LinkModel:
    """The link of ``profile``'s GPU: unified (one shared DRAM, nothing copied) for the Jetson profiles, else the
    given bandwidth and overhead. TargetError-free: a profile without a GPU gets the given figures."""
    unified = bool(profile.gpu is not None and profile.gpu.shared_memory)
    what = f"{profile.name}: one shared DRAM (targets/profiles.py)" if unified else source
    return LinkModel(h2d_bytes_s, call_overhead_s, unified, what)


@dataclass(frozen=True)
class GroupPlacement:
    """Where one group runs, its predicted time per token there, and why."""

    name: str
    kind: str
    where: str  # gpu | stream | cpu
    gpu_bytes: int  # arena bytes it holds (resident) or 0
    h2d_bytes: int  # bytes copied host-to-device per token for it
    predicted_s: float
    cpu_s: float
    gpu_s: float
    why: str


@dataclass(frozen=True)
class Placement:
    """The plan: every group's place, the arena's pieces, the predicted time per decode token."""

    gpu_budget_bytes: int
    arena_bytes: int
    resident_bytes: int  # weights + KV of the resident groups
    staging_bytes: int  # two slots of the largest streamed group (0 without streaming)
    workspace_bytes: int  # activations, dequantisation scratch
    groups: tuple[GroupPlacement, ...]
    boundaries: int  # CPU<->GPU crossings of the activations per token
    boundary_bytes: int  # bytes per crossing
    predicted_token_s: float
    cpu_only_token_s: float
    link: LinkModel
    notes: tuple[str, ...] = field(default=())
    prefill_chunk: int = 0  # prompt tokens per forward pass the workspace was sized for (0: not chosen here)

    @property
    def h2d_bytes_per_token(self) -> int:
        """Weight bytes plus activation bytes copied host-to-device per decode token (0 on unified memory)."""
        if self.link.unified:
            return 0
        return sum(g.h2d_bytes for g in self.groups) + self.boundary_bytes * ((self.boundaries + 1) // 2)

    def where(self, name: str) -> str:
        """``gpu``, ``stream`` or ``cpu`` for group ``name`` (KeyError for a group the plan does not know)."""
        for g in self.groups:
            if g.name == name:
                return g.where
        raise KeyError(name)

    def on_gpu(self) -> list[str]:
        """Groups computed on the GPU (resident or streamed), in compute order."""
        return [g.name for g in self.groups if g.where != CPU]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["h2d_bytes_per_token"] = self.h2d_bytes_per_token
        return d

    def summary(self) -> str:
        """The plan for people: the cost model, then one line per run of groups with the same place."""
        lk = self.link
        bw = "unified memory (no copies)" if lk.unified else f"{lk.h2d_bytes_s / 1e9:.1f} GB/s host-to-device"
        chunk = f" for {self.prefill_chunk}-token prompt chunks" if self.prefill_chunk else ""
        lines = [f"GPU placement: budget {fmt_bytes(self.gpu_budget_bytes)}, arena {fmt_bytes(self.arena_bytes)} "
                 f"(resident {fmt_bytes(self.resident_bytes)}, staging {fmt_bytes(self.staging_bytes)}, workspace "
                 f"{fmt_bytes(self.workspace_bytes)}{chunk})",
                 f"  cost model: {bw}, {lk.call_overhead_s * 1e6:.0f} us per call, "
                 f"{(lk.boundary_s or lk.call_overhead_s) * 1e6:.0f} us per crossing ({lk.source}); "
                 "stream = max(copy, gpu), boundary = activations over the link",
                 f"  predicted {self.predicted_token_s * 1e3:.2f} ms/token vs {self.cpu_only_token_s * 1e3:.2f} "
                 f"CPU-only; {self.boundaries} boundary crossing(s) x {fmt_bytes(self.boundary_bytes)}; "
                 f"{fmt_bytes(self.h2d_bytes_per_token)} host-to-device per token"]
        run: list[GroupPlacement] = []

        def flush() -> None:
            if not run:
                return
            g0 = run[0]
            names = g0.name if len(run) == 1 else f"{g0.name} .. {run[-1].name} ({len(run)})"
            per = sum(g.predicted_s for g in run) / len(run)
            lines.append(f"  {g0.where:6s} {names}: {per * 1e3:.3f} ms each (cpu {g0.cpu_s * 1e3:.3f}, gpu "
                         f"{g0.gpu_s * 1e3:.3f}); {g0.why}")
            run.clear()

        for g in self.groups:
            if run and (g.where != run[0].where or g.kind != run[0].kind or g.why != run[0].why):
                flush()
            run.append(g)
        flush()
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _sgpu(g: GroupCost) -> float:
    return (g.stream_gpu_s or g.gpu_s) * g.calls


def _stream_s(g: GroupCost, link: LinkModel) -> float:
    """A streamed group's time when nothing before it hides its copy."""
    return max(link.copy_s(g.host_bytes), _sgpu(g) / g.calls) * g.calls


def _timeline(groups: Sequence[GroupCost], where: dict[str, str], link: LinkModel,
              boundary_bytes: int) -> tuple[float, int, dict[str, float]]:
    """Predicted seconds per token, CPU<->GPU crossings (embedding lookup on the CPU first) and each group's
    share of the time. Streamed groups follow the executor: the first one's copy starts with the step, each
    next one's when the one before it starts computing (copies run one after another on the copy stream), and
    a streamed group computes once its copy is in: CPU or resident groups between two streamed ones hide the
    second one's copy."""
    streamed = [g for g in groups if where[g.name] == STREAM]
    nxt = {a.name: b for a, b in zip(streamed, streamed[1:])}
    ready: dict[str, float] = {}
    if streamed:
        ready[streamed[0].name] = link.copy_s(streamed[0].host_bytes) * streamed[0].calls
    t, crossings, side, share = 0.0, 0, CPU, {}
    for g in groups:
        w = where[g.name]
        s = CPU if w == CPU else GPU
        t0 = t
        if s != side:
            crossings += 1
            side = s
            t += link.cross_s(boundary_bytes)
        if w == CPU:
            t += g.cpu_s * g.calls
        elif w == GPU:
            t += g.gpu_s * g.calls
        else:
            start = max(t, ready[g.name])
            n = nxt.get(g.name)
            if n is not None:
                ready[n.name] = max(start, ready[g.name]) + link.copy_s(n.host_bytes) * n.calls
            t = start + _sgpu(g)
        share[g.name] = t - t0
    if side != CPU:
        crossings += 1  # logits back to the host
        t += link.cross_s(boundary_bytes)
    return t, crossings, share


def _evaluate(groups: Sequence[GroupCost], where: dict[str, str], link: LinkModel,
              boundary_bytes: int) -> tuple[float, int]:
    """Predicted seconds per token and the number of CPU<->GPU crossings (:func:`_timeline`)."""
    t, crossings, _ = _timeline(groups, where, link, boundary_bytes)
    return t, crossings


def _interleavings(groups: Sequence[GroupCost], where: dict[str, str]) -> list[dict[str, str]]:
    """``where`` as is, and with only every k-th of its streamed groups kept streamed (the others on the CPU,
    whose compute then hides the next streamed group's copy): k = 2, 3 at each phase, and 2 of every 3."""
    streamed = [g.name for g in groups if where[g.name] == STREAM]
    out = [where]
    for k in (2, 3):
        for phase in range(k):
            for keep_one in ((True, False) if k == 3 else (True,)):
                w = dict(where)
                for j, n in enumerate(streamed):
                    if (j % k == phase) != keep_one:
                        w[n] = CPU
                out.append(w)
    return out


def _fill(groups: Sequence[GroupCost], room: int, link: LinkModel, allow_stream: bool,
          skip: str | None = None, first: str | None = None) -> dict[str, str]:
    """Resident groups by time saved per byte until ``room`` is used; the rest CPU or (``allow_stream``) streamed.
    ``skip``: a group kept off the GPU; ``first``: a group placed before the others (the planner's alternatives
    to the greedy order, for a group as large as several layers: the head)."""
    def alt(g: GroupCost) -> float:
        c = g.cpu_s * g.calls
        return min(c, _stream_s(g, link)) if allow_stream and g.gpu_ok and g.streamable else c

    where = {g.name: CPU for g in groups}
    order = sorted((i for i, g in enumerate(groups) if g.gpu_ok and g.name != skip),
                   key=lambda i: (groups[i].name != first,
                                  -(alt(groups[i]) - groups[i].gpu_s * groups[i].calls)
                                  / max(1, groups[i].gpu_bytes), i))
    for i in order:
        g = groups[i]
        if alt(g) - g.gpu_s * g.calls <= 0:
            continue
        need = arena_align(g.gpu_bytes)
        if need <= room:
            where[g.name] = GPU
            room -= need
    if allow_stream:
        for g in groups:
            if where[g.name] == CPU and g.gpu_ok and g.streamable and _stream_s(g, link) < g.cpu_s * g.calls:
                where[g.name] = STREAM
    return where


def plan_placement(groups: Sequence[GroupCost], link: LinkModel, gpu_budget_bytes: int, *,
                   workspace_bytes: int, boundary_bytes: int, stream_kv_bytes: int = 0,
                   interleave: bool = False) -> Placement:
    """Place ``groups`` (in compute order) under ``gpu_budget_bytes`` (see the module docstring).

    ``workspace_bytes``: the arena's fixed part (activations of the largest step, dequantisation scratch);
    ``boundary_bytes``: the activations that cross at a CPU<->GPU boundary (one token's hidden state);
    ``stream_kv_bytes``: KV bytes per streamed group (its KV cache stays on the GPU). A budget below the workspace
    plus the smallest group raises :class:`~edgespool.errors.BudgetError` naming that minimum.
    ``interleave``: also try CPU groups between streamed ones to hide their copies (off by default: on the H200
    the predicted overlap did not happen -- streamed layers stayed copy-bound, 1.0 ms each, and the 25% cap ran
    at 25.8 tok/s against 39.7 with every non-resident layer streamed; docs/GPU.md)."""
    groups = list(groups)
    ws = arena_align(workspace_bytes)
    capable = [g for g in groups if g.gpu_ok]
    smallest = min((arena_align(g.gpu_bytes) for g in capable), default=0)
    minimum = ws + smallest
    if gpu_budget_bytes < minimum:
        raise BudgetError(f"GPU budget {fmt_bytes(gpu_budget_bytes)} is below the GPU minimum {fmt_bytes(minimum)} "
                          f"(workspace {fmt_bytes(ws)} + the smallest group {fmt_bytes(smallest)}); raise "
                          "--gpu-budget or run without it (CPU only)")
    cpu_only = {g.name: CPU for g in groups}
    cpu_s, _ = _evaluate(groups, cpu_only, link, boundary_bytes)
    # CPU-only is a candidate too: crossings that cost more than the GPU saves keep everything on the CPU
    candidates: list[tuple[float, int, dict[str, str], int]] = [(*_evaluate(groups, cpu_only, link,
                                                                            boundary_bytes), cpu_only, 0)]
    # the greedy order by time saved per byte, and the same with each non-layer group (the head) left out or put
    # first: a head worth more per byte than a layer can still lose to the layers its bytes would hold
    big = [g.name for g in capable if g.kind not in ("layer", "expert")]
    variants = [(None, None)] + [(n, None) for n in big] + [(None, n) for n in big]
    for skip, first in variants:
        where = _fill(groups, gpu_budget_bytes - ws, link, allow_stream=False, skip=skip, first=first)
        candidates.append((*_evaluate(groups, where, link, boundary_bytes), where, 0))
    streamable = [g for g in capable if g.streamable]
    if not link.unified and streamable:
        # staging: two slots of the largest group that could stream (copy of one overlaps compute of the other)
        slot = arena_align(max(g.gpu_bytes - g.kv_bytes for g in streamable))
        room = gpu_budget_bytes - ws - 2 * slot
        kv = arena_align(stream_kv_bytes)
        n_cand = sum(1 for g in streamable if _stream_s(g, link) < g.cpu_s * g.calls)
        # a streamed group's KV cache stays on the GPU: try reserving it for all, half, a quarter ... of them
        tries = {n_cand >> k for k in range(max(1, n_cand.bit_length()))} - {0}
        for n_res in sorted(tries):
            if room - n_res * kv < 0:
                continue
            for skip, first in variants:
                filled = _fill(groups, room - n_res * kv, link, allow_stream=True, skip=skip, first=first)
                for where in (_interleavings(groups, filled) if interleave else [filled]):
                    streamed = [g for g in groups if where[g.name] == STREAM]
                    for g in streamed[n_res:]:
                        where[g.name] = CPU  # beyond the reserved KV room: computed on the CPU
                    if streamed:
                        candidates.append((*_evaluate(groups, where, link, boundary_bytes), where,
                                           2 * slot + kv * min(n_res, len(streamed))))
    t, crossings, where, staging = min(candidates, key=lambda c: c[0])
    _, _, share = _timeline(groups, where, link, boundary_bytes)
    any_stream = any(w == STREAM for w in where.values())
    placed = []
    for g in groups:
        w = where[g.name]
        if w == GPU:
            why = ("placed once in shared DRAM, 0 bytes copied" if link.unified
                   else f"resident: saves {(min(g.cpu_s, _stream_s(g, link)) - g.gpu_s) * 1e3:.3f} ms/token")
            pred, gb, h2d = g.gpu_s * g.calls, arena_align(g.gpu_bytes), 0
        elif w == STREAM:
            why = (f"streamed: copy {link.copy_s(g.host_bytes) * 1e3:.3f} ms overlaps compute (eager "
                   f"{_sgpu(g) * 1e3:.3f} ms)")
            pred, gb, h2d = share[g.name], 0, int(g.host_bytes * g.calls)
        else:
            why = (f"cpu: {g.why_not}" if not g.gpu_ok else
                   "cpu: between streamed groups, hides their copies" if any_stream and g.streamable and
                   _stream_s(g, link) < g.cpu_s * g.calls else
                   "cpu: no GPU room left (or its bytes save more as other groups)" if g.cpu_s > g.gpu_s else "cpu: faster on the CPU")
            pred, gb, h2d = g.cpu_s * g.calls, 0, 0
        placed.append(GroupPlacement(g.name, g.kind, w, gb, h2d, pred, g.cpu_s, g.gpu_s, why))
    resident = sum(p.gpu_bytes for p in placed)
    arena = ws + resident + staging
    assert arena <= gpu_budget_bytes, (arena, gpu_budget_bytes)
    notes = []
    if link.unified:
        notes.append("unified memory: GPU groups are read once into memory both processors address; the GPU "
                     "budget is part of the board's one DRAM (the host memory budget counts it too)")
    return Placement(gpu_budget_bytes, arena, resident, staging, ws, tuple(placed), crossings, int(boundary_bytes),
                     t, cpu_s, link, tuple(notes))


def plan_with_parents(groups: Sequence[GroupCost], link: LinkModel, gpu_budget_bytes: int,
                      parents: dict[str, str], **kw: Any) -> Placement:
    """:func:`plan_placement` for groups that are only worth the GPU together with their parent group
    (``parents``: child -> parent; a routed expert and its MoE layer: a layer on the CPU computes its experts
    there too). A child placed on the GPU under a CPU parent is made CPU-only (``why_not`` says so) and the rest
    re-planned, until no such child is left (each round removes at least one, so it ends)."""
    groups = list(groups)
    while True:
        pl = plan_placement(groups, link, gpu_budget_bytes, **kw)
        where = {g.name: g.where for g in pl.groups}
        orphans = {n for n, par in parents.items() if where.get(n, CPU) != CPU and where.get(par, CPU) == CPU}
        if not orphans:
            return pl
        groups = [replace(g, gpu_ok=False, why_not=f"its MoE layer {parents[g.name]} runs on the CPU, which "
                          "computes its experts") if g.name in orphans else g for g in groups]


def plan_prefill_chunk(groups: Sequence[GroupCost], link: LinkModel, gpu_budget_bytes: int,
                       parents: dict[str, str], chunks: Sequence[int], workspace_of: Any,
                       gain: float = 0.02, **kw: Any) -> Placement:
    """:func:`plan_with_parents` for each prompt chunk size in ``chunks`` (largest first), the workspace of each
    from ``workspace_of(chunk)`` (a prompt chunk's activations are the arena's largest variable part): the largest
    chunk's plan unless a smaller chunk's leaves room for groups that make decode at least ``gain`` faster, or the
    largest does not fit at all (a budget below its GPU minimum). Prefill then runs in that many tokens per pass.
    Raises the smallest chunk's BudgetError when none fits (its GPU minimum is the true one)."""
    best: Placement | None = None
    last_error: BudgetError | None = None
    for chunk in sorted({int(c) for c in chunks}, reverse=True):
        try:
            pl = replace(plan_with_parents(groups, link, gpu_budget_bytes, parents,
                                           workspace_bytes=int(workspace_of(chunk)), **kw), prefill_chunk=chunk)
        except BudgetError as e:
            last_error = e  # chunks come largest first: the last error names the smallest minimum
            continue
        if best is None or pl.predicted_token_s < best.predicted_token_s * (1.0 - gain):
            best = pl
    if best is None:
        assert last_error is not None
        raise last_error
    return best
