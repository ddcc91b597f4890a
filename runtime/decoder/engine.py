"""The decoder loop (llama2.c style: read it top to bottom).

``Engine(source, kernels)`` runs any model of :data:`edgespool.runtime.bundle.config.ARCHITECTURES` whose weights
come from a :class:`~edgespool.runtime.decoder.weights.WeightSource`, every linear layer and attention through the
model's :class:`~edgespool.kernels.table.KernelTable` ``kernels``. Weights are fetched ONLY through
``source.get(group)`` / ``source.release(group)``, one streaming group at a time, in compute order:

    embed -> layers.0 [-> layers.0.experts.e for each routed e] -> layers.1 ... -> head (-> embed if tied)

Before each group the engine calls ``source.hint([...])`` with the group(s) it will need next, and before each
FFN/MoE block ``source.on_hidden(i, h)`` with the post-attention residual, so a streaming source can prefetch.

One :meth:`Engine.forward` call processes all T new tokens of a step in one batched pass through each layer
(prompt processing is batched; decode is T = 1). Per-step timings are kept in :attr:`Engine.stats`.

Architectures differ only through :class:`~edgespool.runtime.bundle.config.ModelConfig` fields, never through
their names: q/k norms (``qk_norm``, ``qk_norm_per_head``), per-layer RoPE and windows (``rope_of(i)``,
``window_of(i)``), scales (``embedding_multiplier``, ``attention_scale``, ``residual_multiplier``,
``logits_scaling``), Gemma's ``post_norms`` and soft-caps, the FFN activation (``hidden_act``), MoE routing.

Run state per layer (T new tokens, H hidden, nh/nkv heads of D, I FFN width)::

    x      [T, H]        residual stream
    h      [T, H]        normalised input of the attention / FFN block
    q      [T, nh, D]    queries after RoPE;  k, v [T, nkv, D] go into the KV cache
    logits [T, V]        (or [1, V] with last_only)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from ...errors import BundleError, OptionError
from ...kernels.moe import combine_experts, route, shared_expert
from ...kernels.quant import QTensor
from ...kernels.rmsnorm import rmsnorm
from ...kernels.rope import Rope, apply_rope
from ...kernels.swiglu import swiglu
from ...kernels.bundled_ffn import dense_bundled_ffn
from ...kernels.table import REFERENCE, KernelTable
from ..bundle.ffn_geometry import NeuronBundles
from ..bundle.names import ffn_group, ffn_tensor
from .fused_decode import FusedDecode
from .kvcache import KVCache, check_kv_dtype
from .sampling import Sampler
from ..bundle.names import EMBED, FINAL_NORM, HEAD, LM_HEAD, expert_group, expert_prefix, layer_group, layer_prefix
from .weights import WeightSource


@dataclass
class EngineStats:
    """Wall-clock time spent in :meth:`Engine.forward`, split into prefill (prompt) and decode steps."""

    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0
    expert_fetches: int = 0  # expert groups fetched (MoE), summed over steps

    @property
    def prefill_tok_s(self) -> float:
        """Prompt tokens per second (0 when nothing was measured)."""
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        """Generated tokens per second over the decode steps (0 when nothing was measured)."""
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def reset(self) -> None:
        self.prefill_tokens, self.prefill_s, self.decode_tokens, self.decode_s, self.expert_fetches = 0, 0.0, 0, 0.0, 0


def _vec(t: QTensor | None) -> np.ndarray | None:
    """A 1-D weight (norm, bias) as float32."""
    return None if t is None else t.dequantize()


class CacheBatch:
    """Several sequences in one :meth:`Engine.forward` pass (continuous batching): sequence j brings ``counts[j]``
    new tokens (concatenated in this order) at positions ``caches[j].length ..`` of its own KV cache. Every layer's
    weights are read once for all of them; attention is per sequence. Built by :meth:`Engine.forward_batch`."""

    def __init__(self, caches: list[KVCache], counts: list[int]) -> None:
        if len(caches) != len(counts) or not caches or min(counts) < 1:
            raise OptionError("a batch needs one cache and at least one new token per sequence")
        if len({id(c) for c in caches}) != len(caches):
            raise OptionError("a batch cannot hold the same KV cache twice")
        self.caches, self.counts = list(caches), [int(n) for n in counts]
        self.ends = np.cumsum(self.counts)

    @property
    def length(self) -> int:  # only for messages; positions come from positions()
        return max(c.length for c in self.caches)

    def check_room(self, n: int) -> None:
        if n != int(self.ends[-1]):
            raise OptionError(f"a batch of {int(self.ends[-1])} tokens was given {n}")
        for cache, m in zip(self.caches, self.counts):
            cache.check_room(m)

    def positions(self) -> np.ndarray:
        """Each new token's position in its own sequence, concatenated ``[T]``."""
        return np.concatenate([np.arange(c.length, c.length + m) for c, m in zip(self.caches, self.counts)])

    def spans(self) -> Iterator[tuple[KVCache, int, int]]:
        """(cache, first row, end row) of each sequence in the batch's rows."""
        a = 0
        for cache, b in zip(self.caches, self.ends):
            yield cache, a, int(b)
            a = int(b)

    def last_rows(self, x: np.ndarray) -> np.ndarray:
        """The rows of each sequence's last new token ``[n_seq, ...]``."""
        return x[self.ends - 1]

    def advance(self, n: int) -> None:
        for cache, m in zip(self.caches, self.counts):
            cache.advance(m)


