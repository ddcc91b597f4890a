"""TVM definitions of the GQA attention kernels (decode and prefill), per target, reading the KV cache in place.

The kernels compute what :func:`edgespool.kernels.attention.attention` computes (causal GQA, optional sliding
window, float32, numerically stable softmax) on the KV cache's own layout: ``K``/``V`` ``[n_kv, S, D]`` are views
of ``KVCache.k[layer]`` (row stride ``max_len * D``, passed as a symbolic stride: no copy), query head ``h`` reads
KV head ``h // (n_heads // n_kv)``. ``S`` (keys) and ``T`` (query rows) are symbolic, so one compiled library
serves every context length up to the cache size. One library per (head_dim, n_heads, n_kv_heads, target) holds
two functions:

* ``<name>_decode(q [1, nh, D], K, V, o [1, nh, D], scale)``: one query that sees every given key (the caller
  passes the visible range: a sliding window is a start offset into the cache).
* ``<name>_prefill(q [T, nh, D], K, V, o [T, nh, D], scale, past, window)``: query row ``t`` sits at key index
  ``past + t`` and sees keys ``s`` with ``s <= past + t`` and, when ``window > 0``, ``s > past + t - window``.

CPU algorithm (both): one pass over the visible keys in blocks of 16 with an online softmax (running max ``m`` and
sum ``l`` per head; the output accumulator is rescaled only when a block raises the max), so no score buffer of
the symbolic length is needed. Per block and query head of the KV group: ``vec``-lane partial dot products (the
target's float32 SIMD width: AVX-512 16, AVX2 8, NEON 4), reduced to one vector of ``vec`` key scores by a
transposing halving sum (shuffles, no horizontal reductions per key); the exp is a vectorised Cephes polynomial
(16 keys at once); keys past the end of the range are clamped loads, masked to probability 0; the K/V rows two
blocks ahead are software-prefetched. Everything lives in registers/stack (no workspace, no thread pool: one
thread). CUDA: one thread per (query row, query head) running the same loop with scalar dots (unoptimised).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import OptionError, TargetError
from .tvm_build import _tvm, cuda_arch, cuda_compile, vector_lanes

_NEG = -3.0e38  # running-max start: finite, so exp(m_old - m_new) never sees inf - inf
# CPU: prefetch the K/V rows this many 16-key blocks ahead. Measured (znver4, 20 layers of a 2048-position cache
# read in turn, i.e. from DRAM, 16 heads / 4 KV heads / D 64): 376-388 us per call without, 255-273 with 2 blocks,
# 255-277 with 4 (numpy reference 294-320); in cache the prefetches cost nothing measurable (122-136 us).
PREFETCH_BLOCKS = 2


@dataclass(frozen=True)
class AttentionSpec:
    """One compiled attention library: head size, query heads and KV heads (GQA when ``n_heads > n_kv_heads``)."""

    head_dim: int
    n_heads: int
    n_kv_heads: int

    def __post_init__(self) -> None:
        if self.head_dim <= 0 or self.n_heads <= 0 or self.n_kv_heads <= 0:
            raise OptionError(f"attention kernel shape D={self.head_dim} nh={self.n_heads} nkv={self.n_kv_heads} "
                              "must be positive")
        if self.n_heads % self.n_kv_heads:
            raise OptionError(f"attention kernel: n_heads {self.n_heads} is not a multiple of n_kv_heads "
                              f"{self.n_kv_heads}")

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def name(self) -> str:
        return f"attn_d{self.head_dim}_h{self.n_heads}_kv{self.n_kv_heads}"

    @property
    def functions(self) -> tuple[str, str]:
        """Names of the (decode, prefill) functions inside the library."""
        return self.name + "_decode", self.name + "_prefill"

    def to_dict(self) -> dict[str, Any]:
        return {"op": "attention", "head_dim": self.head_dim, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> AttentionSpec:
        if d.get("op") != "attention":
            raise OptionError(f"not an attention kernel spec: {d}")
        return AttentionSpec(int(d["head_dim"]), int(d["n_heads"]), int(d["n_kv_heads"]))


def _lanes(spec: AttentionSpec, target: dict[str, Any]) -> int:
    """SIMD width used for the dot products: the target's float32 lanes, halved until it divides ``head_dim``."""
    vec = vector_lanes(target) if target.get("kind") == "llvm" else 1
    while spec.head_dim % vec:
        vec //= 2
    return max(vec, 1)


