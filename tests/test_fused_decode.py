"""One decoder layer per C call for decode rows (issue 12, ``es_decoder_layer`` / kernels/c_layer.py):

* the C layer against an independent numpy model of a layer (float64 RMSNorm / RoPE / softmax attention / SwiGLU
  over the dequantized weights, products on Q8_0-rounded activations as the kernels compute them), for widths that
  are not powers of two, GQA (5:1, 2:1) and plain MHA, q/k/v biases or none, a past in the KV cache or none,
  one-call (phase 0) and two-call (numpy SiLU between, as with a library whose SiLU is scalar tanhf) forms;
* the engine: generation with the C layers equals the Python layers bit for bit (tokens and logits) at 1, 2 and
  4 threads, and the predicate keeps the Python path where it must (a prompt chunk, an f16 cache, the switch off).
"""
from __future__ import annotations

import numpy as np
import pytest
from edgespool.kernels import c_blocks
from edgespool.kernels.c_layer import ORDER, DecoderLayerC
from test_kernels_blocks import _weight, q8_rounded


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return c_blocks.host_library(cache_dir=tmp_path_factory.mktemp("blockcache"))


def _ref_rmsnorm(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x) + eps) * w


def _ref_lin(x, wf):
    return q8_rounded(x.astype(np.float32)[None])[0] @ wf.T


def _ref_rope(x, cos, sin):  # x [heads, D]
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[:, half:], x[:, :half]], axis=-1)
    return x * cos + rot * sin


def ref_layer(x, wf, norms, biases, K, V, pos, cos, sin, nh, eps):
    """float64 model of the layer; K / V [nkv, >pos, D] hold the past rows (row pos is written here)."""
    nkv, _, D = K.shape
    h = _ref_rmsnorm(x, norms[0], eps)
    q, k, v = (_ref_lin(h, wf[n]) for n in ("wq", "wk", "wv"))
    if biases is not None:
        q, k, v = q + biases[0], k + biases[1], v + biases[2]
    q, k = _ref_rope(q.reshape(nh, D), cos, sin), _ref_rope(k.reshape(nkv, D), cos, sin)
    K, V = K.astype(np.float64).copy(), V.astype(np.float64).copy()
    K[:, pos], V[:, pos] = k, v.reshape(nkv, D)
    G = nh // nkv
    a = np.empty((nh, D))
    for hh in range(nh):
        s = K[hh // G, :pos + 1] @ q[hh] / np.sqrt(D)
        p = np.exp(s - s.max())
        a[hh] = (p / p.sum()) @ V[hh // G, :pos + 1]
    x = x + _ref_lin(a.reshape(-1), wf["wo"])
    h = _ref_rmsnorm(x, norms[1], eps)
    g, u = _ref_lin(h, wf["ffn.gate"]), _ref_lin(h, wf["ffn.up"])
    t = g / (1 + np.exp(-g)) * u
    return {"x": x + _ref_lin(t, wf["ffn.down"]), "K": K, "V": V, "g": g, "u": u}


CASES = [  # schemes (q k v o / gate up down), H, nh, nkv, D, I, biases, pos
    (("q8_0", "q4_0"), 160, 5, 1, 32, 224, True, 6),
    (("q4_k", "q6_k"), 256, 4, 2, 64, 512, False, 0),
    (("int8", "int4"), 96, 3, 3, 32, 160, True, 3),
    (("q5_0", "q4_1"), 192, 6, 2, 32, 288, False, 9),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0][0] for c in CASES])
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_c_layer_matches_numpy_model(lib, case, threads):
    (sa, sf), H, nh, nkv, D, I, bias, pos = case
    rng = np.random.default_rng(H + threads)
    kern = c_blocks.BlockKernels(lib, threads=threads)
    if threads == 2:  # the two-call form (numpy's SiLU between), as with a library whose SiLU is scalar tanhf
        kern.silu_min_threads = c_blocks.SILU_MIN_THREADS
    if not kern.can_pack or not kern._lib.es_pack_kind(c_blocks.SCHEME_CODES[sa][0]):
        pytest.skip(f"this build ({kern.isa}) does not pack {sa}")
    shapes = {"wq": (nh * D, H), "wk": (nkv * D, H), "wv": (nkv * D, H), "wo": (H, nh * D),
              "ffn.gate": (I, H), "ffn.up": (I, H), "ffn.down": (H, I)}
    stored = {n: _weight(rng, sa if n in ("wq", "wk", "wv", "wo") else sf, *shapes[n]) for n in ORDER}
    wf = {n: t.dequantize().astype(np.float64) for n, t in stored.items()}
    p = "layers.0."
    w = {p + n: kern.prepare_weight(t) for n, t in stored.items()}
    norms = [(1 + 0.1 * rng.standard_normal(H)).astype(np.float32) for _ in range(2)]
    w[p + "attn_norm"], w[p + "ffn_norm"] = norms
    biases = None
    if bias:
        biases = [(0.1 * rng.standard_normal(r)).astype(np.float32) for r in (nh * D, nkv * D, nkv * D)]
        w[p + "bq"], w[p + "bk"], w[p + "bv"] = biases
    max_len = pos + 3
    K = np.zeros((nkv, max_len, D), np.float32)
    V = np.zeros((nkv, max_len, D), np.float32)
    K[:, :pos] = rng.standard_normal((nkv, pos, D)).astype(np.float32)
    V[:, :pos] = rng.standard_normal((nkv, pos, D)).astype(np.float32)
    eps, scale = 1e-6, float(np.float32(D ** -0.5))
    lay = DecoderLayerC.build(kern, w, p, K, V, num_heads=nh, eps=eps, scale=scale)
    assert lay is not None and lay.one_call == (threads != 2)
    ang = pos * (1.0 / 1e4 ** (np.arange(0, D, 2) / D))
    cos = np.cos(np.concatenate([ang, ang]))[None].astype(np.float32)
    sin = np.sin(np.concatenate([ang, ang]))[None].astype(np.float32)
    x0 = rng.standard_normal((1, H)).astype(np.float32)
    want = ref_layer(x0[0].astype(np.float64), wf, [n.astype(np.float64) for n in norms], biases, K, V,
                     pos, cos[0].astype(np.float64), sin[0].astype(np.float64), nh, eps)
    x = x0.copy()
    assert lay(x, pos, cos, sin)

    def rel(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())
    # each stage: the new K / V row (RMSNorm, q/k/v, biases, RoPE), gate / up (attention, o, residual, RMSNorm:
    # left in the workspace), the layer's output (SiLU, down, residual)
    for got, ref in ((K[:, pos], want["K"][:, pos]), (V[:, pos], want["V"][:, pos]), (lay.g, want["g"]),
                     (lay.u, want["u"]), (x[0], want["x"])):
        assert rel(got, ref) < 2e-5, rel(got, ref)  # float32 vs float64 on the same Q8_0-rounded activations
    # a different thread count gives the same bits (the kernels' splits change nothing; same SiLU form)
    other = c_blocks.BlockKernels(lib, threads=5 if threads >= 4 else 3 - threads)
    lay2 = DecoderLayerC.build(other, {**w, **{p + n: other.prepare_weight(t) for n, t in stored.items()}}, p, K, V,
                               num_heads=nh, eps=eps, scale=scale)
    x2 = x0.copy()
    if lay2.one_call == lay.one_call:
        assert lay2(x2, pos, cos, sin)
        np.testing.assert_array_equal(x2, x)
    other.close()
    kern.close()


