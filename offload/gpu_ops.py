"""The decoder's operations on a CUDA GPU through CuPy (no torch): weight upload, fused dequantising GEMV kernels
for int8 / int4 (g32) / f16 weights, cuBLAS for batched (prefill) rows (int8 on the tensor cores in split-f16 form,
other schemes after dequantisation into a bounded scratch, f32 as they are) and for the prefill attention, RMSNorm,
RoPE, masked softmax for GQA attention, and the gated FFN activation. Every function takes and returns cupy arrays;
float32 accumulation throughout. cuBLAS is called through :mod:`edgespool.offload.gpu_blas` (handles of our own),
so a prompt chunk's products can be recorded into a CUDA graph (offload/gpu_prefill_graph.py).

Only :func:`gpu_status` may be called without CuPy: it says why the GPU cannot be used (no CuPy, no device)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..kernels.quant import QTensor
from .gpu_blas import OP_N, OP_T, Blas

GEMV_MAX_ROWS = 8  # rows (tokens) the fused GEMV kernels take; more rows go through dequantise + cuBLAS
DEQUANT_CHUNK_BYTES = 32 << 20  # float32 scratch for one dequantised row block in batched products
NATIVE_SCHEMES = ("f32", "f16", "int8", "int4")  # stored as they are on the GPU; others dequantised to f32
ACT_CODES = {"silu": 0, "relu": 1, "gelu_tanh": 2}
ATTN_SCORE_BYTES = 16 << 20  # attention scores of one call at most (a prefill chunk's queries go in blocks)
GPU_PREFILL_CHUNK = 256  # prompt tokens per GPU forward pass unless the planner chose fewer
SPLIT_K_MIN = 4096  # one-token int8 rows at least this long take the split-K GEMV (a block a row)
SK_WARPS = 4  # warps a row in the split-K GEMV (4: a one-token down projection of 1536 rows is one wave of blocks)

_SRC = r"""
#include <cuda_fp16.h>
#define NEG_INF __int_as_float(0xff800000)
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}
// y[t, row] = (resid ? y[t, row] : 0) + mult * (scale[row] * dot(x[t], w[row]) + bias[row]); one warp per row
template <typename Load>
__device__ void gemv_body(const float* __restrict__ x, const float* __restrict__ scale,
                          const float* __restrict__ bias, float* __restrict__ y, int T, int K, int N,
                          int resid, float mult, Load load, int step) {
  int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= N) return;
  float acc[8];
#pragma unroll
  for (int t = 0; t < 8; ++t) acc[t] = 0.f;
#pragma unroll 4
  for (int k = lane * step; k < K; k += 32 * step) load(row, k, x, K, T, acc);