def _primfuncs(spec: AttentionSpec, vec: int, cuda: bool = False):
    """(decode, prefill) TVMScript functions of ``spec`` with dot products ``vec`` lanes wide."""
    from tvm.script import tirx as T

    D, NH, NKV, G = spec.head_dim, spec.n_heads, spec.n_kv_heads, spec.group
    NC = D // vec  # vector chunks of one head row
    PF = 0 if cuda else PREFETCH_BLOCKS
    LINES = max(1, D * 4 // 64)
    NG = G if not cuda else 1  # query heads per loop: the KV group on CPU, one per thread on CUDA
    KB = 16 if not cuda else 1  # keys per block: scores, masks and exp run on KB-lane vectors

    def R(i, n):  # n lanes starting at i (n == 1: a scalar index)
        return T.Ramp(i, 1, n) if n > 1 else i

    def bc(x, n=vec):
        return T.Broadcast(x, n) if n > 1 else x

    def lane(v, k, n, width=1):  # lane k of an n-lane vector, broadcast to `width` lanes
        return v if n == 1 else T.Shuffle([v], [k] * width)

    def fold(v, n, op):
        """Reduce an n-lane vector to a scalar by halving (shuffles in registers, no stores)."""
        while n > 1:
            h = n // 2
            v = op(T.Shuffle([v], list(range(h))), T.Shuffle([v], list(range(h, n))))
            n = h
        return v

    def ty(base, n):
        return base if n == 1 else f"{base}x{n}"

    def vexp(x):
        """exp of KB lanes of values <= 0 (Cephes expf polynomial, ~1 ulp; below -87 gives ~1e-38, masked)."""
        xc = T.max(x, bc(T.float32(-87.0), KB))
        n = T.floor(xc * bc(T.float32(1.44269504088896341), KB) + bc(T.float32(0.5), KB))
        r = xc - n * bc(T.float32(0.693359375), KB) + n * bc(T.float32(2.12194440e-4), KB)
        p = bc(T.float32(1.9875691500e-4), KB)
        for cf in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
            p = p * r + bc(T.float32(cf), KB)
        p = p * r * r + r + bc(T.float32(1.0), KB)
        two_n = T.reinterpret(ty("float32", KB), T.shift_left(T.Cast(ty("int32", KB), n) + bc(T.int32(127), KB),
                                                               bc(T.int32(23), KB)))
        return p * two_n

    def vadd(a, b):
        return a + b

    def vmax(a, b):
        return T.max(a, b)

    # transposing reduction of vec partial-sum vectors (one per key) into one vector of vec key scores: level l
    # adds pairs of vectors holding 2^l keys x (vec >> l) lanes each into one of 2^(l+1) keys x (vec >> (l+1))
    # lanes (two shuffles + one add per pair); rows of `red`: level 0 at 0..vec-1, level l+1 after level l
    if vec > 16:
        raise TargetError(f"attention kernels support at most 16 float32 lanes, got {vec}")
    OFF = [0]
    for lvl in range(max(vec.bit_length() - 1, 0)):
        OFF.append(OFF[-1] + (vec >> lvl))
    LV = []
    for lvl in range(4):
        kp, w = 1 << lvl, vec >> lvl
        if w < 2:
            LV.append(None)
            continue
        ia = [i * w + x for i in range(kp) for x in range(w // 2)]
        ib = [i * w + w // 2 + x for i in range(kp) for x in range(w // 2)]
        LV.append((OFF[lvl], OFF[lvl + 1], vec >> (lvl + 1), ia + [vec + i for i in ia], ib + [vec + i for i in ib]))

    @T.macro
    def level(red, lvl, spec):
        for i in T.unroll(spec[2]):
            red[spec[1] + i, R(0, vec)] = T.Shuffle(
                [red[spec[0] + 2 * i, R(0, vec)], red[spec[0] + 2 * i + 1, R(0, vec)]], spec[3]) + T.Shuffle(
                [red[spec[0] + 2 * i, R(0, vec)], red[spec[0] + 2 * i + 1, R(0, vec)]], spec[4])

    @T.macro
    def attend(q, K, V, o, scale, t, hk, h0, lo, hi):
        """Online softmax over keys lo..hi-1 of KV head hk for query heads h0..h0+NG-1 (its group), query row t;
        keys in blocks of KB (the last block's extra lanes read the last key again and are masked out)."""
        qs = T.alloc_buffer((NG, D), "float32", scope="local")
        acc = T.alloc_buffer((NG, D), "float32", scope="local")
        m = T.alloc_buffer((NG,), "float32", scope="local")
        lsum = T.alloc_buffer((NG,), "float32", scope="local")
        sc = T.alloc_buffer((NG, KB), "float32", scope="local")
        red = T.alloc_buffer((2 * vec, vec), "float32", scope="local")
        for j in T.unroll(NG):
            m[j] = T.float32(_NEG)
            lsum[j] = T.float32(0)
            for c in T.unroll(NC):
                qs[j, R(c * vec, vec)] = q[t, h0 + j, R(c * vec, vec)] * bc(scale)
                acc[j, R(c * vec, vec)] = bc(T.float32(0))
        for b in range((hi - lo + KB - 1) // KB):
            if PF > 0:  # software prefetch of the K/V rows PF blocks ahead (cold caches: DRAM latency)
                for k in T.unroll(KB):
                    for ln in T.unroll(LINES):
                        T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                            K[hk, T.min(lo + (b + PF) * KB + k, hi - 1), ln * 16]), 0, 3, 1))
                        T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                            V[hk, T.min(lo + (b + PF) * KB + k, hi - 1), ln * 16]), 0, 3, 1))
            if vec >= 2:  # vec keys' partial vectors -> one vector of vec scores (transposing halving sums)
                for j in T.unroll(NG):
                    for grp in T.unroll(KB // vec):
                        for k in T.unroll(vec):
                            red[k, R(0, vec)] = qs[j, R(0, vec)] * K[
                                hk, T.min(lo + b * KB + grp * vec + k, hi - 1), R(0, vec)]
                            for c in T.unroll(1, NC):
                                red[k, R(0, vec)] = red[k, R(0, vec)] + qs[j, R(c * vec, vec)] * K[
                                    hk, T.min(lo + b * KB + grp * vec + k, hi - 1), R(c * vec, vec)]
                        level(red, 0, LV[0])
                        if vec >= 4:
                            level(red, 1, LV[1])
                        if vec >= 8:
                            level(red, 2, LV[2])
                        if vec >= 16:
                            level(red, 3, LV[3])
                        sc[j, R(grp * vec, vec)] = red[OFF[-1], R(0, vec)]
            else:
                for k in T.unroll(KB):
                    for j in T.unroll(NG):
                        pv = qs[j, R(0, vec)] * K[hk, T.min(lo + b * KB + k, hi - 1), R(0, vec)]
                        for c in T.unroll(1, NC):
                            pv = pv + qs[j, R(c * vec, vec)] * K[hk, T.min(lo + b * KB + k, hi - 1), R(c * vec, vec)]
                        sc[j, k] = fold(pv, vec, vadd)
            for j in T.unroll(NG):
                sv = T.Select(R(lo + b * KB, KB) < bc(hi, KB), sc[j, R(0, KB)], bc(T.float32(_NEG), KB))
                bm = fold(sv, KB, vmax)
                if bm > m[j]:
                    corr = T.exp(m[j] - bm)
                    lsum[j] = lsum[j] * corr
                    for c in T.unroll(NC):
                        acc[j, R(c * vec, vec)] = acc[j, R(c * vec, vec)] * bc(corr)
                    m[j] = bm
                p = T.Select(R(lo + b * KB, KB) < bc(hi, KB), vexp(sv - bc(m[j], KB)), bc(T.float32(0), KB))
                lsum[j] = lsum[j] + fold(p, KB, vadd)
                for k in T.unroll(KB):
                    for c in T.unroll(NC):
                        acc[j, R(c * vec, vec)] = acc[j, R(c * vec, vec)] + lane(p, k, KB, vec) * V[
                            hk, T.min(lo + b * KB + k, hi - 1), R(c * vec, vec)]
        for j in T.unroll(NG):
            inv = T.float32(1) / lsum[j]
            for c in T.unroll(NC):
                o[t, h0 + j, R(c * vec, vec)] = acc[j, R(c * vec, vec)] * bc(inv)

    # CPU: one loop step per KV head (the whole query group, in registers), one thread, buffers 4-byte aligned (any
    # numpy address); CUDA: one thread per (query row, query head), TVM's default alignment
    align = -1 if cuda else 4

    def heads():
        return T.thread_binding(NH, thread="threadIdx.x") if cuda else T.serial(NKV)

    def kv_head(u):  # the KV head of loop step u
        return u // G if cuda else u

    def first_head(u):  # the first query head of loop step u
        return u if cuda else u * G

    def rows(n):
        return T.thread_binding(n, thread="blockIdx.x") if cuda else T.serial(n)

    @T.prim_func
    def decode(q_h: T.handle, k_h: T.handle, v_h: T.handle, o_h: T.handle, scale: T.float32):
        T.func_attr({"tirx.noalias": True})
        S = T.int32()
        sk = T.int32()
        sv = T.int32()
        q = T.match_buffer(q_h, (1, NH, D), "float32", align=align)
        K = T.match_buffer(k_h, (NKV, S, D), "float32", strides=(sk, D, 1), align=align)
        V = T.match_buffer(v_h, (NKV, S, D), "float32", strides=(sv, D, 1), align=align)
        o = T.match_buffer(o_h, (1, NH, D), "float32", align=align)
        for u in heads():
            attend(q, K, V, o, scale, 0, kv_head(u), first_head(u), 0, S)

    @T.prim_func
    def prefill(q_h: T.handle, k_h: T.handle, v_h: T.handle, o_h: T.handle, scale: T.float32,
                past: T.int32, window: T.int32):
        T.func_attr({"tirx.noalias": True})
        S = T.int32()
        sk = T.int32()
        sv = T.int32()
        Tq = T.int32()
        q = T.match_buffer(q_h, (Tq, NH, D), "float32", align=align)
        K = T.match_buffer(k_h, (NKV, S, D), "float32", strides=(sk, D, 1), align=align)
        V = T.match_buffer(v_h, (NKV, S, D), "float32", strides=(sv, D, 1), align=align)
        o = T.match_buffer(o_h, (Tq, NH, D), "float32", align=align)
        for t in rows(Tq):
            for u in heads():
                attend(q, K, V, o, scale, t, kv_head(u), first_head(u),
                       T.if_then_else(window > 0, T.max(0, past + t + 1 - window), 0), T.min(S, past + t + 1))

    return decode, prefill


def schedule(spec: AttentionSpec, target: dict[str, Any]):
    """IRModule with ``spec``'s decode and prefill functions for ``target`` (a TVM target dict)."""
    tvm = _tvm()
    kind = target.get("kind")
    if kind not in ("llvm", "cuda"):
        raise TargetError(f"no attention kernel for TVM target kind {kind!r}; supported: llvm, cuda")
    dec, pre = _primfuncs(spec, _lanes(spec, target), cuda=kind == "cuda")
    nd, npf = spec.functions
    return tvm.IRModule({nd: dec.with_attr("global_symbol", nd), npf: pre.with_attr("global_symbol", npf)})


def build(spec: AttentionSpec, target: dict[str, Any]):
    """Compile ``spec`` for ``target`` into one TVM executable holding ``<name>_decode`` and ``<name>_prefill``."""
    tvm = _tvm()
    return tvm.compile(schedule(spec, target), target=tvm.target.Target(target))


def cuda_artifacts(spec: AttentionSpec, target: dict[str, Any], fatbin: bool = True
                   ) -> tuple[str, bytes, dict[str, Any]]:
    """CUDA C source of ``spec``'s two kernels for ``target`` (``{"kind": "cuda", "arch": "sm_XX"}``), their fatbin
    (empty when nvcc cannot target ``arch``), and a launch record per kernel: name, parameters in order, block
    (``n_heads`` threads) and grid (1 for decode, T blocks for prefill)."""
    arch = cuda_arch(target)
    src, found, binary, error = cuda_compile(schedule(spec, target), target, fatbin)
    kernels = {}
    for kname, plist in found:
        form = "decode" if "decode" in kname else "prefill"
        kernels[form] = {"kernel": kname, "params": plist, "block": [spec.n_heads, 1, 1],
                         "grid": [1, 1, 1] if form == "decode" else ["T", 1, 1]}
    if set(kernels) != {"decode", "prefill"}:
        raise TargetError(f"expected decode and prefill CUDA kernels for {spec.name}, found {sorted(kernels)}")
    launch: dict[str, Any] = {"kernels": kernels, "arch": arch}
    if error is not None:
        launch["fatbin_error"] = error
    return src, binary, launch
