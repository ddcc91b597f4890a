"""Lower a canonical decoder model (runtime/config.py) to one ONNX graph that plain onnxruntime can run.

The graph is built with ``onnx.helper`` (no torch). One call runs a prompt or a decode step with a KV cache::

    inputs   input_ids            int64   [batch, seq]
             past_key.{i}         float32 [batch, n_kv_heads, past_len, head_dim]   (past_len may be 0)
             past_value.{i}       float32 [batch, n_kv_heads, past_len, head_dim]
    outputs  logits               float32 [batch, seq, vocab]
             present_key.{i}      float32 [batch, n_kv_heads, past_len + seq, head_dim]
             present_value.{i}    float32 [batch, n_kv_heads, past_len + seq, head_dim]

Positions are ``past_len .. past_len + seq - 1`` for every row (no padding inside a batch). RoPE cos/sin tables are
precomputed up to ``max_position_embeddings`` and gathered by position. Weights are initializers in one external data
file ``model.onnx.data`` written tensor by tensor (never the whole model in memory twice), so ORT pre-packs them.

Quantised weights are lowered per scheme (see :data:`QUANT_LOWERING` and docs/ONNX.md): f16 as float16 initializers
plus ``Cast``, int8 as standard QDQ (per-axis ``DequantizeLinear`` -> ``MatMul``), int4 as ``com.microsoft``
``MatMulNBits`` (default) or standard opset-21 blocked int4 QDQ. MoE layers are a *reference lowering*: every expert
is computed densely and weighted by a routing weight that is 0 for the experts not in the token's top-k.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelFormatError, OptionError, UnsupportedModelError
from ..kernels import rope
from ..kernels.quant import QTensor, unpack_int4
from ..runtime.bundle.names import expert_prefix, layer_prefix
from ..runtime.bundle.schemes import FLOAT_SCHEMES
from ..runtime.bundle.config import ARCHITECTURES, ModelConfig
from .onnx_graph import GraphBuilder

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
DEFAULT_OPSET = 21
MIN_OPSET = 18  # ReduceMean with axes as an input, Shape with start/end
INT4_LOWERINGS = ("matmulnbits", "qdq")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")

QUANT_LOWERING: dict[str, str] = {
    "f32": "float32 initializer [in, out] -> MatMul",
    "f16": "float16 initializer [in, out] -> Cast(to=float) -> MatMul (ORT folds the Cast at load: f32 in RAM)",
    "int8": "int8 initializer [in, out] + float32 scale [out] + int8 zero point 0 -> DequantizeLinear(axis=1) -> "
            "MatMul (ORT fuses it into MatMulNBits(bits=8): see session_options)",
    "int4/matmulnbits": "com.microsoft MatMulNBits(bits=4, block_size=group, no zero point = 8, "
                        "accuracy_level=export option, default 0); "
                        "B uint8 [out, in/group, group/2] consecutive-pair nibbles (repacked from Q4_0 order), "
                        "scales float32 [out * in/group]",
    "int4/qdq": "INT4 initializer [in, out] (code - 8) + float32 scale [in/group, out] -> "
                "DequantizeLinear(axis=0, block_size=group) -> MatMul (opset >= 21; ORT fuses it into MatMulNBits: "
                "see session_options)",
    "embedding": "Gather of the stored rows, then per-row dequantisation (int8: * scale; int4: nibble unpack, -8, "
                 "* group scale; f16: Cast)",
    "moe": "reference lowering: all experts computed densely, weighted by a [batch, seq, experts] routing weight "
           "that is 0 outside the top-k (ScatterElements of the TopK values)",
}

# ---------------------------------------------------------------------------------------------------------------
# Lowering of weights: linear layers and embeddings per quantisation scheme.
# ---------------------------------------------------------------------------------------------------------------
class _Lowering:
    """Shared state of one export: builder, config, options, tensor getter."""

    def __init__(self, g: GraphBuilder, cfg: ModelConfig, get_tensor: Callable[[str], QTensor], int4: str,
                 accuracy_level: int) -> None:
        self.g, self.cfg, self._get, self.int4, self.accuracy_level = g, cfg, get_tensor, int4, accuracy_level
        self.expected = cfg.tensor_shapes()
        self.schemes: dict[str, int] = {}
        self.int4_qdq_fallback: list[str] = []  # int4 tensors lowered as QDQ because MatMulNBits cannot take them

    def tensor(self, name: str) -> QTensor:
        """Fetch canonical tensor ``name`` and check its shape against the config."""
        try:
            t = self._get(name)
        except KeyError:
            raise ModelFormatError(f"tensor {name!r} is missing from the model") from None
        want = self.expected[name]
        if tuple(t.shape) != tuple(want):
            raise ModelFormatError(f"tensor {name!r} has shape {tuple(t.shape)}, the config needs {tuple(want)}")
        self.schemes[t.scheme] = self.schemes.get(t.scheme, 0) + 1
        return t

    def vector(self, name: str) -> str:
        """A 1-D float32 parameter (norm weight, bias) as an initializer."""
        t = self.tensor(name)
        if t.scheme not in FLOAT_SCHEMES:
            raise UnsupportedModelError(f"tensor {name!r}: 1-D tensors must be f32/f16, found {t.scheme}")
        return self.g.weight(name, t.data.astype(np.float32))

    def linear(self, x: str, name: str, bias: str | None = None, out: str | None = None,
               qt: QTensor | None = None) -> str:
        """``x @ W.T (+ bias)`` for canonical weight ``name`` (``[out, in]``) in any scheme."""
        g = self.g
        t = qt if qt is not None else self.tensor(name)
        lower = self._LINEAR.get(t.scheme)
        if lower is None:
            raise UnsupportedModelError(f"tensor {name!r}: no ONNX lowering for quantisation scheme {t.scheme!r}; "
                                        f"lowered: {', '.join(self._LINEAR)}")
        y = lower(self, x, name, t)
        if bias is not None:
            return g.add(y, bias, out=out)
        return g.op("Identity", [y], out=out) if out else y

    def _float_linear(self, x: str, name: str, t: QTensor) -> str:
        g = self.g
        w = g.weight(name, np.ascontiguousarray(t.data.T))
        if t.scheme != "f32":
            w = g.cast(w, TensorProto.FLOAT)
        return g.matmul(x, w)

    def _int8_linear(self, x: str, name: str, t: QTensor) -> str:
        g = self.g
        q = g.weight(name + ".q", np.ascontiguousarray(t.data.T))
        s = g.weight(name + ".scale", t.scale.astype(np.float32))
        z = g.weight(name + ".zero_point", np.zeros(int(t.shape[0]), np.int8))
        return g.matmul(x, g.op("DequantizeLinear", [q, s, z], axis=1))

    def _int4_linear(self, x: str, name: str, t: QTensor) -> str:
        g = self.g
        n_out, n_in = t.shape
        gs = t.group_size
        codes = unpack_int4(t.data, gs)  # [out, in] signed -8..7, logical order
        scale = t.scale.astype(np.float32)  # [out, in/gs]
        nbits_ok = gs >= 16 and not gs & (gs - 1)  # MatMulNBits needs a power-of-two block >= 16
        if self.int4 == "matmulnbits" and nbits_ok:
            u = (codes + 8).astype(np.uint8)
            packed = (u[:, 0::2] | (u[:, 1::2] << 4)).reshape(n_out, n_in // gs, gs // 2)
            b = g.weight(name + ".q4", packed)
            s = g.weight(name + ".scale", scale.reshape(-1))
            return g.op("MatMulNBits", [x, b, s], domain="com.microsoft", K=n_in, N=n_out, bits=4,
                        block_size=gs, accuracy_level=self.accuracy_level)
        if self.int4 == "matmulnbits":
            self.int4_qdq_fallback.append(name)
        if g.opset < 21:
            raise OptionError(f"tensor {name!r}: int4 group size {gs} needs the blocked INT4 DequantizeLinear of "
                              f"opset >= 21 (MatMulNBits takes only power-of-two groups >= 16); got opset {g.opset}")
        b = g.weight(name + ".q4", _pack_int4_pairs(codes.T), elem_type=TensorProto.INT4, dims=[n_in, n_out])
        s = g.weight(name + ".scale", np.ascontiguousarray(scale.T))  # [in/gs, out]
        return g.matmul(x, g.op("DequantizeLinear", [b, s], axis=0, block_size=gs))

    def embedding(self, ids: str, t: QTensor) -> str:
        """Rows ``ids`` of the embedding table ``t`` as float32 ``[batch, seq, hidden]``."""
        lower = self._EMBEDDING.get(t.scheme)
        if lower is None:
            raise UnsupportedModelError(f"tensor 'embed': no ONNX lowering for quantisation scheme {t.scheme!r}; "
                                        f"lowered: {', '.join(self._EMBEDDING)}")
        return lower(self, ids, t)

    def _float_embedding(self, ids: str, t: QTensor) -> str:
        g = self.g
        rows = g.gather(g.weight("embed", t.data), ids)
        return rows if t.scheme == "f32" else g.cast(rows, TensorProto.FLOAT)

    def _int8_embedding(self, ids: str, t: QTensor) -> str:
        g = self.g
        q = g.cast(g.gather(g.weight("embed.q", t.data), ids), TensorProto.FLOAT)
        s = g.unsqueeze(g.gather(g.weight("embed.scale", t.scale.astype(np.float32)), ids), [-1])
        return g.mul(q, s)

    def _int4_embedding(self, ids: str, t: QTensor) -> str:
        g = self.g
        gs, H = t.group_size, t.shape[1]
        b = g.reshape(g.gather(g.weight("embed.q4", t.data), ids), [0, 0, H // gs, gs // 2])  # [B,S,G,g/2]
        lo = g.op("BitwiseAnd", [b, g.const(15, np.uint8)])
        hi = g.op("BitShift", [b, g.const(4, np.uint8)], direction="RIGHT")
        q = g.op("Sub", [g.cast(g.concat([lo, hi], axis=-1), TensorProto.FLOAT), g.const(8.0, np.float32)])
        s = g.unsqueeze(g.gather(g.weight("embed.scale", t.scale.astype(np.float32)), ids), [-1])  # [B,S,G,1]
        return g.reshape(g.mul(q, s), [0, 0, H])

    # scheme -> ONNX lowering of a linear layer / an embedding lookup (the schemes of runtime/bundle/schemes.py)
    _LINEAR = {"f32": _float_linear, "f16": _float_linear, "int8": _int8_linear, "int4": _int4_linear}
    _EMBEDDING = {"f32": _float_embedding, "f16": _float_embedding, "int8": _int8_embedding,
                  "int4": _int4_embedding}


def _pack_int4_pairs(codes: np.ndarray) -> np.ndarray:
    """Signed int4 values (row-major) packed as ONNX INT4: element 2i in the low nibble, 2i+1 in the high one."""
    flat = (codes.reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return flat[0::2] | (flat[1::2] << 4)


# ---------------------------------------------------------------------------------------------------------------
# RoPE tables: kernels/rope.py's float32 frequencies (transformers' math), tabulated over every position.
# ---------------------------------------------------------------------------------------------------------------
def rope_tables(cfg: ModelConfig, layer: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin ``[max_position_embeddings, head_dim]`` of layer ``layer``'s RoPE (HF rotate_half layout,
    attention factor applied).

    ``dynamic`` NTK scaling only changes the frequencies beyond ``max_position_embeddings``, which the table does
    not reach, so inside it the default frequencies are exact."""
    spec = cfg.rope_of(layer)
    if spec is None:
        raise OptionError(f"layer {layer} has no RoPE (NoPE)")
    theta, scaling = spec
    kind = rope.rope_type(scaling)
    if kind not in ROPE_TYPES:
        raise UnsupportedModelError(f"rope_scaling type {kind!r} is not supported by the ONNX export; "
                                    f"supported: {', '.join(ROPE_TYPES)}")
    try:
        inv, att = rope.rope_inv_freq(cfg.head_dim, theta, scaling, cfg.max_position_embeddings)
    except (KeyError, ValueError) as e:
        raise UnsupportedModelError(f"rope_scaling {scaling!r} cannot be lowered ({e!r})") from None
    return rope.rope_cos_sin(np.arange(cfg.max_position_embeddings), inv, att)