#pragma unroll
  for (int t = 0; t < 8; ++t) {
    if (t < T) {
      float s = warp_sum(acc[t]);
      if (lane == 0) {
        float v = s * (scale ? scale[row] : 1.f) + (bias ? bias[row] : 0.f);
        long long o = (long long)t * N + row;
        y[o] = (resid ? y[o] : 0.f) + mult * v;
      }
    }
  }
}
struct LoadI8 {
  const signed char* w;
  __device__ void operator()(int row, int k, const float* x, int K, int T, float* acc) const {
    int4 raw = *reinterpret_cast<const int4*>(w + (long long)row * K + k);
    const signed char* q = reinterpret_cast<const signed char*>(&raw);
#pragma unroll
    for (int t = 0; t < 8; ++t) {
      if (t < T) {
        const float4* xv = reinterpret_cast<const float4*>(x + (long long)t * K + k);
        float a = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float4 v = xv[j];
          a += v.x * q[4 * j] + v.y * q[4 * j + 1] + v.z * q[4 * j + 2] + v.w * q[4 * j + 3];
        }
        acc[t] += a;
      }
    }
  }
};
struct LoadF16 {
  const __half* w;
  __device__ void operator()(int row, int k, const float* x, int K, int T, float* acc) const {
    int4 raw = *reinterpret_cast<const int4*>(w + (long long)row * K + k);
    const __half* h = reinterpret_cast<const __half*>(&raw);
#pragma unroll
    for (int t = 0; t < 8; ++t) {
      if (t < T) {
        const float4* xv = reinterpret_cast<const float4*>(x + (long long)t * K + k);
        float4 a = xv[0], b = xv[1];
        acc[t] += a.x * __half2float(h[0]) + a.y * __half2float(h[1]) + a.z * __half2float(h[2])
                + a.w * __half2float(h[3]) + b.x * __half2float(h[4]) + b.y * __half2float(h[5])
                + b.z * __half2float(h[6]) + b.w * __half2float(h[7]);
      }
    }
  }
};
// int4, groups of 32: 16 bytes per group, byte j = value j (low nibble) | value j + 16 (high), f16 scale per group
struct LoadI4 {
  const unsigned char* w; const __half* s;
  __device__ void operator()(int row, int k, const float* x, int K, int T, float* acc) const {
    int g = k >> 5;
    int4 raw = *reinterpret_cast<const int4*>(w + (long long)row * (K >> 1) + g * 16);
    const unsigned char* b = reinterpret_cast<const unsigned char*>(&raw);
    float d = __half2float(s[(long long)row * (K >> 5) + g]);
#pragma unroll
    for (int t = 0; t < 8; ++t) {
      if (t < T) {
        const float* xv = x + (long long)t * K + k;
        float a = 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j)
          a += xv[j] * (float)((int)(b[j] & 15) - 8) + xv[j + 16] * (float)((int)(b[j] >> 4) - 8);
        acc[t] += a * d;
      }
    }
  }
};
extern "C" __global__ void gemv_i8(const float* x, const signed char* w, const float* scale, const float* bias,
                                   float* y, int T, int K, int N, int resid, float mult) {
  gemv_body(x, scale, bias, y, T, K, N, resid, mult, LoadI8{w}, 16);
}
// one token, int8, long rows (the down projection): a block of SK_WARPS warps per row splits K (16 bytes a lane a
// step, every warp its own slice), partial sums reduced in shared memory; many more loads in flight than one warp
// a row. y[row] = (resid ? y[row] : 0) + mult * (scale[row] * dot(x, w[row]) + bias[row]); K % 16 == 0
extern "C" __global__ void gemv1_i8_sk(const float* __restrict__ x, const signed char* __restrict__ w,
                                       const float* __restrict__ scale, const float* __restrict__ bias,
                                       float* __restrict__ y, int K, int N, int resid, float mult) {
  __shared__ float part[32];
  int row = blockIdx.x;
  const signed char* wr = w + (long long)row * K;
  float a = 0.f;
#pragma unroll 2
  for (int k = 16 * threadIdx.x; k < K; k += 16 * blockDim.x) {
    int4 raw = __ldg(reinterpret_cast<const int4*>(wr + k));
    const signed char* q = reinterpret_cast<const signed char*>(&raw);
    const float4* xv = reinterpret_cast<const float4*>(x + k);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float4 v = __ldg(xv + j);
      a += v.x * q[4 * j] + v.y * q[4 * j + 1] + v.z * q[4 * j + 2] + v.w * q[4 * j + 3];
    }
  }
  a = warp_sum(a);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = a;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.f;
    v = warp_sum(v);
    if (threadIdx.x == 0) {
      float r = v * scale[row] + (bias ? bias[row] : 0.f);
      y[row] = (resid ? y[row] : 0.f) + mult * r;
    }
  }
}
extern "C" __global__ void gemv_f16(const float* x, const __half* w, const float* bias, float* y, int T, int K,
                                    int N, int resid, float mult) {
  gemv_body(x, (const float*)0, bias, y, T, K, N, resid, mult, LoadF16{w}, 8);
}
extern "C" __global__ void gemv_i4(const float* x, const unsigned char* w, const __half* s, const float* bias,
                                   float* y, int T, int K, int N, int resid, float mult) {
  gemv_body(x, (const float*)0, bias, y, T, K, N, resid, mult, LoadI4{w, s}, 32);
}
extern "C" __global__ void dequant_i8(const signed char* w, const float* scale, float* out, int K, long long n) {
  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i < n) out[i] = (float)w[i] * scale[i / K];
}
extern "C" __global__ void dequant_i4(const unsigned char* w, const __half* s, float* out, int K, long long n) {
  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= n) return;
  long long r = i / K; int k = (int)(i % K); int g = k >> 5; int j = k & 31;
  unsigned char b = w[r * (K >> 1) + g * 16 + (j & 15)];
  int q = (j < 16 ? (b & 15) : (b >> 4)) - 8;
  out[i] = (float)q * __half2float(s[r * (K >> 5) + g]);
}
// Batched (prefill) products on the tensor cores, float32-exact: x [T, K] f32 -> hi, lo [T, K] f16 with
// x[t] = (hi[t] + lo[t]) * rs[t], rs[t] a power of two putting the row's largest |x| in [2^13, 2^14) (no f16
// overflow; hi + lo carry 22 of float32's 24 bits); one block per row. Two f16 GEMMs with float32 accumulation
// (hi, then lo added with beta = 1) on weights exact in f16 (int8 values) and gemm_epilogue's
// rs * scale restore a float32 SGEMM's accuracy at tensor-core speed.
extern "C" __global__ void split_f16(const float* x, __half* hi, __half* lo, float* rs, int K) {
  __shared__ float part[32];
  const float* xr = x + (long long)blockIdx.x * K;
  float m = 0.f;
  for (int k = threadIdx.x; k < K; k += blockDim.x) m = fmaxf(m, fabsf(xr[k]));
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    float v = 0.f;
    for (int i = 0; i < (blockDim.x >> 5); ++i) v = fmaxf(v, part[i]);
    part[0] = v;
  }
  __syncthreads();
  m = part[0];
  int e = 0;
  if (m > 0.f && isfinite(m)) frexpf(m, &e);  // m = f * 2^e, f in [0.5, 1)
  e = max(e, -100);
  float up = ldexpf(1.f, 14 - e);
  if (threadIdx.x == 0) rs[blockIdx.x] = ldexpf(1.f, e - 14);
  long long o = (long long)blockIdx.x * K;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    float v = xr[k] * up;
    __half h = __float2half_rn(v);
    hi[o + k] = h;
    lo[o + k] = __float2half_rn(v - __half2float(h));
  }
}
// int8 weight values -> f16 (exact), 4 a thread; n % 4 == 0 and 4-byte aligned rows
extern "C" __global__ void i8_to_f16(const signed char* w, __half* out, long long n) {
  long long i = (blockIdx.x * (long long)blockDim.x + threadIdx.x) * 4;
  if (i >= n) return;
  char4 q = *reinterpret_cast<const char4*>(w + i);
  *reinterpret_cast<__half2*>(out + i) = __floats2half2_rn((float)q.x, (float)q.y);
  *reinterpret_cast<__half2*>(out + i + 2) = __floats2half2_rn((float)q.z, (float)q.w);
}
// y[t, n] = (resid ? y[t, n] : 0) + mult * (acc[t, n] * rs[t] * scale[n] + bias[n]); acc may be y (not resid)
extern "C" __global__ void gemm_epilogue(const float* acc, const float* rs, const float* scale,
                                         const float* bias, float* y, int T, int N, int resid, float mult) {
  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= (long long)T * N) return;
  int t = (int)(i / N), n = (int)(i % N);
  float v = acc[i] * rs[t] * (scale ? scale[n] : 1.f) + (bias ? bias[n] : 0.f);
  y[i] = (resid ? y[i] : 0.f) + mult * v;
}
// one block per row: y = x * rsqrt(mean(x^2) + eps) * w
extern "C" __global__ void rmsnorm(const float* x, const float* w, float* y, int H, float eps) {
  __shared__ float part[32];
  const float* xr = x + (long long)blockIdx.x * H;
  float s = 0.f;
  for (int k = threadIdx.x; k < H; k += blockDim.x) s += xr[k] * xr[k];
  s = warp_sum(s);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.f;
    v = warp_sum(v);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  float inv = 1.f / sqrtf(part[0] / (float)H + eps);
  for (int k = threadIdx.x; k < H; k += blockDim.x) y[(long long)blockIdx.x * H + k] = xr[k] * inv * w[k];
}
// x [T, nh, D] in place: pair (j, j + D/2) rotated with cos/sin [T, D] (HF rotate_half)
extern "C" __global__ void rope(float* x, const float* cs, const float* sn, int T, int nh, int D) {
  int half = D >> 1;
  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= (long long)T * nh * half) return;
  int j = (int)(i % half); long long th = i / half; int t = (int)(th / nh);
  float* p = x + th * D;
  float a = p[j], b = p[j + half];
  p[j] = a * cs[t * D + j] - b * sn[t * D + j];
  p[j + half] = b * cs[t * D + j + half] + a * sn[t * D + j + half];
}
// scores [rows, S] in place -> softmax over keys; row r is query t = r % T at position past + t, key s at kpos0 + s
extern "C" __global__ void masked_softmax(float* sc, int S, int T, int past, int kpos0, int window, float scale,
                                          float softcap) {
  __shared__ float red[32];
  float* row = sc + (long long)blockIdx.x * S;
  int qp = past + (int)(blockIdx.x % T);
  float m = NEG_INF;
  for (int s = threadIdx.x; s < S; s += blockDim.x) {
    int kp = kpos0 + s;
    float v = row[s] * scale;
    if (softcap > 0.f) v = tanhf(v / softcap) * softcap;
    if (kp > qp || (window > 0 && kp <= qp - window)) v = NEG_INF;
    row[s] = v;
    m = fmaxf(m, v);
  }
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) { float v = NEG_INF; for (int i = 0; i < (blockDim.x >> 5); ++i) v = fmaxf(v, red[i]); red[0] = v; }
  __syncthreads();
  m = red[0];
  __syncthreads();
  float sum = 0.f;
  for (int s = threadIdx.x; s < S; s += blockDim.x) { float e = __expf(row[s] - m); row[s] = e; sum += e; }
  sum = warp_sum(sum);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
  __syncthreads();
  if (threadIdx.x == 0) { float v = 0.f; for (int i = 0; i < (blockDim.x >> 5); ++i) v += red[i]; red[0] = v; }
  __syncthreads();
  float inv = 1.f / red[0];
  for (int s = threadIdx.x; s < S; s += blockDim.x) row[s] *= inv;
}
// h[t, j] = act(g[t, j]) * u[t, j]   (gu = [T, 2I]: gate then up, or two arrays)
extern "C" __global__ void act_mul(const float* g, const float* u, float* h, long long n, int act) {
  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= n) return;
  float x = g[i], a;
  if (act == 0) a = x * (0.5f * (1.f + tanhf(0.5f * x)));
  else if (act == 1) a = fmaxf(x, 0.f);
  else a = 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
  h[i] = a * u[i];
}
"""


def gpu_status() -> tuple[Any, str]:
    """``(cupy, "")`` when a CUDA device is usable through CuPy, else ``(None, why)``."""
    try:
        import cupy as cp
    except ImportError:
        return None, "CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x)"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - no driver / no device: reported, never raised
        return None, f"no CUDA device ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    if n < 1:
        return None, "no CUDA device"
    return cp, ""


def gpu_arch(cp: Any) -> str:
    """``sm_XY`` of the current device."""
    cc = cp.cuda.Device().compute_capability
    return f"sm_{cc}"


@dataclass
class GpuTensor:
    """A weight on the GPU: ``scheme`` one of :data:`NATIVE_SCHEMES`, logical ``shape`` ``[out, in]`` (or 1-D),
    ``data`` / ``scale`` cupy arrays in the bundle's layout."""

    scheme: str
    shape: tuple[int, ...]
    data: Any
    scale: Any = None
    group_size: int = 0

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + (self.scale.nbytes if self.scale is not None else 0))


