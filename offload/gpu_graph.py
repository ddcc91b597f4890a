"""The GPU decode step (one token) as a CUDA graph: a run of consecutive GPU-resident layers is recorded once into
static buffers and replayed every token with one ``cudaGraphLaunch`` instead of ~20 CuPy launches per layer from
Python (the launch-bound cost docs/GPU.md measured: 0.43 ms per layer on the H200).

Per layer the graph holds 6 kernels where every matrix is int8 (:mod:`edgespool.offload.gpu_fused`: RMSNorm fused
into the q/k/v and the gate/up GEMVs, the activation into the latter, an attention split over all warps) and
otherwise 12: RMSNorm, the q / k / v GEMVs (bias fused), one RoPE + KV-cache write kernel
and one decode-attention kernel that both read the token's position from device memory (so the same graph serves
every position), the o-projection GEMV with the residual add fused, RMSNorm, gate / up GEMVs, the gated activation,
the down GEMV with the residual add fused. Per token only the hidden state (when it comes from a CPU layer), the
position (4 bytes) and the token's RoPE row cross the link.

A run is recorded only when every layer in it is resident (not streamed), shares one RoPE, has no q/k norm or qkv
clipping, and all its matrices are in a fused GEMV scheme (int8, int4 g32, f16); otherwise the eager path of
:mod:`edgespool.offload.gpu_layers` computes it. Exactness: the same float32 kernels as the eager path (attention
sums in a different order), checked against CPU-only runs by tests/test_gpu_split.py.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..runtime.bundle.config import ModelConfig
from ..runtime.bundle.names import layer_prefix
from .gpu_fused import FusedDecodeKernels, fused_layer_ok, xs_floats

_SRC = r"""
#define NEG_INF __int_as_float(0xff800000)
__device__ __forceinline__ float wsum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}
__device__ __forceinline__ float wmax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}
// one token: blocks 0..nh-1 rotate q's heads in place; blocks nh..nh+nkv-1 rotate k's heads and write k, v into
// the caches [nkv, C, D] at the position *pos (HF rotate_half pairs (j, j + D/2)); rope = 0: no rotation
extern "C" __global__ void rope_kv(float* q, float* k, const float* v, const float* cs, const float* sn,
                                   const int* pos, float* Kc, float* Vc, int nh, int nkv, int C, int D, int rope) {
  int half = D >> 1, b = blockIdx.x, p = *pos;
  float* x = b < nh ? q + (long long)b * D : k + (long long)(b - nh) * D;
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    float a = x[j], c = x[j + half];
    if (rope) {
      x[j] = a * cs[j] - c * sn[j];
      x[j + half] = c * cs[j + half] + a * sn[j + half];
    }
  }
  if (b < nh) return;
  __syncthreads();
  int h = b - nh;
  long long o = ((long long)h * C + p) * D;
  for (int j = threadIdx.x; j < D; j += blockDim.x) {
    Kc[o + j] = x[j];
    Vc[o + j] = v[(long long)h * D + j];
  }
}
// one token's causal GQA attention over keys max(0, p - window + 1) .. p (p = *pos); one block per query head;
// dynamic shared memory: q [D] then scores [C]
extern "C" __global__ void decode_attn(const float* q, const float* Kc, const float* Vc, float* o, const int* pos,
                                       int nh, int nkv, int C, int D, int window, float scale, float softcap) {
  extern __shared__ float sh[];
  __shared__ float red[32];
  float* qs = sh;
  float* sc = sh + D;
  int h = blockIdx.x, kvh = h / (nh / nkv), p = *pos;
  int start = window > 0 ? max(0, p - window + 1) : 0;
  int S = p + 1 - start;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = q[(long long)h * D + d];
  __syncthreads();
  const float* K = Kc + ((long long)kvh * C + start) * D;
  for (int s = warp; s < S; s += nw) {
    const float* kr = K + (long long)s * D;
    float a = 0.f;
    for (int d = lane; d < D; d += 32) a += qs[d] * kr[d];
    a = wsum(a);
    if (lane == 0) {
      float v = a * scale;
      if (softcap > 0.f) v = tanhf(v / softcap) * softcap;
      sc[s] = v;
    }
  }
  __syncthreads();
  float m = NEG_INF;
  for (int s = threadIdx.x; s < S; s += blockDim.x) m = fmaxf(m, sc[s]);
  m = wmax(m);
  if (lane == 0) red[warp] = m;
  __syncthreads();
  if (threadIdx.x == 0) { float v = NEG_INF; for (int i = 0; i < nw; ++i) v = fmaxf(v, red[i]); red[0] = v; }
  __syncthreads();
  m = red[0];
  __syncthreads();
  float sum = 0.f;
  for (int s = threadIdx.x; s < S; s += blockDim.x) { float e = __expf(sc[s] - m); sc[s] = e; sum += e; }
  sum = wsum(sum);
  if (lane == 0) red[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) { float v = 0.f; for (int i = 0; i < nw; ++i) v += red[i]; red[0] = v; }
  __syncthreads();
  float inv = 1.f / red[0];
  const float* V = Vc + ((long long)kvh * C + start) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < S; ++s) acc += sc[s] * V[(long long)s * D + d];
    o[(long long)h * D + d] = acc * inv;
  }
}
"""

SHARED_LIMIT = 48 << 10  # dynamic shared memory a kernel may take without opting in
FUSED = ("int8", "int4", "f16")


def rope_key(cfg: ModelConfig, i: int) -> str:
    """Layers with equal keys share the engine's RoPE tables (``Rope`` objects are keyed the same way)."""
    return repr(cfg.rope_of(i))


