"""One decoder layer for one decode row in one C call (``es_decoder_layer`` of ``kernels/c_src/decoder_layer.h``).

The engine's Python layer runs ~10 numpy operations and 4-5 kernel dispatches per layer and token; at 16 threads
that work (single-threaded, with allocations) was ~40% of a decode step. :class:`DecoderLayerC` holds one layer's
description for the C entry (pointers to its packed weights, norm vectors, biases and float32 KV-cache rows) and
runs it over preallocated buffers, bit-identical to the Python path (the same kernels, numpy's float32 operation
order for RMSNorm / RoPE / residuals / bias adds; SiLU through ``es_silu_mul`` where the Python path uses it, i.e.
at every thread count with a library that has the polynomial SiLU, from
:data:`~edgespool.kernels.c_blocks.SILU_MIN_THREADS` threads with an older one, else numpy's SiLU between two C
calls).
"""
from __future__ import annotations

import ctypes

import numpy as np

from .block_pack import PackedQTensor
from .c_blocks import BlockKernels
from .quant import QTensor

_vp, _it, _fl = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
_HALF, _ONE = np.float32(0.5), np.float32(1.0)

# the weights of a layer in es_layer_t's order: q k v o gate up down
ORDER = ("wq", "wk", "wv", "wo", "ffn.gate", "ffn.up", "ffn.down")


class LayerDesc(ctypes.Structure):
    """es_layer_t of decoder_layer.h."""

    _fields_ = [("H", _it), ("nh", _it), ("nkv", _it), ("D", _it), ("I", _it), ("max_len", _it),
                ("eps", _fl), ("scale", _fl),
                ("attn_norm", _vp), ("ffn_norm", _vp), ("bq", _vp), ("bk", _vp), ("bv", _vp),
                ("wt", _it * 7), ("w", _vp * 7), ("K", _vp), ("V", _vp)]


def declare(lib: ctypes.CDLL) -> bool:
    """Set the ctypes signatures of the layer entry points; False for a library built before they existed."""
    fn = getattr(lib, "es_decoder_layer", None)
    if fn is None:
        return False
    if fn.restype is _it and fn.argtypes:
        return True
    fn.restype = _it
    fn.argtypes = [_vp, _vp, _vp, _it, _vp, _vp, _vp, _vp, _it, _it]
    lib.es_layer_ws_floats.restype, lib.es_layer_ws_floats.argtypes = ctypes.c_long, [_vp]
    lib.es_layer_scratch_bytes.restype, lib.es_layer_scratch_bytes.argtypes = ctypes.c_long, [_vp]
    return True


def _f32(t: QTensor | np.ndarray | None) -> np.ndarray | None:
    if t is None:
        return None
    a = t.dequantize() if isinstance(t, QTensor) else t
    return np.ascontiguousarray(a, dtype=np.float32)


