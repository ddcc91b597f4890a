"""The Python API as a new user meets it (runtime/api.py, runtime/decoder/sampling.py, runtime/serving/text.py):

* unknown keyword arguments of load() / generate() / chat() are refused, naming the valid ones; streaming options
  without a budget are refused; n_threads sets the C block kernels' pool;
* stop strings: matched on decoded text across token boundaries, the stop text not emitted (the reference: the
  full greedy text, cut before the first occurrence, as llama-cpp-python does); stop ids;
* a prompt longer than the context is refused up front, fast (a ~40k-token prompt for an 8k model);
* repeat / frequency / presence penalties against transformers' RepetitionPenaltyLogitsProcessor, OpenAI's
  documented formula and (when installed) llama.cpp's own penalties sampler;
* multi-turn prefix KV reuse: a second turn reuses the cache and gives exactly the tokens a fresh model gives.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from edgespool import load
from edgespool.errors import OptionError
from edgespool.runtime.decoder.sampling import Sampler
from edgespool.runtime.serving.text import StopText

from serving_common import smol_bundle


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    m = load(smol_bundle(tmp_path_factory))
    yield m
    m.close()


def test_load_refuses_unknown_keywords(synth_bundle):
    with pytest.raises(OptionError, match=r"unknown option 'memry_budget'; valid options: .*memory_budget"):
        load(synth_bundle, memry_budget="1MiB")
    with pytest.raises(OptionError, match="max_context only applies when streaming"):
        load(synth_bundle, max_context=64)
    with pytest.raises(OptionError, match="n_threads must be an integer >= 1"):
        load(synth_bundle, n_threads=0)
    # every streaming option the planner / source take is accepted by name
    m = load(synth_bundle, memory_budget="64MiB", max_context=64, io_threads=1)
    assert m.engine.max_context == 64
    m.close()


def test_generate_refuses_unknown_keywords(synth_bundle):
    m = load(synth_bundle)
    for call in (lambda: m.generate("hi", 4, temprature=0.5), lambda: m.generate_ids([1, 2], 4, topk=3),
                 lambda: m.chat([{"role": "user", "content": "x"}], 4, stops=["x"]),
                 lambda: m.create_completion("hi", bogus=1)):
        with pytest.raises(OptionError, match=r"unknown option '\w+'; valid options: .*temperature"):
            call()
    with pytest.raises(OptionError, match="stop: 1.5 is neither a string nor a token id"):
        m.generate_ids([1, 2], 4, stop=[1.5])
    with pytest.raises(OptionError, match="repeat_penalty must be > 0"):
        m.generate_ids([1, 2], 4, repeat_penalty=0)


def test_n_threads_sets_block_kernel_pool(tmp_path_factory):
    m = load(smol_bundle(tmp_path_factory), n_threads=1)
    try:
        assert ", 1 threads," in m.kernels.description, m.kernels.description
    finally:
        m.close()


def test_stop_strings_across_token_boundaries(smol):
    prompt = "The capital of France is"
    ids = list(smol.generate_ids(prompt, 40))  # EOS stops it, as it stops every call below (stop strings keep EOS)
    pieces = [smol.tokenizer.decode(ids[:i + 1]) for i in range(len(ids))]
    full = smol.tokenizer.decode(ids)
    # a stop string that spans a token boundary: the end of one token's text + the start of the next's
    k = next(i for i in range(2, len(ids) - 2) if len(pieces[i]) - len(pieces[i - 1]) >= 2
             and len(pieces[i + 1]) - len(pieces[i]) >= 2)
    stop = full[len(pieces[k]) - 2:len(pieces[k]) + 2]
    assert len(smol.tokenizer.decode([ids[k]])) >= 2 and stop not in smol.tokenizer.decode([ids[k]])
    got = "".join(smol.generate(prompt, 40, stop=[stop]))
    assert got == full[:full.index(stop)]
    assert smol.stats.finish_reason == "stop"
    # two stops: the earliest wins; a stop that never occurs changes nothing
    assert "".join(smol.generate(prompt, 40, stop=["\u2603never", stop])) == full[:full.index(stop)]
    assert "".join(smol.generate(prompt, 40, stop=["\u2603never"])) == full
    assert smol.stats.finish_reason == ("length" if len(ids) == 40 else "stop")  # 40 tokens, or EOS before them
    # a stop id ends generation before that token (which is not yielded)
    assert list(smol.generate_ids(prompt, 40, stop=[ids[5]])) == ids[:ids.index(ids[5])]


def test_stop_text_holds_back_partial_matches():
    s = StopText(["</end>"])
    out = [s.push(p) for p in ["abc<", "/e", "nd", ">tail"]]
    assert out == ["abc", "", "", ""] and s.stopped == "</end>"
    s = StopText(["</end>"])
    assert [s.push(p) for p in ["a</", "b"]] == ["a", "</b"] and s.flush() == ""
    s = StopText(["xy"])
    assert s.push("ax") == "a" and s.flush() == "x"


def test_long_prompt_refused_up_front_and_fast(smol):
    text = "All work and no play makes Jack a dull boy. " * 4000  # ~44k tokens for an 8192-token model
    t0 = time.perf_counter()
    with pytest.raises(OptionError, match=r"prompt \d+ tokens \+ max_tokens 16 = \d+ positions exceed the model's "
                                          r"context of 8192 tokens"):
        smol.generate(text, 16)
    assert time.perf_counter() - t0 < 30  # encoding only: no cache, no forward pass
    with pytest.raises(OptionError, match="exceed the model's context"):
        smol.create_chat_completion([{"role": "user", "content": text}], max_tokens=16)
    with pytest.raises(OptionError, match="exceed the model's context"):
        smol.generate("hi", 9000)


LOGITS = np.random.default_rng(0).normal(0, 3, size=200).astype(np.float32)
HISTORY = [3, 7, 7, 12, 3, 3, 150, 7, 199, 0]


def test_repeat_penalty_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers import RepetitionPenaltyLogitsProcessor

    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([HISTORY]), torch.tensor(LOGITS)[None])[0].numpy()
    got = Sampler(repeat_penalty=1.3, repeat_last_n=-1, history=HISTORY).penalize(LOGITS)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_frequency_presence_penalties_openai_formula():
    # OpenAI: mu[j] -> mu[j] - c[j] * alpha_frequency - float(c[j] > 0) * alpha_presence
    c = np.bincount(HISTORY[-6:], minlength=LOGITS.size).astype(np.float32)
    ref = LOGITS - c * 0.4 - (c > 0) * 0.7
    got = Sampler(frequency_penalty=0.4, presence_penalty=0.7, repeat_last_n=6, history=HISTORY).penalize(LOGITS)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    s = Sampler(repeat_penalty=2.0, repeat_last_n=0, history=HISTORY)  # 0 = no window
    np.testing.assert_array_equal(s.penalize(LOGITS), LOGITS)


@pytest.mark.llamacpp
def test_penalties_match_llamacpp_sampler():
    """llama.cpp's llama_sampler_penalties (last_n window, repeat/frequency/presence) on the same logits and
    history, through llama-cpp-python's C API."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp")
    # llama.cpp's -1 ("the context") is resolved by its callers; the sampler gets a count: 1000 covers the history
    for last_n, rep, freq, pres in ((64, 1.3, 0.0, 0.0), (4, 1.1, 0.5, 0.25), (-1, 0.8, 0.2, 0.0)):
        smpl = llama_cpp.llama_sampler_init_penalties(LOGITS.size, 1000 if last_n < 0 else last_n, rep, freq, pres)
        for t in HISTORY:
            llama_cpp.llama_sampler_accept(smpl, t)
        data = (llama_cpp.llama_token_data * LOGITS.size)(
            *[llama_cpp.llama_token_data(i, float(v), 0.0) for i, v in enumerate(LOGITS)])
        arr = llama_cpp.llama_token_data_array(data, LOGITS.size, -1, False)
        llama_cpp.llama_sampler_apply(smpl, ctypes.byref(arr))
        ref = np.array([data[i].logit for i in range(LOGITS.size)], dtype=np.float32)
        llama_cpp.llama_sampler_free(smpl)
        assert not np.array_equal(ref, LOGITS)
        got = Sampler(repeat_penalty=rep, repeat_last_n=last_n, frequency_penalty=freq, presence_penalty=pres,
                      history=HISTORY).penalize(LOGITS)
        np.testing.assert_allclose(got, ref, rtol=1e-6, err_msg=str((last_n, rep, freq, pres)))


