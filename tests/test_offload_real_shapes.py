"""Streaming on a real model (SmolLM2-135M, tied 49k-vocabulary head, GGUF blocks kept as stored): at the minimum
working set the embedding rows are read per token and the head streams in row chunks, and the logits equal the
resident engine's bit for bit (same kernels, f32 KV); q8_0/f16 KV and a too-long context are handled clearly."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgespool.errors import OptionError
from edgespool.offload.streaming_source import StreamingWeights
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.decoder.engine import Engine
from edgespool.runtime.decoder.weights import ResidentWeights
from edgespool.schedulers.memory_plan import minimum_budget, plan_memory

GGUF = Path.home() / ".cache/edgespool/assets/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = [1, 9690, 314, 253, 1130, 28, 339, 2575, 5765, 30, 378, 1345, 314, 8, 198, 2, 1]


@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    if not GGUF.exists():
        pytest.skip(f"real model not fetched ({GGUF}); run `edgespool fetch smollm2-135m`")
    out = tmp_path_factory.mktemp("real") / "smollm2"
    subprocess.run([sys.executable, "-m", "edgespool", "export", str(GGUF), "-q", "keep", "--no-kernels", "-o",
                    str(out)], check=True, capture_output=True)
    return Bundle(out)


def _run(source, n=4, chunk=None):
    eng = Engine(source, kv_dtype="f32", prefill_chunk=chunk)
    cache = eng.new_cache(64)
    logits = [eng.prefill(np.asarray(PROMPT), cache)]
    for _ in range(n):
        logits.append(eng.forward([int(np.argmax(logits[-1][-1]))], cache, last_only=True))
    return logits


def test_minimum_streams_embedding_rows_and_head_chunks_exactly(smollm):
    kw = dict(max_context=64, kv_dtype="f32", max_batch_tokens=8)
    lo = minimum_budget(smollm, None, **kw)
    plan = plan_memory(smollm, None, lo, **kw)
    assert plan.embed_streamed and plan.head_streamed and plan.head_tensor == "embed"  # tied: one tensor
    assert plan.total_bytes <= lo and plan.max_batch_tokens == 8
    ref = _run(ResidentWeights(smollm), chunk=plan.max_batch_tokens)
    sw = StreamingWeights(smollm, plan)
    try:
        got = _run(sw)
        st = sw.stats()
    finally:
        sw.close()
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)
    assert st["pool_bytes"] <= plan.total_bytes
    # the head really went through the window in chunks: 17 prompt tokens = 3 prefill chunks of 8 (the head only
    # after the last), then 4 decode steps
    n_chunks = -(-smollm.config.vocab_size // plan.head_chunk_rows)
    assert n_chunks > 1
    assert st["window"]["requests"] == 3 * smollm.config.num_layers + 5 * n_chunks + 4 * smollm.config.num_layers


def test_kv_dtypes_and_context_errors(smollm):
    for dt in ("f16", "q8_0"):
        p = plan_memory(smollm, None, "200MiB", max_context=64, kv_dtype=dt)
        sw = StreamingWeights(smollm, p)
        try:
            eng = Engine(sw)
            assert eng.kv_dtype == dt
            lg = eng.prefill(np.asarray(PROMPT), eng.new_cache(32))
            ref = _run(ResidentWeights(smollm), n=0)[0]
            assert int(np.argmax(lg)) == int(np.argmax(ref))  # close to f32, not bit-equal
        finally:
            sw.close()
    with pytest.raises(OptionError, match="longer than the context"):
        plan_memory(smollm, None, "200MiB", max_context=smollm.config.max_position_embeddings + 1)
    with pytest.raises(OptionError, match="--kv-dtype 'q4'"):
        plan_memory(smollm, None, "200MiB", kv_dtype="q4")


def test_perplexity_streamed_equals_resident(smollm):
    from edgespool.runtime.perplexity import engine_perplexity, perplexity

    ids = [int(t) for t in np.random.default_rng(0).integers(2, smollm.config.vocab_size, 64)]
    kw = dict(max_context=32, kv_dtype="f32", max_batch_tokens=8, logits_rows=8)
    plan = plan_memory(smollm, None, minimum_budget(smollm, None, **kw), **kw)
    assert plan.head_streamed and plan.embed_streamed
    sw = StreamingWeights(smollm, plan)
    try:
        streamed = engine_perplexity(Engine(sw), ids, ctx=32, bos=1)
    finally:
        sw.close()
    res = ResidentWeights(smollm)
    same_pieces = engine_perplexity(Engine(res, kv_dtype="f32", prefill_chunk=8), ids, ctx=32, bos=1)
    assert streamed.ppl == same_pieces.ppl and streamed.scored == 2 * 15
    # the resident command's way (one pass, [ctx, V] logits): the same figure up to BLAS blocking
    eng = Engine(res)
    whole = perplexity(lambda c: eng.forward(c, eng.new_cache(len(c))), ids, ctx=32, bos=1)
    assert abs(whole.ppl - streamed.ppl) <= 1e-4 * whole.ppl