class Engine:
    """Decoder-only transformer inference over a :class:`WeightSource` (resident or streaming), every linear layer
    and attention through ``kernels`` (this model's :class:`~edgespool.kernels.table.KernelTable`; default the
    numpy reference)."""

    def __init__(self, source: WeightSource, kernels: KernelTable = REFERENCE, *, kv_dtype: str | None = None,
                 prefill_chunk: int | None = None) -> None:
        self.source = source
        self.kernels = kernels
        # resident weights in the kernels' own layout (the C block kernels' x16 repacking; streamed ones stay stored)
        prepare, set_prepare = getattr(kernels.backend, "prepare_weight", None), getattr(source, "set_prepare", None)
        if prepare is not None and set_prepare is not None:
            set_prepare(prepare)
        plan = getattr(source, "plan", None)
        # a streaming source's plan sizes the KV cache (format, length) and the prefill chunks; resident runs keep
        # a float32 cache and one pass over the prompt unless told otherwise
        self.kv_dtype = check_kv_dtype(kv_dtype or (plan.kv_dtype if plan is not None else "f32"),
                                       source.config.head_dim)
        self.max_context = int(plan.max_context) if plan is not None else None
        self.prefill_chunk = prefill_chunk or (int(plan.max_batch_tokens) if plan is not None else None)
        self.config = c = source.config
        # each layer's RoPE, one Rope per distinct (theta, scaling): Gemma 3's local and global layers differ;
        # None for a layer without (SmolLM3's NoPE layers)
        ropes: dict[str, Rope] = {}
        self.layer_rope: list[Rope | None] = []
        for i in range(c.num_layers):
            spec = c.rope_of(i)
            if spec is not None and repr(spec) not in ropes:
                ropes[repr(spec)] = Rope(c.head_dim, *spec, c.max_position_embeddings)
            self.layer_rope.append(None if spec is None else ropes[repr(spec)])
        self.stats = EngineStats()
        # decode rows of plain dense layers as one C call per layer (issue 12; the predicate: fused_decode.py)
        self.fused = FusedDecode(c, kernels)
        self._head_groups = [HEAD, EMBED] if c.tie_word_embeddings else [HEAD]
        self._forms_chosen = False  # the decode tiles' form per format (kernels/decode_form.py), after decode 1

    def _choose_decode_forms(self) -> None:
        """After the first decode row: let the kernels pick each packed format's faster decode tile form on this
        host from the resident weights (bit-identical results; speed only). Sources without ``loaded_tensors``
        (streaming) keep the default form."""
        self._forms_chosen = True
        choose = getattr(self.kernels.backend, "choose_decode_forms", None)
        tensors = getattr(self.source, "loaded_tensors", None)
        if choose is not None and tensors is not None:
            choose(tensors())

    # -- state ----------------------------------------------------------------------------------------------
    def new_cache(self, max_len: int | None = None) -> KVCache:
        """A fresh KV cache for ``max_len`` positions (default: the model's max_position_embeddings, capped at
        4096)."""
        if max_len is None:
            max_len = self.max_context or min(self.config.max_position_embeddings, 4096)
        if self.max_context is not None and max_len > self.max_context:
            raise OptionError(f"{max_len} tokens of context (prompt + new tokens) exceed the memory plan's KV cache "
                              f"of {self.max_context} positions; raise --max-context (and the budget) or shorten "
                              "the prompt / -n")
        scaling = self.config.rope_scaling or {}
        # dynamic NTK RoPE rescales its frequencies past the trained context (HF's "dynamic"): no hard limit there
        if scaling.get("rope_type") != "dynamic" and max_len > self.config.max_position_embeddings:
            raise OptionError(f"{max_len} tokens of context exceed the model's context of "
                              f"{self.config.max_position_embeddings} tokens; shorten the prompt or -n")
        return KVCache(self.config, max_len, self.kv_dtype)

    def prefill(self, prompt: np.ndarray, cache: KVCache) -> np.ndarray:
        """Run the prompt in chunks of :attr:`prefill_chunk` tokens (one pass without one) and return the last
        position's logits ``[1, V]``; only the last chunk goes through the head."""
        n = int(prompt.size)
        step = self.prefill_chunk or n
        for t0 in range(0, n - step, step) if n > step else ():
            self.forward(prompt[t0:t0 + step], cache, logits=False)
        last = ((n - 1) // step) * step if n > step else 0
        return self.forward(prompt[last:], cache, last_only=True)

    # -- one step ---------------------------------------------------------------------------------------------
    def forward(self, tokens: Iterable[int] | np.ndarray, cache: KVCache, last_only: bool = False,
                logits: bool = True, layers: int | None = None, *, hidden: np.ndarray | None = None,
                first_layer: int = 0, hidden_out: bool = False) -> np.ndarray:
        """Run the T new ``tokens`` (positions ``cache.length ..``) through the model in one batched pass,
        append their keys/values to ``cache``, and return float32 logits ``[T, V]`` (``[1, V]`` for the last
        token only when ``last_only``; nothing, and no head pass, with ``logits=False``: a prefill chunk that is
        not the prompt's last). ``layers``: run only the first that many layers before the head (self-drafting,
        :meth:`forward_prefix`).
        Pipeline stages (edgespool.runtime.cluster): ``hidden`` ``[T, H]`` replaces the embedding of ``tokens``
        (the previous stage's output; ``tokens`` is then ignored), ``first_layer`` starts the layer loop there
        (``cache`` is a stage cache of layers ``first_layer..``), ``hidden_out`` returns the residual stream
        ``[T, H]`` after the last layer run instead of logits (no head)."""
        c, src, kern = self.config, self.source, self.kernels
        tokens = np.asarray(tokens if hidden is None else np.zeros(len(hidden)), dtype=np.int64).reshape(-1)
        T = tokens.size
        if T == 0:
            raise OptionError("forward() needs at least one token")
        if hidden is None and (tokens.min() < 0 or tokens.max() >= c.vocab_size):
            raise OptionError(f"token id out of range [0, {c.vocab_size}): {int(tokens.max())}")
        cache.check_room(T)
        pos = cache.positions() if isinstance(cache, CacheBatch) else np.arange(cache.length, cache.length + T)
        tables = {id(r): r.cos_sin(pos) for r in self.layer_rope if r}  # (cos, sin) [T, D] of each distinct RoPE

        src.hint([EMBED, layer_group(first_layer)] if hidden is None else [layer_group(first_layer)])
        rows_fn = getattr(src, "embed_rows", None)
        if hidden is not None:  # a pipeline stage after the first: the previous stage's residual stream
            x = np.array(hidden, dtype=np.float32)
        elif rows_fn is not None:  # a streaming source reads just these rows from storage
            x = rows_fn(tokens)  # [T, H]
        else:
            x = src.get(EMBED)[EMBED].rows(tokens)
            src.release(EMBED)
        if c.embedding_multiplier != 1 and hidden is None:  # Granite, Gemma
            x *= np.float32(c.embedding_multiplier)
        res = None if c.residual_multiplier == 1 else np.float32(c.residual_multiplier)  # Granite: block output scale

        n_run = c.num_layers if layers is None else layers
        # a CPU/GPU split source (edgespool.offload.gpu_split) computes its GPU layers and head itself, KV cache on
        # the GPU; the activations cross the link once per CPU<->GPU boundary
        dev = getattr(src, "device_layers", None) if layers is None else None
        reduce = getattr(src, "reduce_partial", None)  # tensor parallel: sums the boards' partial block outputs
        if self.fused.kernels is not kern:  # the table was swapped after construction
            self.fused = FusedDecode(c, kern)
        fused = self.fused.for_step(T, cache, src, dev, reduce)
        if fused:  # the C layers update x in place: an own contiguous float32 row
            x = np.array(x, dtype=np.float32, order="C")
        for i in range(first_layer, n_run):
            if dev is not None and dev.runs(i):
                x = dev.layer(i, x, pos, tables[id(self.layer_rope[i])] if self.layer_rope[i] else None, cache)
                if fused and isinstance(x, np.ndarray):  # back on the host for a CPU layer: the C layers' own row
                    x = np.array(x, dtype=np.float32, order="C")
                continue
            g = layer_group(i)
            w = src.get(g)
            src.hint([layer_group(i + 1)] if i + 1 < n_run else self._head_groups)
            p = layer_prefix(i)
            if fused:  # one C call for the whole layer (bit-identical to the code below), when it serves it
                lay = self.fused.layer(i, w, p, cache)
                if lay is not None and lay(x, int(pos[0]), *tables[id(self.layer_rope[i])]):
                    self.fused.layer_calls += 1
                    src.release(g)
                    continue
            # attention block
            h = self._rmsnorm(x, w[p + "attn_norm"])
            rope = self.layer_rope[i]
            a = self._attention(i, w, p, h, pos, tables[id(rope)] if rope else None, cache)
            if reduce is not None:
                a = reduce(a)
            if c.post_norms:  # Gemma: RMSNorm of the block's output before the residual add
                a = rmsnorm(a, _vec(w[p + "post_attn_norm"]), c.rms_norm_eps)
            x = x + (a if res is None else a * res)
            # FFN / MoE block
            src.on_hidden(i, x)
            h = self._rmsnorm(x, w[p + "ffn_norm"])
            if c.is_moe_layer(i):
                f = self._moe(i, w, p, h)
            elif p + "ffn.gate" in w:
                f = swiglu(h, w[p + "ffn.gate"], w[p + "ffn.up"], w[p + "ffn.down"], c.hidden_act, kernels=kern)
            else:  # row-column bundled FFN in its own group (streaming: computed from a neuron window)
                f = self._bundled_ffn(i, h)
            if reduce is not None:
                f = reduce(f)
            if c.post_norms:
                f = rmsnorm(f, _vec(w[p + "post_ffn_norm"]), c.rms_norm_eps)
            x = x + (f if res is None else f * res)
            src.release(g)
        cache.advance(T)
        if T == 1 and not self._forms_chosen and layers is None and dev is None:
            self._choose_decode_forms()

        if hidden_out:  # a pipeline stage that is not the last: its residual stream goes to the next board
            return x
        if not logits:
            return None  # type: ignore[return-value]
        if last_only:
            x = cache.last_rows(x) if isinstance(cache, CacheBatch) else x[-1:]
        if dev is not None and dev.has_head:
            return dev.head(x)
        logits_out = self._head(x)
        return logits_out

    def forward_batch(self, seqs: list[tuple[Iterable[int] | np.ndarray, KVCache]],
                      logits: bool = True) -> np.ndarray:
        """Continuous batching: run several sequences' new tokens -- ``seqs`` = [(tokens, cache), ...], each cache
        its own sequence, any number of new tokens each (a prompt chunk of one, a decode token of another) -- in
        ONE pass through each layer (a streamed model reads each group once per step for all of them), appending
        each sequence's keys/values to its cache. Returns float32 logits ``[n_seq, V]`` of each sequence's last new
        token (nothing with ``logits=False``). Equal to :meth:`forward` of each sequence alone, up to the float
        rounding of batched matrix products."""
        if getattr(self.source, "device_layers", None) is not None:
            raise OptionError("batched decoding runs on the CPU engine; this source computes layers on a GPU")
        toks = [np.asarray(t, dtype=np.int64).reshape(-1) for t, _ in seqs]
        batch = CacheBatch([c for _, c in seqs], [int(t.size) for t in toks])
        return self.forward(np.concatenate(toks), batch, last_only=True, logits=logits)  # type: ignore[arg-type]

    def forward_prefix(self, tokens: Iterable[int] | np.ndarray, cache: KVCache, n_layers: int,
                       last_only: bool = False) -> np.ndarray:
        """Self-drafting: the first ``n_layers`` layers, then the final norm and the head (an early exit) of the
        ``tokens``; ``cache`` holds only those layers (:meth:`new_prefix_cache`). Logits as :meth:`forward`."""
        if not 1 <= n_layers <= self.config.num_layers:
            raise OptionError(f"self-draft layers {n_layers}: must be in 1..{self.config.num_layers}")
        return self.forward(tokens, cache, last_only=last_only, layers=n_layers)

    def new_prefix_cache(self, n_layers: int, max_len: int) -> KVCache:
        """A KV cache for the first ``n_layers`` layers (:meth:`forward_prefix`), in the engine's KV format."""
        from dataclasses import replace

        return KVCache(replace(self.config, num_layers=n_layers), max_len, self.kv_dtype)

    def _head(self, x: np.ndarray) -> np.ndarray:
        """Final norm and head of the hidden states ``x`` ``[R, H]`` -> float32 logits ``[R, V]``; the head comes
        from ``source.head_chunks()`` (row pieces: a streamed head arrives in chunks through the window) or, for a
        source without it, ``get(HEAD)`` (and ``get(EMBED)`` when tied)."""
        c, src, kern = self.config, self.source, self.kernels
        chunks_fn = getattr(src, "head_chunks", None)
        if chunks_fn is not None:
            h = rmsnorm(x, src.head_norm(), c.rms_norm_eps)
            logits = np.empty((h.shape[0], c.vocab_size), np.float32)
            for r0, w in chunks_fn():
                logits[:, r0:r0 + int(w.shape[0])] = kern.linear(h, w)
        else:
            head = src.get(HEAD)
            h = rmsnorm(x, _vec(head[FINAL_NORM]), c.rms_norm_eps)
            if c.tie_word_embeddings:
                logits = kern.linear(h, src.get(EMBED)[EMBED])
                src.release(EMBED)
            else:
                logits = kern.linear(h, head[LM_HEAD])
            src.release(HEAD)
        if c.logits_scaling != 1:  # Granite
            logits = logits / np.float32(c.logits_scaling)
        if c.final_logit_softcap:  # Gemma 2
            logits = np.tanh(logits / np.float32(c.final_logit_softcap)) * np.float32(c.final_logit_softcap)
        return logits.astype(np.float32, copy=False)

    def _rmsnorm(self, x: np.ndarray, weight: QTensor) -> np.ndarray:
        """A layer's input RMSNorm of ``x`` ``[T, H]``: the kernels' threaded C rows where they have them
        (bit-identical), else numpy's :func:`rmsnorm`."""
        wv, eps = _vec(weight), self.config.rms_norm_eps
        fast = getattr(self.kernels.backend, "rmsnorm", None) if x.shape[0] > 1 else None
        y = fast(x, wv, eps) if fast is not None else None
        return y if y is not None else rmsnorm(x, wv, eps)

    def _attention(self, i: int, w: dict[str, QTensor], p: str, h: np.ndarray, pos: np.ndarray,
                   rope: tuple[np.ndarray, np.ndarray] | None, cache: KVCache) -> np.ndarray:
        """Self-attention of layer ``i`` for the new tokens ``h`` ``[T, H]`` with that layer's RoPE tables
        ``rope`` (cos, sin; None: no positional encoding); writes K/V into ``cache``."""
        c, linear = self.config, self.kernels.linear
        T, D = h.shape[0], c.head_dim
        ws, bs = [w[p + "wq"], w[p + "wk"], w[p + "wv"]], [_vec(w.get(p + "bq")), _vec(w.get(p + "bk")),
                                                           _vec(w.get(p + "bv"))]
        many = getattr(self.kernels, "linear_many", None)  # q / k / v in one kernel dispatch where it can
        q, k, v = many(h, ws, bs) if many is not None else [linear(h, a, b) for a, b in zip(ws, bs)]
        q = q.reshape(T, c.num_heads, D)
        k = k.reshape(T, c.num_kv_heads, D)
        v = v.reshape(T, c.num_kv_heads, D)
        if c.qk_norm:
            q, k = self._qk_norm(q, w[p + "q_norm"]), self._qk_norm(k, w[p + "k_norm"])
        if c.clip_qkv is not None:
            q, k, v = (np.clip(a, -c.clip_qkv, c.clip_qkv) for a in (q, k, v))
        if rope is not None:
            fast = getattr(self.kernels.backend, "rope", None)  # threaded C, in place (block kernels)
            if fast is None or not fast([q, k], *rope):
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if isinstance(cache, CacheBatch):  # several sequences: each attends over its own cache
            o = np.concatenate([self._attend(i, q[a:b], k[a:b], v[a:b], pos[a:b], sub)
                                for sub, a, b in cache.spans()])
        else:
            o = self._attend(i, q, k, v, pos, cache)
        return linear(o.reshape(T, c.num_heads * D), w[p + "wo"])

    def _attend(self, i: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray,
                cache: KVCache) -> np.ndarray:
        """Write one sequence's new keys/values ``[T, nkv, D]`` of layer ``i`` into ``cache`` and attend its queries
        ``[T, nh, D]`` (positions ``pos``) over it (the layer's window, if any): ``[T, nh, D]``."""
        c = self.config
        cache.write(i, k, v)
        window = c.window_of(i)
        end = int(pos[-1]) + 1
        start = 0 if not window else max(0, int(pos[0]) - window + 1)
        K, V = cache.view(i, start, end)
        return self.kernels.attention(q, K, V, pos, np.arange(start, end), window, c.attention_scale,
                                      c.attn_logit_softcap)

    def _qk_norm(self, x: np.ndarray, weight: QTensor) -> np.ndarray:
        """RMSNorm of queries or keys ``[T, heads, D]``: over each head's D values (Qwen3, ``qk_norm_per_head``)
        or over the whole projection (OLMoE)."""
        c = self.config
        if c.qk_norm_per_head:
            return rmsnorm(x, _vec(weight), c.rms_norm_eps)
        return rmsnorm(x.reshape(x.shape[0], -1), _vec(weight), c.rms_norm_eps).reshape(x.shape)

    def _bundled_ffn(self, i: int, h: np.ndarray) -> np.ndarray:
        """The FFN of a bundled layer ``i``: fetch group ``layers.{i}.ffn_bundled``, compute ``h`` ``[T, H]``
        through it (every neuron of a resident :class:`NeuronBundles`; a streaming source hands an object whose
        ``.ffn(x, act)`` computes the active neurons of its neuron window), release the group."""
        g, src = ffn_group(i), self.source
        try:
            t = src.get(g)[ffn_tensor(i)]
        except KeyError:
            raise BundleError(f"layer {i} has neither ffn.gate/up/down nor a bundled FFN group {g!r} (corrupt "
                              "manifest?); re-export the bundle") from None
        try:
            if isinstance(t, NeuronBundles):
                return dense_bundled_ffn(h, t, self.config.hidden_act, kernels=self.kernels)
            return t.ffn(h, self.config.hidden_act)
        finally:
            src.release(g)

    def _moe(self, i: int, w: dict[str, QTensor], p: str, h: np.ndarray) -> np.ndarray:
        """Sparse MoE block of layer ``i``: route, then fetch and run only the experts some token chose."""
        c, src, kern = self.config, self.source, self.kernels
        weights, idx = route(kern.linear(h, w[p + "router"]), c.num_experts_per_tok, c.norm_topk_prob)
        routed = [int(e) for e in np.unique(idx)]
        src.hint([expert_group(i, e) for e in routed])

        def run_expert(e: int, xs: np.ndarray) -> np.ndarray:
            g = expert_group(i, e)
            ew = src.get(g)
            pe = expert_prefix(i, e)
            y = swiglu(xs, ew[pe + "gate"], ew[pe + "up"], ew[pe + "down"], kernels=kern)
            src.release(g)
            self.stats.expert_fetches += 1
            return y

        out = combine_experts(h, weights, idx, run_expert)
        if c.shared_expert_intermediate_size:
            out += shared_expert(h, w[p + "shared.gate"], w[p + "shared.up"], w[p + "shared.down"],
                                 w[p + "shared_gate"], kernels=kern)
        return out

    # -- generation -------------------------------------------------------------------------------------------
    def generate(self, prompt_ids: Iterable[int], max_tokens: int, sampler: Sampler | None = None,
                 stop_ids: Iterable[int] = (), cache: KVCache | None = None) -> Iterator[int]:
        """Yield up to ``max_tokens`` new token ids after ``prompt_ids``. The prompt is processed in one batched
        step (timed as prefill), then one token per step (decode). Generation ends early, without yielding it,
        at the first token in ``stop_ids``. ``sampler`` defaults to greedy. A fresh cache sized
        ``len(prompt) + max_tokens`` is used unless ``cache`` is given (it then continues that sequence)."""
        prompt = np.asarray(list(prompt_ids), dtype=np.int64)
        if prompt.size == 0:
            raise OptionError("the prompt is empty: give at least one token (e.g. the BOS token)")
        if max_tokens < 0:
            raise OptionError(f"max_tokens must be >= 0, got {max_tokens}")
        if max_tokens == 0:
            return
        sampler = sampler or Sampler()
        stops = set(int(s) for s in stop_ids)
        if cache is None:
            cache = self.new_cache(prompt.size + max_tokens)

        t0 = time.perf_counter()
        logits = self.prefill(prompt, cache)
        self.stats.prefill_s += time.perf_counter() - t0
        self.stats.prefill_tokens += int(prompt.size)
        for n in range(max_tokens):
            tok = sampler.sample(logits[-1])
            if tok in stops:
                return
            yield tok
            if n + 1 == max_tokens:
                return
            t0 = time.perf_counter()
            logits = self.forward([tok], cache, last_only=True)
            self.stats.decode_s += time.perf_counter() - t0
            self.stats.decode_tokens += 1