def test_penalty_changes_greedy_generation(smol):
    plain = list(smol.generate_ids("Repeat after me: la la la la la", 24))
    pen = list(smol.generate_ids("Repeat after me: la la la la la", 24, repeat_penalty=1.8, frequency_penalty=0.5))
    assert plain != pen
    assert len(set(pen)) > len(set(plain))  # fewer repeats


def test_multi_turn_reuses_the_kv_prefix_exactly(tmp_path_factory, smol):
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    r1 = smol.create_chat_completion(msgs, max_tokens=12, temperature=0)
    msgs2 = msgs + [r1["choices"][0]["message"], {"role": "user", "content": "And a fruit?"}]
    r2 = smol.create_chat_completion(msgs2, max_tokens=12, temperature=0)
    cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= r1["usage"]["prompt_tokens"]  # the whole first prompt at least
    assert r2["timings"]["prompt_n"] == r2["usage"]["prompt_tokens"] - cached  # only the new turn was computed
    fresh = load(smol_bundle(tmp_path_factory))
    try:
        ref = fresh.create_chat_completion(msgs2, max_tokens=12, temperature=0)
        assert ref["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    finally:
        fresh.close()
    assert r2["choices"][0]["message"]["content"] == ref["choices"][0]["message"]["content"]
    smol.reset()
    r3 = smol.create_chat_completion(msgs2, max_tokens=12, temperature=0)
    assert r3["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_turn_that_outgrows_the_kept_cache_still_reuses_its_prefix(tmp_path_factory, smol):
    """Turn 1 sizes the kept KV cache (prompt + max_tokens, rounded up to 1024 positions); turn 2 asks for more
    than that: the conversation's positions move into the larger cache (not recomputed), and the reply is a fresh
    model's (full prefill) reply to the same conversation."""
    smol.reset()
    msgs = [{"role": "user", "content": "Name a colour."}]
    r1 = smol.create_chat_completion(msgs, max_tokens=900, temperature=0)
    size1 = smol._kv.max_len
    msgs2 = msgs + [r1["choices"][0]["message"], {"role": "user", "content": "And a fruit?"}]
    r2 = smol.create_chat_completion(msgs2, max_tokens=size1, temperature=0)  # prompt + max_tokens > size1
    assert smol._kv.max_len > size1
    cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= r1["usage"]["prompt_tokens"]
    fresh = load(smol_bundle(tmp_path_factory))
    try:
        ref = fresh.create_chat_completion(msgs2, max_tokens=size1, temperature=0)
    finally:
        fresh.close()
    assert r2["choices"][0]["message"]["content"] == ref["choices"][0]["message"]["content"]
    smol.reset()


def test_completion_shapes(smol):
    r = smol.create_completion("def add(a, b):", max_tokens=10, temperature=0)
    assert r["object"] == "text_completion" and r["choices"][0]["finish_reason"] in ("stop", "length")
    u = r["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["completion_tokens"] <= 10
    chunks = list(smol.create_completion("def add(a, b):", max_tokens=10, temperature=0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == r["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == r["choices"][0]["finish_reason"]
    msgs = [{"role": "user", "content": "Say hello."}]
    c = smol.create_chat_completion(msgs, max_tokens=16, temperature=0)
    assert c["object"] == "chat.completion" and c["choices"][0]["message"]["role"] == "assistant"
    st = list(smol.create_chat_completion(msgs, max_tokens=16, temperature=0, stream=True))
    assert st[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(x["choices"][0]["delta"].get("content", "") for x in st) == c["choices"][0]["message"]["content"]
    assert st[-1]["choices"][0]["finish_reason"] == c["choices"][0]["finish_reason"]
    assert st[-1]["usage"]["completion_tokens"] == c["usage"]["completion_tokens"]


def test_interleaved_generators_refused(smol):
    a = smol.generate("One", 8)
    next(a)
    b = smol.generate("Two", 8)
    next(b)
    with pytest.raises(OptionError, match="another generation started"):
        list(a)
    list(b)