class DecoderLayerC:
    """One Llama / Qwen2 / SmolLM2-style decoder layer (RMSNorm, q/k/v with optional biases, RoPE, causal GQA
    over a float32 KV cache, o + residual, RMSNorm, SwiGLU, down + residual) as one ``es_decoder_layer`` call per
    decode row. Built by :meth:`build`, which returns None for a layer it cannot serve."""

    def __init__(self, kern: BlockKernels, desc: LayerDesc, keep: list, ws: np.ndarray, scratch: np.ndarray,
                 I: int) -> None:
        self.kern, self.desc, self._keep = kern, desc, keep
        self.ws, self.scratch = ws, scratch
        H, nh, nkv, D = desc.H, desc.nh, desc.nkv, desc.D
        o = H + 2 * nh * D + 2 * nkv * D  # g starts after h q k v a (es_layer_ws_floats' order)
        self.g, self.u, self.t = ws[o:o + I], ws[o + I:o + 2 * I], ws[o + 2 * I:o + 3 * I]
        self._fn = kern._lib.es_decoder_layer
        self._args = (kern._pool, ctypes.addressof(desc))
        self._ws, self._scr = int(ws.ctypes.data), int(scratch.ctypes.data)
        self.one_call = kern.threads >= kern.silu_min_threads  # else numpy's SiLU between two calls (its tanh)

    @staticmethod
    def build(kern: BlockKernels, w: dict[str, QTensor], p: str, K: np.ndarray, V: np.ndarray, *, num_heads: int,
              eps: float, scale: float) -> DecoderLayerC | None:
        """The C layer for layer prefix ``p`` of weights ``w`` writing into this layer's cache arrays ``K``, ``V``
        ``[nkv, max_len, D]`` (float32, C-contiguous), or None when something does not fit: a weight that is not
        x16-packed by ``kern``'s library, shapes that do not chain, a library without the entry point."""
        if not declare(kern._lib):
            return None
        ws_ = [w.get(p + n) for n in ORDER]
        if any(type(t) is not PackedQTensor or t.lib is not kern._lib for t in ws_):
            return None
        if K.dtype != np.float32 or V.dtype != np.float32 or K.shape != V.shape or K.ndim != 3:
            return None
        if not (K.flags.c_contiguous and V.flags.c_contiguous):
            return None
        nkv, max_len, D = (int(s) for s in K.shape)
        nh = int(num_heads)
        H = int(ws_[0].shape[1])
        I = int(ws_[4].shape[0])
        want = [(nh * D, H), (nkv * D, H), (nkv * D, H), (H, nh * D), (I, H), (I, H), (H, I)]
        if [tuple(int(s) for s in t.shape) for t in ws_] != want:
            return None
        norms = [_f32(w.get(p + "attn_norm")), _f32(w.get(p + "ffn_norm"))]
        biases = [_f32(w.get(p + b)) for b in ("bq", "bk", "bv")]
        if any(n is None or n.shape != (H,) for n in norms):
            return None
        if any(b is not None and b.shape != (r,) for b, r in zip(biases, (nh * D, nkv * D, nkv * D))):
            return None
        d = LayerDesc()
        d.H, d.nh, d.nkv, d.D, d.I, d.max_len = H, nh, nkv, D, I, max_len
        d.eps, d.scale = float(np.float32(eps)), float(scale)
        d.attn_norm, d.ffn_norm = (int(n.ctypes.data) for n in norms)  # type: ignore[union-attr]
        d.bq, d.bk, d.bv = (None if b is None else int(b.ctypes.data) for b in biases)
        for k, t in enumerate(ws_):
            d.wt[k], d.w[k] = int(t.code), int(t.ptr)
        d.K, d.V = int(K.ctypes.data), int(V.ctypes.data)
        lib = kern._lib
        ws = np.zeros(int(lib.es_layer_ws_floats(ctypes.byref(d))), np.float32)
        scratch = np.zeros(int(lib.es_layer_scratch_bytes(ctypes.byref(d))) // 8 + 8, np.float64)
        return DecoderLayerC(kern, d, [ws_, norms, biases, K, V], ws, scratch, I)

    def bind(self, K: np.ndarray, V: np.ndarray) -> bool:
        """Write into the cache arrays ``K``, ``V`` ``[nkv, max_len, D]`` from now on (a new KV cache of the same
        model); False, and nothing changed, when they do not fit (float32, C-contiguous, this layer's heads)."""
        d = self.desc
        if (K.dtype != np.float32 or V.dtype != np.float32 or K.shape != V.shape or K.ndim != 3
                or not K.flags.c_contiguous or not V.flags.c_contiguous or int(K.shape[0]) != d.nkv
                or int(K.shape[2]) != d.D):
            return False
        if int(K.ctypes.data) != d.K or int(V.ctypes.data) != d.V:
            d.K, d.V, d.max_len = int(K.ctypes.data), int(V.ctypes.data), int(K.shape[1])
            self._keep[3:5] = [K, V]
        return True

    def __call__(self, x: np.ndarray, pos: int, cos: np.ndarray, sin: np.ndarray) -> bool:
        """Run the layer on the decode row ``x`` ``[1, H]`` (float32, C-contiguous, updated in place) at position
        ``pos`` with its RoPE row ``cos``, ``sin`` ``[1, D]`` (contiguous float32). False (x untouched) when the
        C side declined; the caller then runs its own path."""
        pool, dp = self._args
        xp, cp, sp = x.ctypes.data, cos.ctypes.data, sin.ctypes.data
        nth = self.kern.threads
        if self.one_call:
            return self._fn(pool, dp, xp, pos, cp, sp, self._ws, self._scr, nth, 0) == 0
        if self._fn(pool, dp, xp, pos, cp, sp, self._ws, self._scr, nth, 1):
            return False
        # kernels/swiglu.py's silu(g) * u with the same numpy operations, into the workspace (numpy's tanh, as the
        # Python path computes it where the library's SiLU is not used)
        g, u, t = self.g, self.u, self.t
        np.multiply(g, _HALF, out=t)
        np.tanh(t, out=t)
        t += _ONE
        t *= _HALF
        t *= g
        t *= u
        return self._fn(pool, dp, xp, pos, cp, sp, self._ws, self._scr, nth, 2) == 0