def test_c_layer_declines_what_it_does_not_serve(lib):
    rng = np.random.default_rng(3)
    kern = c_blocks.BlockKernels(lib, threads=1)
    if not kern.can_pack:
        pytest.skip("no packing here")
    H, nh, nkv, D, I = 64, 2, 1, 32, 96
    shapes = {"wq": (nh * D, H), "wk": (nkv * D, H), "wv": (nkv * D, H), "wo": (H, nh * D),
              "ffn.gate": (I, H), "ffn.up": (I, H), "ffn.down": (H, I)}
    stored = {n: _weight(rng, "int8", *shapes[n]) for n in ORDER}
    p = "layers.0."
    w = {p + n: kern.prepare_weight(t) for n, t in stored.items()}
    w[p + "attn_norm"] = w[p + "ffn_norm"] = np.ones(H, np.float32)
    K = np.zeros((nkv, 4, D), np.float32)
    args = dict(num_heads=nh, eps=1e-5, scale=0.1)
    assert DecoderLayerC.build(kern, w, p, K, K.copy(), **args) is not None
    assert DecoderLayerC.build(kern, {**w, p + "wo": stored["wo"]}, p, K, K.copy(), **args) is None  # not packed
    assert DecoderLayerC.build(kern, w, p, K.astype(np.float16), K.astype(np.float16), **args) is None
    assert DecoderLayerC.build(kern, w, p, K, K.copy(), **{**args, "num_heads": 3}) is None  # shapes do not chain
    lay = DecoderLayerC.build(kern, w, p, K, K.copy(), **args)
    x = np.ones((1, H), np.float32)
    cs = np.ones((1, D), np.float32)
    assert not lay(x, 4, cs, cs) and (x == 1).all()  # past the cache: declined, x untouched
    assert not lay.bind(np.zeros((2, 4, D), np.float32), np.zeros((2, 4, D), np.float32))  # other heads
    kern.close()


