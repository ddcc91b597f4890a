"""Which C kernel each conv/gemm node of the MCU project runs, and the weight layout of the CMSIS-NN-style ones
(``c_src/es_kernels_s8.c``)."""
from __future__ import annotations

import numpy as np

from ...runtime.bundle.cnn_graph import CnnGraph

KERNEL_SETS = ("s8", "plain")  # CMSIS-NN-style SIMD kernels / the plain C loops


def pack_s8(w: np.ndarray) -> tuple[np.ndarray, int]:
    """Weights [O, ...] -> (the s8 kernels' layout, k4): each row of K taps zero-padded to k4 (K rounded up to 4),
    every four stored as [w0, w2, w1, w3] (SXTB16 then yields the pairs (w0, w1) and (w2, w3))."""
    rows = np.asarray(w, np.int8).reshape(w.shape[0], -1)
    k = rows.shape[1]
    k4 = -(-k // 4) * 4
    p = np.zeros((rows.shape[0], k4), np.int8)
    p[:, :k] = rows
    return np.ascontiguousarray(p.reshape(rows.shape[0], k4 // 4, 4)[:, :, [0, 2, 1, 3]]).reshape(-1), k4


def conv_kernel(graph: CnnGraph, i: int, kernels: str) -> str:
    """The C function a conv/gemm node runs with: es_conv_s8 (im2col GEMM, any groups), es_dwconv3x3_s8
    (depthwise 3x3, dilation 1, equal strides 1 or 2), es_gemm_s8; es_conv2d / es_gemm (plain loops) otherwise."""
    n = graph.nodes[i]
    if n.op == "gemm":
        return "es_gemm_s8" if kernels == "s8" else "es_gemm"
    if kernels != "s8":
        return "es_conv2d"
    a = n.attrs
    cin, cout = graph.shapes[n.inputs[0]][0], graph.shapes[n.output][0]
    if a["group"] == cin == cout and a["group"] > 1:
        ok = (tuple(a["kernel"]) == (3, 3) and tuple(a["dilation"]) == (1, 1)
              and tuple(a["stride"]) in ((1, 1), (2, 2)))
        return "es_dwconv3x3_s8" if ok else "es_conv2d"
    return "es_conv_s8"
