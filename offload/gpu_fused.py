"""Fused one-token decode kernels for the CUDA-graph path (:mod:`edgespool.offload.gpu_graph`): a layer in 6
kernels instead of 12, and an attention that keeps every warp busy.

Per layer: ``norm_gemv3_i8`` (RMSNorm computed by every block into shared memory, then the q / k / v rows of int8
per-row-scaled matrices, biases fused), the RoPE + KV-write kernel, ``decode_attn_w`` (scores, softmax and the
value sum split over all warps of the block: the old kernel summed values one position after another per thread),
the o GEMV with the residual add, ``norm_gateup_i8`` (RMSNorm, gate and up rows from one read of the normalised
input, the gated activation written directly), the down GEMV with the residual add.

The one-token decode step on the H200 was latency-bound (0.10 ms a layer for 47 MB of int8 weights, ~12 us of
HBM time): fewer launches and no serial loop over positions are what this module buys. Float32 accumulation as
the eager kernels; sums run in a different order (tests compare against the numpy references and the CPU run).
"""
from __future__ import annotations

from typing import Any

import numpy as np

ACT_CODES = {"silu": 0, "relu": 1, "gelu_tanh": 2}
WARPS = 8  # warps per block of the fused kernels
MAX_HEAD_DIM = 256  # decode_attn_w keeps D / 32 values per lane in registers