def _qwen2_like_bundle(tmp_path, quant):
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.synth import SyntheticModel, train_demo_tokenizer
    from edgespool.runtime.bundle.config import ModelConfig
    from tokenizers import Tokenizer

    tok = train_demo_tokenizer()
    cfg = ModelConfig(arch="qwen2", vocab_size=Tokenizer.from_str(tok).get_vocab_size(), hidden_size=160,
                      intermediate_size=224, num_layers=3, num_heads=5, num_kv_heads=1, head_dim=32,
                      rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=512, attention_bias=True,
                      bos_token_id=1, eos_token_ids=(2,))
    return export_model(SyntheticModel(cfg, tok, 11), tmp_path / quant, policy=QuantPolicy(quant=quant, group_size=32),
                        onnx=False, kernels=True, progress=False, kernel_activations="q8").path


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_engine_c_layers_equal_python_layers(tmp_path, quant):
    import edgespool

    b = _qwen2_like_bundle(tmp_path, quant)
    prompt = [1, 17, 40, 9, 33, 5, 71]
    for threads in (1, 2, 4):
        with edgespool.load(b, n_threads=threads) as m:
            eng = m.engine
            if eng.fused.reason is not None:
                pytest.skip(f"no C layers here: {eng.fused.reason} ({m.kernels.description})")
            runs = {}
            for on in (False, True):
                eng.fused.enabled = on
                calls = eng.fused.layer_calls
                cache = eng.new_cache(len(prompt) + 12)
                lg = eng.prefill(np.array(prompt), cache)
                assert eng.fused.layer_calls == calls  # the prompt is a batched Python pass
                toks, logits = [], []
                for _ in range(10):
                    toks.append(int(lg[-1].argmax()))
                    lg = eng.forward([toks[-1]], cache, last_only=True)
                    logits.append(lg.copy())
                runs[on] = toks, np.concatenate(logits), cache.k.copy(), cache.v.copy()
                assert eng.fused.layer_calls - calls == (10 * 3 if on else 0)
            assert runs[True][0] == runs[False][0]
            for a, c in zip(runs[True][1:], runs[False][1:]):
                np.testing.assert_array_equal(a, c)  # bit for bit: logits and every cached key / value
            # an f16 cache keeps the Python path
            eng.fused.enabled = True
            calls = eng.fused.layer_calls
            from edgespool.runtime.decoder.kvcache import KVCache
            cache = KVCache(eng.config, 16, "f16")
            eng.forward(prompt, cache)
            eng.forward([3], cache)
            assert eng.fused.layer_calls == calls


def test_switch_off(tmp_path, monkeypatch):
    import edgespool

    b = _qwen2_like_bundle(tmp_path, "int8")
    monkeypatch.setenv("EDGESPOOL_FUSED_DECODE", "0")
    with edgespool.load(b, n_threads=1) as m:
        assert not m.engine.fused.enabled and "EDGESPOOL_FUSED_DECODE" in m.engine.fused.reason
        list(m.engine.generate([1, 5, 9], 3))
        assert m.engine.fused.layer_calls == 0


def test_split_cpu_layers_take_the_c_path(tmp_path):
    """A CPU/GPU split's CPU layers (offload/gpu_split.SplitWeights over a resident CPU source) go through the C
    layers; a device whose layers all stay on the CPU gives the plain engine's logits bit for bit."""
    import edgespool
    from edgespool.offload.gpu_split import SplitWeights

    class AllOnCpu:  # the device-layer interface of offload/gpu_layers.GpuLayers with no layer placed on it
        has_head = False

        def runs(self, i):
            return False

        def close(self):
            pass

    b = _qwen2_like_bundle(tmp_path, "int8")
    with edgespool.load(b, n_threads=2) as m:
        eng = m.engine
        if eng.fused.reason is not None:
            pytest.skip(f"no C layers here: {eng.fused.reason}")
        plain_src = eng.source
        out = {}
        for split in (False, True):
            eng.source = SplitWeights(plain_src, AllOnCpu(), type("P", (), {"on_gpu": lambda self: []})()) \
                if split else plain_src
            eng.fused.enabled = split  # the plain run: the Python layers (the reference)
            calls = eng.fused.layer_calls
            cache = eng.new_cache(20)
            lg = eng.prefill(np.array([1, 17, 40, 9]), cache)
            toks, logits = [], []
            for _ in range(6):
                toks.append(int(lg[-1].argmax()))
                lg = eng.forward([toks[-1]], cache, last_only=True)
                logits.append(lg.copy())
            out[split] = toks, np.concatenate(logits)
            assert (eng.fused.layer_calls - calls) == (6 * 3 if split else 0)
            eng.fused.enabled = True
        eng.source = plain_src
        assert out[True][0] == out[False][0]
        np.testing.assert_array_equal(out[True][1], out[False][1])