def gpu_scheme(t: QTensor) -> str:
    """The scheme ``t`` has on the GPU: its own when a kernel here reads it, else ``f32`` (dequantised once)."""
    if t.scheme in ("f32", "f16", "int8"):
        return t.scheme
    if t.scheme == "int4" and t.group_size == 32:
        return "int4"
    return "f32"


def gpu_nbytes(t: QTensor) -> int:
    """Bytes ``t`` occupies on the GPU (its stored bytes, or 4 per value when dequantised)."""
    if len(t.shape) < 2 or gpu_scheme(t) == "f32":
        return 4 * int(np.prod(t.shape))
    return t.nbytes


class GpuOps:
    """The compiled kernels (NVRTC, once per process and GPU arch) and the operations built on them."""

    def __init__(self, cp: Any, scratch_bytes: int = DEQUANT_CHUNK_BYTES) -> None:
        self.cp = cp
        self.module = cp.RawModule(code=_SRC, options=("-std=c++17",), name_expressions=None)
        f = self.module.get_function
        self.k = {n: f(n) for n in ("gemv_i8", "gemv1_i8_sk", "gemv_f16", "gemv_i4", "dequant_i8", "dequant_i4",
                                    "rmsnorm", "rope", "masked_softmax", "act_mul", "split_f16", "i8_to_f16",
                                    "gemm_epilogue")}
        # batched int8 products on the tensor cores (split-f16, float32-exact); False: dequantise to f32 and
        # SGEMM, the path before 2026-12-07 (EDGESPOOL_GPU_F16_GEMM=0; the benchmark's A/B)
        self.f16_gemm = os.environ.get("EDGESPOOL_GPU_F16_GEMM", "1") != "0"
        self.blas = Blas(cp)  # every GEMM: cuBLAS handles a CUDA graph can record (offload/gpu_blas.py)
        # bytes of the one dequantisation / f16 weight scratch of a batched product (weights bigger than it go in
        # row blocks); the split source passes the model's (offload/gpu_split.py gpu_scratch_bytes)
        self.scratch_bytes = int(scratch_bytes)

    # -- weights ----------------------------------------------------------------------------------------------
    def upload(self, t: QTensor, stream: Any = None, mapped: bool = False) -> GpuTensor:
        """Copy ``t`` to the GPU in its GPU scheme (:func:`gpu_scheme`); 1-D tensors as float32. ``mapped``: place
        it once in page-locked host memory the GPU reads directly (:meth:`host_mapped`) instead: zero-copy, what
        a unified-memory board (Jetson) does with its one DRAM."""
        put = self.host_mapped if mapped else self.cp.asarray
        if len(t.shape) < 2 or gpu_scheme(t) == "f32":
            return GpuTensor("f32", tuple(t.shape), put(np.ascontiguousarray(t.dequantize(), np.float32)))
        data = put(np.ascontiguousarray(t.data))
        scale = None if t.scale is None else put(np.ascontiguousarray(t.scale))
        return GpuTensor(gpu_scheme(t), tuple(t.shape), data, scale, t.group_size)

    def host_mapped(self, a: np.ndarray) -> Any:
        """``a`` written once into page-locked host memory, returned as a cupy array over that same memory: with
        unified addressing (every 64-bit CUDA platform) a cudaHostAlloc'd pointer is valid in kernels as is, so
        the GPU reads these bytes where they lie and nothing is copied host-to-device (on a Jetson that is its
        one DRAM; on a discrete GPU every read crosses PCIe: correct, slow, for testing the path)."""
        cp = self.cp
        a = np.ascontiguousarray(a)
        n = max(1, a.nbytes)
        mem = cp.cuda.alloc_pinned_memory(n)
        np.frombuffer(mem, a.dtype, a.size)[...] = a.reshape(-1)
        um = cp.cuda.UnownedMemory(mem.ptr, n, mem, cp.cuda.Device().id)  # owner=mem keeps the pinned block
        return cp.ndarray(a.shape, a.dtype, cp.cuda.MemoryPointer(um, 0))

    # -- products ---------------------------------------------------------------------------------------------
    def linear(self, x: Any, w: GpuTensor, bias: Any = None, out: Any = None, mult: float = 1.0,
               split: tuple[Any, Any, Any] | None = None) -> Any:
        """``x @ W.T + bias`` for ``x`` float32 ``[T, in]``; with ``out`` given, ``out += mult * (...)`` (the
        residual add fused into the product). ``split``: ``x``'s :meth:`split16` form when the caller made it
        (:meth:`linears`: one split for the products sharing an input)."""
        cp = self.cp
        T, K = int(x.shape[0]), int(x.shape[1])
        N = int(w.shape[0])
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        fused = T <= GEMV_MAX_ROWS and w.scheme != "f32" and (K % 16 == 0 if w.scheme != "int4" else K % 32 == 0)
        if fused:
            resid = out is not None
            y = out if resid else cp.empty((T, N), cp.float32)
            self.gemv_into(x, w, bias, y, resid, mult)
            return y
        if self._tensor_cores(w, K):
            return self._gemm16(split if split is not None else self.split16(x), w, bias, out, mult)
        y = cp.empty((T, N), cp.float32)
        # column-major: y^T [N, T] = W [N, K] . x^T [K, T]; rows r0..r1 of W -> columns r0..r1 of y
        if w.scheme == "f32":
            self.blas.sgemm(OP_T, OP_N, N, T, K, w.data.data.ptr, K, 0, x.data.ptr, K, 0, y.data.ptr, N, 0)
        else:
            rows = max(1, self.scratch_bytes // (4 * K))
            scratch = cp.empty((min(rows, N), K), cp.float32)
            for r0 in range(0, N, rows):
                r1 = min(N, r0 + rows)
                blk = self._dequant_rows(w, r0, r1, scratch[: r1 - r0])
                self.blas.sgemm(OP_T, OP_N, r1 - r0, T, K, blk.data.ptr, K, 0, x.data.ptr, K, 0,
                                y.data.ptr + 4 * r0, N, 0)
        if bias is not None:
            y += bias
        if out is not None:
            out += y if mult == 1.0 else y * np.float32(mult)
            return out
        return y

    def linears(self, x: Any, ws: list[GpuTensor], biases: list[Any] | None = None) -> list[Any]:
        """``[linear(x, w, b) for w, b in zip(ws, biases)]`` with ``x``'s split-f16 form made once for the batched
        tensor-core products (q / k / v, gate / up)."""
        x = self.cp.ascontiguousarray(x, dtype=self.cp.float32)
        T, K = int(x.shape[0]), int(x.shape[1])
        bs = biases if biases is not None else [None] * len(ws)
        sp = self.split16(x) if T > GEMV_MAX_ROWS and any(self._tensor_cores(w, K) for w in ws) else None
        return [self.linear(x, w, b, split=sp) for w, b in zip(ws, bs)]

    def split16(self, x: Any) -> tuple[Any, Any, Any]:
        """``x`` float32 ``[T, K]`` -> ``(hi, lo, rs)``: f16 ``[T, K]`` twice and float32 ``[T]`` with ``x[t] =
        (hi[t] + lo[t]) * rs[t]`` to 22 bits (``rs`` a power of two a row, so no f16 overflow)."""
        cp = self.cp
        T, K = int(x.shape[0]), int(x.shape[1])
        hi, lo = cp.empty((T, K), cp.float16), cp.empty((T, K), cp.float16)
        rs = cp.empty((T,), cp.float32)
        self.k["split_f16"]((T,), (256,), (x, hi, lo, rs, np.int32(K)))
        return hi, lo, rs

    def _tensor_cores(self, w: GpuTensor, K: int) -> bool:
        """Whether batched rows through ``w`` take the split-f16 tensor-core GEMM: int8 weights (their values are
        exact in f16) and f16 weights (used as stored; a hi / lo half times an f16 weight is exact in float32).
        int4's group scales and dequantised schemes are not exact in f16 and keep the f32 SGEMM."""
        return self.f16_gemm and w.scheme in ("int8", "f16") and K % 8 == 0

    def _gemm16(self, sp: tuple[Any, Any, Any], w: GpuTensor, bias: Any, out: Any, mult: float) -> Any:
        """Batched ``x @ W.T`` on the tensor cores from ``x``'s split ``sp``: the int8 weight rows converted to f16
        (exact) in a bounded scratch, two cuBLAS GemmEx calls with float32 accumulation into one float32 ``[T, N]``
        (hi, then lo added with beta = 1), then one epilogue kernel for the row scales, bias and the fused residual
        add: the form tested on the H100, 2026-12-07 (one GemmEx over stacked hi / lo rows would save a call).
        f16 weights go to GemmEx as stored."""
        cp = self.cp
        hi, lo, rs = sp
        T, K = int(hi.shape[0]), int(hi.shape[1])
        N = int(w.shape[0])
        acc = cp.empty((T, N), cp.float32)
        if w.scheme == "f16":  # already f16: no conversion scratch
            for part, beta in ((hi, 0.0), (lo, 1.0)):
                self.blas.gemm_f16(N, T, K, w.data.data.ptr, K, part.data.ptr, K, acc.data.ptr, N, beta)
            return self._epilogue(acc, rs, w, bias, out, mult)
        rows = max(1, min(N, self.scratch_bytes // (2 * K)))
        scratch = cp.empty((rows, K), cp.float16)
        for r0 in range(0, N, rows):
            r1 = min(N, r0 + rows)
            n = (r1 - r0) * K
            src = w.data if r1 - r0 == N else w.data[r0:r1]
            self.k["i8_to_f16"](((n // 4 + 255) // 256,), (256,), (src, scratch, np.int64(n)))
            # column-major view: acc^T [N, T] = W [N, K] . x^T [K, T]; rows r0..r1 of W -> acc[:, r0:r1]
            for part, beta in ((hi, 0.0), (lo, 1.0)):
                self.blas.gemm_f16(r1 - r0, T, K, scratch.data.ptr, K, part.data.ptr, K, acc.data.ptr + 4 * r0, N,
                                   beta)
        return self._epilogue(acc, rs, w, bias, out, mult)

    def _epilogue(self, acc: Any, rs: Any, w: GpuTensor, bias: Any, out: Any, mult: float) -> Any:
        """Row scales, ``w``'s per-row scales, bias and the fused residual add on a tensor-core product's float32
        accumulator ``acc`` ``[T, N]`` (into ``out`` when given)."""
        T, N = int(acc.shape[0]), int(acc.shape[1])
        resid = out is not None
        y = out if resid else acc
        self.k["gemm_epilogue"](((T * N + 255) // 256,), (256,),
                                (acc, rs, w.scale, bias, y, np.int32(T), np.int32(N), np.int32(resid),
                                 np.float32(mult)))
        return y

    def gemv_into(self, x: Any, w: GpuTensor, bias: Any, y: Any, resid: bool, mult: float = 1.0) -> None:
        """The fused GEMV kernel: ``y = (y if resid else 0) + mult * (x @ W.T + bias)`` for ``x`` float32
        contiguous ``[T <= 8, in]`` and ``w`` int8 / int4 (g32) / f16; no allocation (CUDA-graph safe)."""
        T, K, N = int(x.shape[0]), int(x.shape[1]), int(w.shape[0])
        warps = 4
        grid, block = ((N + warps - 1) // warps,), (32 * warps,)
        args = (np.int32(T), np.int32(K), np.int32(N), np.int32(bool(resid)), np.float32(mult))
        if w.scheme == "int8" and T == 1 and K >= SPLIT_K_MIN:  # long rows: a block a row, K split over warps
            self.k["gemv1_i8_sk"]((N,), (32 * SK_WARPS,), (x, w.data, w.scale, bias, y, np.int32(K), np.int32(N),
                                                           np.int32(bool(resid)), np.float32(mult)))
        elif w.scheme == "int8":
            self.k["gemv_i8"](grid, block, (x, w.data, w.scale, bias, y, *args))
        elif w.scheme == "f16":
            self.k["gemv_f16"](grid, block, (x, w.data, bias, y, *args))
        elif w.scheme == "int4":
            self.k["gemv_i4"](grid, block, (x, w.data, w.scale, bias, y, *args))
        else:
            raise ValueError(f"gemv_into: scheme {w.scheme} has no fused kernel")

    def _dequant_rows(self, w: GpuTensor, r0: int, r1: int, dst: Any) -> Any:
        cp = self.cp
        K = int(w.shape[1])
        n = (r1 - r0) * K
        grid, block = ((n + 255) // 256,), (256,)
        if w.scheme == "int8":
            self.k["dequant_i8"](grid, block, (w.data[r0:r1], w.scale[r0:r1], dst, np.int32(K), np.int64(n)))
        elif w.scheme == "int4":
            self.k["dequant_i4"](grid, block, (w.data[r0:r1], w.scale[r0:r1], dst, np.int32(K), np.int64(n)))
        else:  # f16
            dst[...] = w.data[r0:r1].astype(cp.float32)
        return dst

    # -- elementwise / norms ----------------------------------------------------------------------------------
    def rmsnorm(self, x: Any, w: Any, eps: float) -> Any:
        """RMSNorm over the last axis of ``x`` ``[..., H]`` (float32, contiguous)."""
        cp = self.cp
        H = int(x.shape[-1])
        y = cp.empty_like(x)
        rows = int(x.size // H)
        self.k["rmsnorm"]((rows,), (min(1024, max(32, 1 << (H - 1).bit_length())) // 32 * 32,),
                          (x, w, y, np.int32(H), np.float32(eps)))
        return y

    def rmsnorm_into(self, x: Any, w: Any, y: Any, eps: float) -> None:
        """RMSNorm of ``x`` ``[R, H]`` into ``y`` (no allocation)."""
        H = int(x.shape[-1])
        self.k["rmsnorm"]((int(x.size // H),), (min(1024, max(32, 1 << (H - 1).bit_length())) // 32 * 32,),
                          (x, w, y, np.int32(H), np.float32(eps)))

    def act_mul_into(self, g: Any, u: Any, h: Any, act: str) -> None:
        """``h = act(g) * u`` (no allocation)."""
        n = int(g.size)
        self.k["act_mul"](((n + 255) // 256,), (256,), (g, u, h, np.int64(n), np.int32(ACT_CODES[act])))

    def rope(self, x: Any, cos: Any, sin: Any) -> Any:
        """Rotate ``x`` ``[T, nh, D]`` in place with tables ``[T, D]``."""
        T, nh, D = (int(s) for s in x.shape)
        n = T * nh * (D // 2)
        self.k["rope"](((n + 255) // 256,), (256,), (x, cos, sin, np.int32(T), np.int32(nh), np.int32(D)))
        return x

    def act_mul(self, g: Any, u: Any, act: str) -> Any:
        """``act(g) * u`` elementwise (``act`` silu, relu or gelu_tanh)."""
        h = self.cp.empty_like(g)
        n = int(g.size)
        self.k["act_mul"](((n + 255) // 256,), (256,), (g, u, h, np.int64(n), np.int32(ACT_CODES[act])))
        return h

    def attention(self, q: Any, K: Any, V: Any, past: int, kpos0: int, window: int, scale: float,
                  softcap: float) -> Any:
        """Causal GQA: ``q`` ``[T, nh, D]`` (query t at position ``past + t``), ``K``/``V`` ``[nkv, S, D]`` (key s
        at ``kpos0 + s``) -> ``[T, nh, D]``; scores through cuBLAS, mask + softmax in one kernel."""
        cp = self.cp
        T, nh, D = (int(s) for s in q.shape)
        nkv, S = int(K.shape[0]), int(K.shape[1])
        rows = max(1, ATTN_SCORE_BYTES // (4 * nh * S))
        if T > rows:  # long prompt chunk over a long context: query blocks, so the scores stay bounded
            return cp.concatenate([self.attention(q[t0:t0 + rows], K, V, past + t0, kpos0, window, scale, softcap)
                                   for t0 in range(0, T, rows)])
        g = nh // nkv
        qg = cp.ascontiguousarray(q.reshape(T, nkv, g, D).transpose(1, 2, 0, 3)).reshape(nkv, g * T, D)
        gT = g * T
        sK, sV = int(K.strides[0]) // 4, int(V.strides[0]) // 4  # batch strides (K / V are views of the cache)
        assert K.strides[1:] == (4 * D, 4) and V.strides[1:] == (4 * D, 4)
        # scores [nkv, gT, S] = qg . K^T: column-major sc^T [S, gT] = K [S, D] . qg^T [D, gT]
        sc = cp.empty((nkv, gT, S), cp.float32)
        self.blas.sgemm(OP_T, OP_N, S, gT, D, K.data.ptr, D, sK, qg.data.ptr, D, gT * D, sc.data.ptr, S, gT * S, nkv)
        rows = nkv * g * T
        self.k["masked_softmax"]((rows,), (256 if S > 128 else 128,),
                                 (sc, np.int32(S), np.int32(T), np.int32(past), np.int32(kpos0), np.int32(window),
                                  np.float32(scale), np.float32(softcap)))
        # o [nkv, gT, D] = sc . V: column-major o^T [D, gT] = V^T [D, S] . sc^T [S, gT]
        o = cp.empty((nkv, gT, D), cp.float32)
        self.blas.sgemm(OP_N, OP_N, D, gT, S, V.data.ptr, D, sV, sc.data.ptr, S, gT * S, o.data.ptr, D, gT * D, nkv)
        return o.reshape(nkv, g, T, D).transpose(2, 0, 1, 3).reshape(T, nh, D)