_SRC = r"""
#define NEG_INF __int_as_float(0xff800000)
__device__ __forceinline__ float fsum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}
__device__ __forceinline__ float fmax32(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}
__device__ __forceinline__ float act_of(float x, int act) {
  if (act == 0) return x * (0.5f * (1.f + tanhf(0.5f * x)));
  if (act == 1) return fmaxf(x, 0.f);
  return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}
// the normalised input lives in shared memory in a lane-major order: element k = 512 j + 16 l + 4 c + e (lane l
// reads the 16 weight bytes 512 j + 16 l .. + 15 with one 16-byte load) sits at (4 j + c) * 128 + 4 l + e, so the
// warp's four float4 reads of a 512-byte step are each 512 contiguous bytes (no bank conflicts); K % 16 == 0,
// shared size xs_floats(K) = K rounded up to 512
__device__ __forceinline__ int xs_at(int k) {
  return (((k >> 9) * 4 + ((k >> 2) & 3)) << 7) + (((k & 511) >> 4) << 2) + (k & 3);
}
// every block: xs[xs_at(k)] = x[k] * rsqrt(mean(x^2) + eps) * nw[k] (the eager rmsnorm's expression)
__device__ void load_normed(const float* __restrict__ x, const float* __restrict__ nw, float eps, int K,
                            float* xs, float* red) {
  float s = 0.f;
  for (int k = threadIdx.x; k < K; k += blockDim.x) { float v = x[k]; s += v * v; }
  s = fsum(s);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    v = fsum(v);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  float inv = 1.f / sqrtf(red[0] / (float)K + eps);
  for (int k = threadIdx.x; k < K; k += blockDim.x) xs[xs_at(k)] = x[k] * inv * nw[k];
  __syncthreads();
}
// 16 int8 weights (one 16-byte load) times their 16 inputs of the lane-major xs at step base (512 j + 4 lane)
__device__ __forceinline__ float dot16(int4 raw, const float* xs) {
  const signed char* q = reinterpret_cast<const signed char*>(&raw);
  float a = 0.f;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    float4 v = *reinterpret_cast<const float4*>(xs + 128 * c);
    a += v.x * q[4 * c] + v.y * q[4 * c + 1] + v.z * q[4 * c + 2] + v.w * q[4 * c + 3];
  }
  return a;
}
// one warp's dot of int8 row w [K] with the lane-major xs: lane reads 16 bytes at 16 * lane + 512 j (coalesced
// 512-byte steps); K % 16 == 0, w 16-byte aligned
__device__ __forceinline__ float dot_i8(const signed char* __restrict__ w, const float* xs, int K, int lane) {
  float a = 0.f;
#pragma unroll 4
  for (int k = 16 * lane; k < K; k += 512)
    a += dot16(__ldg(reinterpret_cast<const int4*>(w + k)), xs + (k >> 9) * 512 + 4 * lane);
  return fsum(a);
}
// y_m[r] = scale_m[r] * dot(rmsnorm(x), w_m[r]) + bias_m[r] for the rows of up to three matrices (q, k, v)
extern "C" __global__ void norm_gemv3_i8(const float* x, const float* nw, float eps, int K,
    const signed char* w0, const float* s0, const float* b0, float* y0, int n0,
    const signed char* w1, const float* s1, const float* b1, float* y1, int n1,
    const signed char* w2, const float* s2, const float* b2, float* y2, int n2) {
  extern __shared__ float xs[];
  __shared__ float red[32];
  load_normed(x, nw, eps, K, xs, red);
  int lane = threadIdx.x & 31, nwp = blockDim.x >> 5;
  int total = n0 + n1 + n2;
  for (int r = blockIdx.x * nwp + (threadIdx.x >> 5); r < total; r += gridDim.x * nwp) {
    const signed char* w; const float* s; const float* b; float* y; int row;
    if (r < n0) { w = w0; s = s0; b = b0; y = y0; row = r; }
    else if (r < n0 + n1) { w = w1; s = s1; b = b1; y = y1; row = r - n0; }
    else { w = w2; s = s2; b = b2; y = y2; row = r - n0 - n1; }
    float a = dot_i8(w + (long long)row * K, xs, K, lane);
    if (lane == 0) y[row] = a * s[row] + (b ? b[row] : 0.f);
  }
}
// h[r] = act(sg[r] * dot(rmsnorm(x), wg[r])) * (su[r] * dot(rmsnorm(x), wu[r])): the gated FFN's first half
extern "C" __global__ void norm_gateup_i8(const float* x, const float* nw, float eps, int K,
    const signed char* wg, const float* sg, const signed char* wu, const float* su, float* h, int N, int act) {
  extern __shared__ float xs[];
  __shared__ float red[32];
  load_normed(x, nw, eps, K, xs, red);
  int lane = threadIdx.x & 31, nwp = blockDim.x >> 5;
  for (int r = blockIdx.x * nwp + (threadIdx.x >> 5); r < N; r += gridDim.x * nwp) {
    const signed char* g = wg + (long long)r * K;
    const signed char* u = wu + (long long)r * K;
    float a = 0.f, b = 0.f;
#pragma unroll 4
    for (int k = 16 * lane; k < K; k += 512) {
      int4 qg = __ldg(reinterpret_cast<const int4*>(g + k));
      int4 qu = __ldg(reinterpret_cast<const int4*>(u + k));
      const float* xk = xs + (k >> 9) * 512 + 4 * lane;
      a += dot16(qg, xk);
      b += dot16(qu, xk);
    }
    a = fsum(a);
    b = fsum(b);
    if (lane == 0) h[r] = act_of(a * sg[r] + 0.f, act) * (b * su[r] + 0.f);
  }
}
// one token's causal GQA attention over keys max(0, p - window + 1) .. p (p = *pos), one block per query head;
// warps split the positions for the scores (4 at a time) and for the value sum; shared: q [D], scores [C],
// per-warp partial outputs [warps, D]
extern "C" __global__ void decode_attn_w(const float* q, const float* Kc, const float* Vc, float* o, const int* pos,
                                         int nh, int nkv, int C, int D, int window, float scale, float softcap) {
  extern __shared__ float sh[];
  __shared__ float red[32];
  int nw = blockDim.x >> 5, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* qs = sh;
  float* sc = sh + D;
  float* part = sc + C;
  int h = blockIdx.x, kvh = h / (nh / nkv), p = *pos;
  int start = window > 0 ? max(0, p - window + 1) : 0;
  int S = p + 1 - start;
  int nd = (D + 31) >> 5;
  for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = q[(long long)h * D + d];
  __syncthreads();
  const float* K = Kc + ((long long)kvh * C + start) * D;
  for (int s0 = 4 * warp; s0 < S; s0 += 4 * nw) {
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    for (int d = lane; d < D; d += 32) {
      float qd = qs[d];
      a0 += qd * K[(long long)s0 * D + d];
      if (s0 + 1 < S) a1 += qd * K[(long long)(s0 + 1) * D + d];
      if (s0 + 2 < S) a2 += qd * K[(long long)(s0 + 2) * D + d];
      if (s0 + 3 < S) a3 += qd * K[(long long)(s0 + 3) * D + d];
    }
    a0 = fsum(a0); a1 = fsum(a1); a2 = fsum(a2); a3 = fsum(a3);
    if (lane < 4 && s0 + lane < S) {
      float v = (lane == 0 ? a0 : lane == 1 ? a1 : lane == 2 ? a2 : a3) * scale;
      if (softcap > 0.f) v = tanhf(v / softcap) * softcap;
      sc[s0 + lane] = v;
    }
  }
  __syncthreads();
  float m = NEG_INF;
  for (int s = threadIdx.x; s < S; s += blockDim.x) m = fmaxf(m, sc[s]);
  m = fmax32(m);
  if (lane == 0) red[warp] = m;
  __syncthreads();
  if (threadIdx.x == 0) { float v = NEG_INF; for (int i = 0; i < nw; ++i) v = fmaxf(v, red[i]); red[0] = v; }
  __syncthreads();
  m = red[0];
  __syncthreads();
  float sum = 0.f;
  for (int s = threadIdx.x; s < S; s += blockDim.x) { float e = __expf(sc[s] - m); sc[s] = e; sum += e; }
  sum = fsum(sum);
  if (lane == 0) red[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) { float v = 0.f; for (int i = 0; i < nw; ++i) v += red[i]; red[0] = v; }
  __syncthreads();
  float inv = 1.f / red[0];
  const float* V = Vc + ((long long)kvh * C + start) * D;
  float acc[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] = 0.f;
#pragma unroll 2
  for (int s = warp; s < S; s += nw) {
    float e = sc[s];
    const float* vr = V + (long long)s * D;
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (j < nd && lane + 32 * j < D) acc[j] += e * vr[lane + 32 * j];
  }
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (j < nd && lane + 32 * j < D) part[warp * D + lane + 32 * j] = acc[j];
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float t = 0.f;
    for (int w = 0; w < nw; ++w) t += part[w * D + d];
    o[(long long)h * D + d] = t * inv;
  }
}
"""