def graph_runs(cfg: ModelConfig, ok: list[bool]) -> dict[int, int]:
    """{first layer: end (exclusive)} of the maximal runs of consecutive layers with ``ok[i]`` that share one RoPE:
    what one recorded graph covers (decode here, prompt chunks in offload/gpu_prefill_graph.py)."""
    runs: dict[int, int] = {}
    i = 0
    while i < cfg.num_layers:
        if not ok[i]:
            i += 1
            continue
        j = i + 1
        while j < cfg.num_layers and ok[j] and rope_key(cfg, j) == rope_key(cfg, i):
            j += 1
        runs[i] = j
        i = j
    return runs


class DecodeGraphs:
    """Static buffers and one recorded CUDA graph per run of graph-eligible GPU layers (module docstring).
    ``run_end(i)`` says whether a graph run starts at layer ``i`` (and where it ends); ``launch`` replays it."""

    def __init__(self, cp: Any, ops: Any, cfg: ModelConfig, stream: Any, max_context: int,
                 eligible: list[bool], fused: bool = True) -> None:
        self.cp, self.ops, self.cfg, self.stream = cp, ops, cfg, stream
        self.C = int(max_context)
        c = cfg
        self.module = cp.RawModule(code=_SRC, options=("-std=c++17",))
        self.k_rope = self.module.get_function("rope_kv")
        self.k_attn = self.module.get_function("decode_attn")
        self.shared = 4 * (c.head_dim + self.C)
        ok = self.shared <= SHARED_LIMIT and c.num_heads % c.num_kv_heads == 0
        H, q, kv, inter = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size
        f32 = cp.float32
        self.x, self.h = cp.zeros((1, H), f32), cp.zeros((1, H), f32)
        self.q, self.k, self.v, self.o = (cp.zeros((1, q), f32), cp.zeros((1, kv), f32), cp.zeros((1, kv), f32),
                                          cp.zeros((1, q), f32))
        self.g, self.u, self.a = (cp.zeros((1, inter), f32) for _ in range(3))
        self.pos = cp.zeros((1,), cp.int32)
        self.cos, self.sin = cp.ones((c.head_dim,), f32), cp.zeros((c.head_dim,), f32)
        self._runs = graph_runs(c, [ok and e for e in eligible])
        self._graphs: dict[int, Any] = {}
        # the fused kernels (offload/gpu_fused.py): 6 launches a layer instead of 12 where the layer allows
        self.fused = FusedDecodeKernels(cp) if fused and self._runs else None
        self.fused_attn = self.fused is not None and c.head_dim <= 256 and \
            FusedDecodeKernels.attn_shared_bytes(c.head_dim, self.C) <= SHARED_LIMIT
        self.fused_layers = 0  # layers recorded with the fused kernels (the benchmark reports it)
        self.capture = True  # False: launch the same kernels without recording a graph
        self.launches = 0

    def run_end(self, i: int) -> int | None:
        """The end (exclusive) of the graph run starting at layer ``i``, or None."""
        return self._runs.get(i)

    def launch(self, i: int, x: Any, pos: int, rope: tuple[np.ndarray, np.ndarray] | None,
               weights: dict[str, Any], kv: dict[int, tuple[Any, Any]]) -> tuple[Any, int]:
        """Replay (recording it the first time) the run starting at ``i`` on hidden state ``x`` ``[1, H]`` (numpy
        or device) at position ``pos``; returns the static output buffer and the bytes copied host-to-device."""
        cp, s = self.cp, self.stream
        h2d = 0
        with s:
            if isinstance(x, np.ndarray):
                self.x.set(np.ascontiguousarray(x, np.float32).reshape(1, -1), stream=s)
                h2d += x.nbytes
            elif x is not self.x:
                self.x[...] = x
            self.pos.set(np.array([pos], np.int32), stream=s)
            h2d += 4
            if rope is not None:
                self.cos.set(np.ascontiguousarray(rope[0][-1], np.float32), stream=s)
                self.sin.set(np.ascontiguousarray(rope[1][-1], np.float32), stream=s)
                h2d += 2 * rope[0][-1].nbytes
            g = self._graphs.get(i)
            if g is None and self.capture:
                mode = getattr(cp.cuda.runtime, "streamCaptureModeThreadLocal", None)
                s.begin_capture(mode) if mode is not None else s.begin_capture()
                try:
                    self._record(i, rope is not None, weights, kv)
                finally:
                    g = s.end_capture()
                self._graphs[i] = g
            if g is not None:
                g.launch(stream=s)
            else:
                self._record(i, rope is not None, weights, kv)
        self.launches += 1
        return self.x, h2d

    def _gemv(self, x: Any, w: Any, bias: Any, y: Any, resid: bool, mult: float = 1.0) -> None:
        self.ops.gemv_into(x, w, bias, y, resid, mult)

    def _record(self, i0: int, rope: bool, weights: dict[str, Any], kv: dict[int, tuple[Any, Any]]) -> None:
        """Launch the kernels of the run starting at ``i0`` (recorded when the stream is capturing)."""
        c, ops = self.cfg, self.ops
        D, nh, nkv = c.head_dim, c.num_heads, c.num_kv_heads
        mult = 1.0 if c.residual_multiplier == 1 else float(c.residual_multiplier)
        scale = D ** -0.5 if c.attention_scale is None else float(c.attention_scale)
        softcap = float(c.attn_logit_softcap or 0.0)
        fz = self.fused
        for i in range(i0, self._runs[i0]):
            p = layer_prefix(i)
            w = weights[f"layers.{i}"]
            vec = (lambda n: None if w.get(p + n) is None else w[p + n].data)  # noqa: E731
            Kc, Vc = kv[i]
            H = int(self.x.shape[-1])
            whole = fz is not None and fused_layer_ok(w, p, c.hidden_act) and 4 * xs_floats(H) <= SHARED_LIMIT
            if whole:
                fz.norm_qkv(self.x, w[p + "attn_norm"].data, c.rms_norm_eps,
                            [(w[p + "wq"], vec("bq"), self.q), (w[p + "wk"], vec("bk"), self.k),
                             (w[p + "wv"], vec("bv"), self.v)])
                self.fused_layers += 1
            else:
                ops.rmsnorm_into(self.x, w[p + "attn_norm"].data, self.h, c.rms_norm_eps)
                self._gemv(self.h, w[p + "wq"], vec("bq"), self.q, False)
                self._gemv(self.h, w[p + "wk"], vec("bk"), self.k, False)
                self._gemv(self.h, w[p + "wv"], vec("bv"), self.v, False)
            self.k_rope((nh + nkv,), (max(32, min(256, D // 2)),),
                        (self.q, self.k, self.v, self.cos, self.sin, self.pos, Kc, Vc, np.int32(nh),
                         np.int32(nkv), np.int32(self.C), np.int32(D), np.int32(1 if rope else 0)))
            if self.fused_attn:
                assert fz is not None
                fz.attention(self.q, Kc, Vc, self.o, self.pos, nh, nkv, self.C, D, c.window_of(i) or 0, scale,
                             softcap)
            else:
                self.k_attn((nh,), (128,),
                            (self.q, Kc, Vc, self.o, self.pos, np.int32(nh), np.int32(nkv), np.int32(self.C),
                             np.int32(D), np.int32(c.window_of(i) or 0), np.float32(scale), np.float32(softcap)),
                            shared_mem=self.shared)
            self._gemv(self.o, w[p + "wo"], None, self.x, True, mult)
            if whole:
                assert fz is not None
                fz.norm_gateup(self.x, w[p + "ffn_norm"].data, c.rms_norm_eps, w[p + "ffn.gate"], w[p + "ffn.up"],
                               self.a, c.hidden_act)
            else:
                ops.rmsnorm_into(self.x, w[p + "ffn_norm"].data, self.h, c.rms_norm_eps)
                self._gemv(self.h, w[p + "ffn.gate"], None, self.g, False)
                self._gemv(self.h, w[p + "ffn.up"], None, self.u, False)
                ops.act_mul_into(self.g, self.u, self.a, c.hidden_act)
            self._gemv(self.a, w[p + "ffn.down"], None, self.x, True, mult)


def layer_graph_ok(cfg: ModelConfig, w: dict[str, Any], i: int) -> bool:
    """True when resident layer ``i`` (GPU tensors ``w``) can be recorded: fused-GEMV matrices, no q/k norm or
    qkv clipping (the eager path computes those)."""
    if cfg.qk_norm or cfg.clip_qkv is not None:
        return False
    p = layer_prefix(i)
    for n in ("wq", "wk", "wv", "wo", "ffn.gate", "ffn.up", "ffn.down"):
        t = w.get(p + n)
        if t is None or t.scheme not in FUSED:
            return False
        K = int(t.shape[1])
        if K % (32 if t.scheme == "int4" else 16):
            return False
    return True