# ---------------------------------------------------------------------------------------------------------------
# Blocks: one function each.
# ---------------------------------------------------------------------------------------------------------------
def _rms_norm(L: _Lowering, x: str, weight_name: str) -> str:
    """``x / sqrt(mean(x^2) + eps) * w`` over the last axis (float32, as transformers' RMSNorm)."""
    g = L.g
    var = g.op("ReduceMean", [g.mul(x, x), g.const([-1])], keepdims=1)
    inv = g.op("Reciprocal", [g.op("Sqrt", [g.add(var, g.const(L.cfg.rms_norm_eps, np.float32))])])
    return g.mul(g.mul(x, inv), L.vector(weight_name))


def _rotary(g: GraphBuilder, x: str, cos: str, sin: str, half: int) -> str:
    """``x * cos + rotate_half(x) * sin`` for x ``[B, heads, S, D]`` and cos/sin ``[S, D]``."""
    x1, x2 = g.op("Split", [x, g.const([half, half])], axis=-1, n_out=2)
    rot = g.concat([g.op("Neg", [x2]), x1], axis=-1)
    return g.add(g.mul(x, cos), g.mul(rot, sin))


def _attention(L: _Lowering, i: int, x: str, ctx: dict[str, str]) -> str:
    """Self-attention of layer ``i`` on normalised ``x`` [B, S, H]: GQA with RoPE, KV cache concat, causal (+window)
    mask. Writes ``present_key.{i}`` / ``present_value.{i}`` graph outputs."""
    g, cfg = L.g, L.cfg
    p = layer_prefix(i)
    nh, nkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    bias = {k: L.vector(p + k) if cfg.attention_bias else None for k in ("bq", "bk", "bv")}
    q = L.linear(x, p + "wq", bias["bq"])
    k = L.linear(x, p + "wk", bias["bk"])
    v = L.linear(x, p + "wv", bias["bv"])
    if cfg.qk_norm and cfg.qk_norm_per_head:  # Qwen3: RMSNorm over each head's D values
        q = _rms_norm(L, g.reshape(q, [0, 0, nh, D]), p + "q_norm")
        k = _rms_norm(L, g.reshape(k, [0, 0, nkv, D]), p + "k_norm")
    elif cfg.qk_norm:  # OLMoE: RMSNorm over the whole projection
        q, k = _rms_norm(L, q, p + "q_norm"), _rms_norm(L, k, p + "k_norm")
    if cfg.clip_qkv is not None:
        lo, hi = g.const(-cfg.clip_qkv, np.float32), g.const(cfg.clip_qkv, np.float32)
        q, k, v = (g.op("Clip", [t, lo, hi]) for t in (q, k, v))
    q = g.transpose(g.reshape(q, [0, 0, nh, D]), [0, 2, 1, 3])  # [B, nh, S, D]
    k = g.transpose(g.reshape(k, [0, 0, nkv, D]), [0, 2, 1, 3])  # [B, nkv, S, D]
    v = g.transpose(g.reshape(v, [0, 0, nkv, D]), [0, 2, 1, 3])
    if ctx[f"rope.{i}"] is not None:  # None: a NoPE layer (SmolLM3)
        cos, sin = ctx[f"rope.{i}"]
        q, k = _rotary(g, q, cos, sin, D // 2), _rotary(g, k, cos, sin, D // 2)
    k_all = g.concat([f"past_key.{i}", k], axis=2, out=f"present_key.{i}")  # [B, nkv, T, D]
    v_all = g.concat([f"past_value.{i}", v], axis=2, out=f"present_value.{i}")
    # GQA without copying K/V: group the query heads by KV head and let MatMul broadcast over the group axis.
    qg = g.reshape(q, [0, nkv, nh // nkv, -1, D])  # [B, nkv, rep, S, D]
    kt = g.unsqueeze(g.transpose(k_all, [0, 1, 3, 2]), [2])  # [B, nkv, 1, D, T]
    scale = D ** -0.5 if cfg.attention_scale is None else cfg.attention_scale
    scores = g.mul(g.matmul(qg, kt), g.const(scale, np.float32))  # [B, nkv, rep, S, T]
    if cfg.attn_logit_softcap:  # Gemma 2
        scores = _softcap(g, scores, cfg.attn_logit_softcap)
    scores = g.op("Where", [ctx[f"allowed.{i}"], scores, g.const(np.finfo(np.float32).min, np.float32)])
    probs = g.op("Softmax", [scores], axis=-1)
    o = g.matmul(probs, g.unsqueeze(v_all, [2]))  # [B, nkv, rep, S, D]
    o = g.reshape(g.transpose(g.reshape(o, [0, nh, -1, D]), [0, 2, 1, 3]), [0, 0, nh * D])
    return L.linear(o, p + "wo")


def _softcap(g: GraphBuilder, x: str, cap: float) -> str:
    """``cap * tanh(x / cap)``."""
    c = g.const(cap, np.float32)
    return g.mul(g.op("Tanh", [g.op("Div", [x, c])]), c)


def _gelu_tanh(g: GraphBuilder, x: str) -> str:
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (opset 18 has no Gelu op)."""
    f = lambda v: g.const(v, np.float32)  # noqa: E731
    inner = g.mul(g.add(x, g.mul(g.mul(g.mul(x, x), f(0.044715)), x)), f(0.7978845608028654))
    return g.mul(g.mul(g.add(g.op("Tanh", [inner]), f(1.0)), f(0.5)), x)


def _swiglu(L: _Lowering, x: str, prefix: str) -> str:
    """``down(act(gate(x)) * up(x))`` (act: silu; relu for ReGLU; gelu_tanh for Gemma's GeGLU) for canonical
    weights ``{prefix}gate/up/down``."""
    g = L.g
    pre = L.linear(x, prefix + "gate")
    act = {"relu": lambda: g.op("Relu", [pre]), "gelu_tanh": lambda: _gelu_tanh(g, pre)}.get(
        L.cfg.hidden_act, lambda: g.silu(pre))()
    return L.linear(g.mul(act, L.linear(x, prefix + "up")), prefix + "down")


def _moe(L: _Lowering, i: int, x: str) -> str:
    """Top-k MoE block (reference lowering: all experts dense, unselected ones weighted by 0) plus the Qwen2-MoE
    shared expert with its sigmoid gate. Routing: softmax over experts -> top-k -> renormalise when the arch
    renormalises (Mixtral always; Qwen2-MoE/OLMoE iff norm_topk_prob)."""
    g, cfg = L.g, L.cfg
    p = layer_prefix(i)
    probs = g.op("Softmax", [L.linear(x, p + "router")], axis=-1)  # [B, S, E]
    top_v, top_i = g.op("TopK", [probs, g.const([cfg.num_experts_per_tok])], axis=-1, largest=1, sorted=1, n_out=2)
    if cfg.arch == "mixtral" or cfg.norm_topk_prob:
        top_v = g.op("Div", [top_v, g.op("ReduceSum", [top_v, g.const([-1])], keepdims=1)])
    zeros = g.op("ConstantOfShape", [g.op("Shape", [probs])], value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0]))
    route = g.op("ScatterElements", [zeros, top_i, top_v], axis=-1)  # [B, S, E], 0 outside the top-k
    out = None
    for e in range(cfg.num_experts):
        y = g.mul(_swiglu(L, x, expert_prefix(i, e)), g.gather(route, g.const([e]), axis=-1))
        out = y if out is None else g.add(out, y)
    if cfg.shared_expert_intermediate_size:
        gate = g.op("Sigmoid", [L.linear(x, p + "shared_gate")])  # [B, S, 1]
        out = g.add(out, g.mul(gate, _swiglu(L, x, p + "shared.")))
    return out


def _scaled(g: GraphBuilder, x: str, factor: float) -> str:
    """``x * factor`` (no node for 1)."""
    return x if factor == 1.0 else g.mul(x, g.const(factor, np.float32))


def _decoder_layer(L: _Lowering, i: int, h: str, ctx: dict[str, Any]) -> str:
    g, res, p = L.g, L.cfg.residual_multiplier, layer_prefix(i)
    a = _attention(L, i, _rms_norm(L, h, p + "attn_norm"), ctx)
    if L.cfg.post_norms:  # Gemma: RMSNorm of each block's output before its residual add
        a = _rms_norm(L, a, p + "post_attn_norm")
    h = g.add(h, _scaled(g, a, res))
    xn = _rms_norm(L, h, p + "ffn_norm")
    ffn = _moe(L, i, xn) if L.cfg.is_moe_layer(i) else _swiglu(L, xn, p + "ffn.")
    if L.cfg.post_norms:
        ffn = _rms_norm(L, ffn, p + "post_ffn_norm")
    return g.add(h, _scaled(g, ffn, res), out=f"hidden.{i}")


def _positions_and_mask(L: _Lowering) -> dict[str, Any]:
    """Per layer ``i``: ``rope.{i}``, its gathered RoPE (cos, sin) ``[S, D]`` at positions ``past_len +
    arange(seq)``, and ``allowed.{i}``, its boolean ``[S, T]`` attention mask (causal, plus that layer's sliding
    window). Layers with the same RoPE / window share the tables / mask."""
    g, cfg = L.g, L.cfg
    past = g.dim("past_key.0", 2)
    seq = g.dim("input_ids", 1)
    total = g.add(past, seq)
    pos = g.op("Range", [past, total, g.const(1)])  # [S]
    kpos = g.op("Range", [g.const(0), total, g.const(1)])  # [T]
    qcol = g.unsqueeze(pos, [1])  # [S, 1]
    causal = g.op("LessOrEqual", [kpos, qcol])
    masks: dict[int | None, str] = {None: causal}
    ropes: dict[str, tuple[str, str]] = {}
    ctx: dict[str, Any] = {}
    for i in range(cfg.num_layers):
        w, spec = cfg.window_of(i), cfg.rope_of(i)
        if w not in masks:
            masks[w] = g.op("And", [causal, g.op("Greater", [kpos, g.op("Sub", [qcol, g.const(w)])])])
        if spec is not None and repr(spec) not in ropes:
            cos_t, sin_t = rope_tables(cfg, i)
            name = f"rope{len(ropes) or ''}"  # rope.cos / rope.sin for the first (often only) RoPE
            ropes[repr(spec)] = (g.gather(g.weight(f"{name}.cos", cos_t), pos),
                                 g.gather(g.weight(f"{name}.sin", sin_t), pos))
        ctx[f"allowed.{i}"] = masks[w]
        ctx[f"rope.{i}"] = None if spec is None else ropes[repr(spec)]  # None: a NoPE layer (SmolLM3)
    return ctx


def _lm_head(L: _Lowering, h: str) -> str:
    """The ``logits`` output: lm_head (or the tied embedding) of the final hidden state, divided by
    ``logits_scaling`` (Granite)."""
    cfg, g = L.cfg, L.g
    out = "logits" if cfg.logits_scaling == 1.0 and not cfg.final_logit_softcap else None
    if not cfg.tie_word_embeddings:
        y = L.linear(h, "lm_head", out=out)
    elif (t := L.tensor("embed")).scheme in FLOAT_SCHEMES:  # share the Gather table: Gemm(transB=1) on [B*S, H]
        w = "embed" if t.scheme == "f32" else g.cast("embed", TensorProto.FLOAT)
        flat = g.reshape(h, [-1, cfg.hidden_size])
        y = g.op("Gemm", [flat, w], transB=1)
        lead = g.op("Shape", [h], start=0, end=2)
        y = g.op("Reshape", [y, g.concat([lead, g.const([cfg.vocab_size])], axis=0)], out=out)
    else:
        y = L.linear(h, "lm_head", out=out, qt=t)  # quantised tie: a second copy in the MatMul layout
    if cfg.logits_scaling != 1.0:
        y = g.op("Div", [y, g.const(cfg.logits_scaling, np.float32)], out=None if cfg.final_logit_softcap else "logits")
    if cfg.final_logit_softcap:  # Gemma 2
        y = g.op("Identity", [_softcap(g, y, cfg.final_logit_softcap)], out="logits")
    return y


def _check_config(cfg: ModelConfig, opset: int, int4: str) -> None:
    if cfg.arch not in ARCHITECTURES:
        raise UnsupportedModelError(f"architecture {cfg.arch!r} is not supported by the ONNX export; "
                                    f"supported: {', '.join(ARCHITECTURES)}")
    if cfg.hidden_act not in ("silu", "relu", "gelu_tanh"):
        raise UnsupportedModelError(f"hidden_act {cfg.hidden_act!r} is not supported by the ONNX export; supported: "
                                    "silu, relu, gelu_tanh")
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise OptionError(f"opset {opset} is out of range; use {MIN_OPSET}..{onnx.defs.onnx_opset_version()}")
    if int4 not in INT4_LOWERINGS:
        raise OptionError(f"int4_lowering {int4!r} is unknown; valid: {', '.join(INT4_LOWERINGS)}")
    if cfg.num_layers < 1 or cfg.num_heads % cfg.num_kv_heads or cfg.head_dim % 2:
        raise UnsupportedModelError(f"config cannot be lowered: num_layers={cfg.num_layers}, heads "
                                    f"{cfg.num_heads}/{cfg.num_kv_heads}, head_dim={cfg.head_dim}")


# ---------------------------------------------------------------------------------------------------------------
# Public entry points.
# ---------------------------------------------------------------------------------------------------------------
def export_onnx(config: ModelConfig, get_tensor: Callable[[str], QTensor], out_dir: Path, *,
                opset: int = DEFAULT_OPSET, int4_lowering: str = "matmulnbits", accuracy_level: int = 0,
                check: bool = True) -> dict[str, Any]:
    """Write ``out_dir/model.onnx`` + ``out_dir/model.onnx.data`` for ``config`` with weights from ``get_tensor``
    (canonical name -> :class:`QTensor`, any scheme) and return the bundle-manifest section describing them.

    ``int4_lowering``: "matmulnbits" (com.microsoft, fast in ORT, needs a power-of-two group >= 16) or "qdq"
    (standard ONNX INT4 blocked DequantizeLinear, opset >= 21). ``accuracy_level`` is MatMulNBits'
    ``accuracy_level`` (0 = float32 activations, exact; 4 = int8 activations, faster, less exact), written into
    the MatMulNBits nodes and into the returned ``session_options`` (the ORT option that governs the MatMulNBits
    nodes ORT itself makes from int8/int4 QDQ; ORT's own default there is 4).
    ``check`` runs ``onnx.checker`` on the written file.
    """
    _check_config(config, opset, int4_lowering)
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise OptionError(f"accuracy_level must be 0..4 (MatMulNBits' attribute), got {accuracy_level!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, data_path = out_dir / MODEL_FILE, out_dir / DATA_FILE
    data_path.unlink(missing_ok=True)  # never append to a stale data file
    g = GraphBuilder(data_path, opset)
    L = _Lowering(g, config, get_tensor, int4_lowering, accuracy_level)
    try:
        _build(L)
        model = g.model(f"edgespool_{config.arch}")
    except BaseException:
        g.abort()
        data_path.unlink(missing_ok=True)
        raise
    onnx.save_model(model, str(model_path))
    if check:
        onnx.checker.check_model(str(model_path))
    return _manifest(config, model, L, data_path)


def _build(L: _Lowering) -> None:
    g, cfg = L.g, L.cfg
    kv_shape = ["batch", cfg.num_kv_heads, "past_len", cfg.head_dim]
    present_shape = ["batch", cfg.num_kv_heads, "total_len", cfg.head_dim]
    ids = g.input("input_ids", TensorProto.INT64, ["batch", "seq"])
    for i in range(cfg.num_layers):
        g.input(f"past_key.{i}", TensorProto.FLOAT, kv_shape)
        g.input(f"past_value.{i}", TensorProto.FLOAT, kv_shape)
    g.output("logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab_size])
    for i in range(cfg.num_layers):
        g.output(f"present_key.{i}", TensorProto.FLOAT, present_shape)
        g.output(f"present_value.{i}", TensorProto.FLOAT, present_shape)
    ctx = _positions_and_mask(L)
    h = _scaled(g, L.embedding(ids, L.tensor("embed")), cfg.embedding_multiplier)
    for i in range(cfg.num_layers):
        h = _decoder_layer(L, i, h, ctx)
    _lm_head(L, _rms_norm(L, h, "norm"))


def _manifest(cfg: ModelConfig, model: onnx.ModelProto, L: _Lowering, data_path: Path) -> dict[str, Any]:
    def io(vis: Sequence[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
        return [{"name": v.name, "dtype": helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in vis]

    lowering = {s: QUANT_LOWERING[s if s != "int4" else f"int4/{L.int4}"] for s in sorted(L.schemes)}
    if L.int4_qdq_fallback:
        lowering["int4/qdq"] = QUANT_LOWERING["int4/qdq"]
    lowering["embedding"] = QUANT_LOWERING["embedding"]
    if cfg.is_moe:
        lowering["moe"] = QUANT_LOWERING["moe"]
    return {
        "file": MODEL_FILE,
        "data_file": DATA_FILE,
        "data_nbytes": os.path.getsize(data_path),
        "ir_version": int(model.ir_version),
        "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "positions": "past_len + arange(seq) (no padding inside a batch); max_position_embeddings="
                     f"{cfg.max_position_embeddings}",
        "kv_cache": {"layers": cfg.num_layers, "n_kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
                     "dtype": "float32", "sliding_window": cfg.sliding_window},
        "tensor_schemes": dict(sorted(L.schemes.items())),
        "int4_lowering": L.int4 if "int4" in L.schemes else None,
        "int4_qdq_fallback": L.int4_qdq_fallback,
        "quant_lowering": lowering,
        # ORT (>= 1.2x, ENABLE_EXTENDED) fuses int8/int4 DequantizeLinear + MatMul into MatMulNBits with
        # accuracy_level=4 (int8 activations) unless this session option says otherwise: pass it on.
        "session_options": ({"session.qdq_matmulnbits_accuracy_level": str(L.accuracy_level)}
                            if "int8" in L.schemes or ("int4" in L.schemes and (L.int4 == "qdq"
                                                                                 or L.int4_qdq_fallback)) else {}),
    }


def empty_kv_cache(config: ModelConfig, batch: int = 1) -> dict[str, np.ndarray]:
    """The ``past_key.{i}`` / ``past_value.{i}`` feeds of a first (prompt) call: zero-length float32 caches."""
    z = np.zeros((batch, config.num_kv_heads, 0, config.head_dim), np.float32)
    feeds = {}
    for i in range(config.num_layers):
        feeds[f"past_key.{i}"] = z
        feeds[f"past_value.{i}"] = z
    return feeds


def next_kv_cache(config: ModelConfig, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn a call's ``present_*`` outputs into the next call's ``past_*`` feeds."""
    feeds = {}
    for i in range(config.num_layers):
        feeds[f"past_key.{i}"] = outputs[f"present_key.{i}"]
        feeds[f"past_value.{i}"] = outputs[f"present_value.{i}"]
    return feeds