class FusedDecodeKernels:
    """The compiled fused kernels (NVRTC, once per process) and their launches; no allocation (graph-safe)."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self.module = cp.RawModule(code=_SRC, options=("-std=c++17",))
        f = self.module.get_function
        self.k_qkv, self.k_gateup, self.k_attn = f("norm_gemv3_i8"), f("norm_gateup_i8"), f("decode_attn_w")
        sms = int(cp.cuda.Device().attributes.get("MultiProcessorCount", 132))
        self.target_blocks = 2 * sms

    def _grid(self, rows: int) -> tuple[int]:
        """Blocks for ``rows`` rows: one row a warp while that keeps the grid within ~8 blocks an SM (the loads
        in flight are what a one-token GEMV is short of), more rows a warp beyond (each block normalises the input
        into shared memory once)."""
        per_warp = max(1, -(-rows // (WARPS * 4 * self.target_blocks)))
        return ((rows + WARPS * per_warp - 1) // (WARPS * per_warp),)

    def norm_qkv(self, x: Any, norm_w: Any, eps: float, mats: list[tuple[Any, Any, Any, Any]]) -> None:
        """``y = scale * (rmsnorm(x) @ W.T) + bias`` for up to three int8 ``(GpuTensor w, bias or None, y)``
        triples sharing ``x`` ``[1, K]`` (fewer than three: the rest are empty)."""
        K = int(x.shape[-1])
        args: list[Any] = []
        rows = 0
        for w, b, y in mats:
            n = int(w.shape[0])
            args += [w.data, w.scale, b, y, np.int32(n)]
            rows += n
        while len(args) < 15:
            args += [None, None, None, None, np.int32(0)]
        self.k_qkv(self._grid(rows), (32 * WARPS,), (x, norm_w, np.float32(eps), np.int32(K), *args),
                   shared_mem=4 * xs_floats(K))

    def norm_gateup(self, x: Any, norm_w: Any, eps: float, gate: Any, up: Any, h: Any, act: str) -> None:
        """``h = act(rmsnorm(x) @ G.T) * (rmsnorm(x) @ U.T)`` for int8 gate / up matrices."""
        K, N = int(x.shape[-1]), int(gate.shape[0])
        self.k_gateup(self._grid(N), (32 * WARPS,),
                      (x, norm_w, np.float32(eps), np.int32(K), gate.data, gate.scale, up.data, up.scale, h,
                       np.int32(N), np.int32(ACT_CODES[act])), shared_mem=4 * xs_floats(K))

    @staticmethod
    def attn_shared_bytes(head_dim: int, context: int) -> int:
        """Dynamic shared memory of :meth:`attention`: q, the scores, the warps' partial outputs."""
        return 4 * (head_dim + context + WARPS * head_dim)

    def attention(self, q: Any, Kc: Any, Vc: Any, o: Any, pos: Any, nh: int, nkv: int, C: int, D: int,
                  window: int, scale: float, softcap: float) -> None:
        """One token's attention of ``nh`` query heads over the caches ``[nkv, C, D]`` up to position ``*pos``."""
        self.k_attn((nh,), (32 * WARPS,),
                    (q, Kc, Vc, o, pos, np.int32(nh), np.int32(nkv), np.int32(C), np.int32(D), np.int32(window),
                     np.float32(scale), np.float32(softcap)), shared_mem=self.attn_shared_bytes(D, C))


def xs_floats(K: int) -> int:
    """Floats of the fused GEMVs' shared normalised input for ``K`` inputs (lane-major order, whole 512-steps)."""
    return -(-K // 512) * 512


def fused_layer_ok(w: dict[str, Any], prefix: str, act: str) -> bool:
    """True when the fused kernels compute this layer: all seven matrices int8 with K % 16 == 0 (16-byte loads)
    and a known act."""
    if act not in ACT_CODES:
        return False
    for n in ("wq", "wk", "wv", "wo", "ffn.gate", "ffn.up", "ffn.down"):
        t = w.get(prefix + n)
        if t is None or t.scheme != "int8" or int(t.shape[1]) % 16:
            return False
    return True
