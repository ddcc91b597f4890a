"""Continuous batching (Engine.forward_batch, runtime/serving/scheduler.py) against per-sequence Engine.forward:

* a batch of sequences with different prompt lengths / positions (prompt chunks mixed with decode tokens) gives the
  logits each sequence gets alone: bit-identical with the real SmolLM2 int8 bundle's C block kernels (row-wise),
  to float rounding with the numpy f32 reference on the synthetic MoE (BLAS blocks rows differently);
* a streamed model reads each group once per batched step for all sequences (the source's fetch counts);
* the scheduler: concurrent requests give the same greedy tokens as one-at-a-time generation, requests join and
  leave between steps, the queue bound raises QueueFull, a cancel takes effect before the next step, prompt +
  max_tokens over a slot is refused up front, slots come out of the plan's KV cache when streaming.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from edgespool import load
from edgespool.errors import BudgetError, OptionError
from edgespool.runtime.serving.scheduler import QueueFull, Scheduler

from serving_common import smol_bundle


def _alone(engine, prompts, extra):
    """Each sequence alone: logits after its prompt, then after each of its ``extra`` tokens."""
    out = []
    for p, more in zip(prompts, extra):
        c = engine.new_cache(64)
        rows = [engine.forward(p, c, last_only=True)[0]]
        for t in more:
            rows.append(engine.forward([t], c, last_only=True)[0])
        out.append(rows)
    return out


def _batched(engine, prompts, extra):
    """The same through forward_batch, the sequences staggered: sequence j starts at step j (its prompt in the
    same pass as the others' decode tokens)."""
    caches = [engine.new_cache(64) for _ in prompts]
    got: list[list[np.ndarray]] = [[] for _ in prompts]
    steps = max(j + 1 + len(e) for j, e in enumerate(extra))
    for s in range(steps):
        seqs, who = [], []
        for j, (p, e) in enumerate(zip(prompts, extra)):
            k = s - j  # 0: prompt, 1..: extra tokens
            if 0 <= k <= len(e):
                seqs.append((p if k == 0 else [e[k - 1]], caches[j]))
                who.append(j)
        for j, row in zip(who, engine.forward_batch(seqs)):
            got[j].append(row)
    return got


def _case(vocab):
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, vocab, n).tolist() for n in (7, 3, 12)]
    extra = [rng.integers(0, vocab, n).tolist() for n in (4, 6, 2)]
    return prompts, extra


def test_forward_batch_bit_identical_real_model(tmp_path_factory):
    m = load(smol_bundle(tmp_path_factory))
    try:
        prompts, extra = _case(m.config.vocab_size)
        ref, got = _alone(m.engine, prompts, extra), _batched(m.engine, prompts, extra)
        for r, g in zip(ref, got):
            assert len(r) == len(g)
            for a, b in zip(r, g):
                np.testing.assert_array_equal(a, b)
    finally:
        m.close()


def test_forward_batch_matches_forward_synthetic_moe(synth_bundle):
    m = load(synth_bundle)
    prompts, extra = _case(m.config.vocab_size)
    for r, g in zip(_alone(m.engine, prompts, extra), _batched(m.engine, prompts, extra)):
        for a, b in zip(r, g):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
            assert int(np.argmax(a)) == int(np.argmax(b))


def test_streamed_batch_reads_each_group_once_per_step(synth_bundle):
    m = load(synth_bundle, memory_budget="64MiB", max_context=128)
    src = m.source
    calls: list[str] = []
    orig = src.get

    def counting(g):
        calls.append(g)
        return orig(g)

    src.get = counting
    caches = [m.engine.new_cache(16) for _ in range(4)]
    m.engine.forward_batch([([1, 2, 3], caches[0]), ([4], caches[1]), ([5, 6], caches[2]), ([7], caches[3])])
    layer_gets = [g for g in calls if g.startswith("layers.") and ".experts." not in g]
    assert sorted(layer_gets) == sorted(f"layers.{i}" for i in range(m.config.num_layers))  # once each
    m.close()


def test_forward_batch_refuses_bad_batches(synth_bundle):
    m = load(synth_bundle)
    c = m.engine.new_cache(8)
    with pytest.raises(OptionError, match="same KV cache twice"):
        m.engine.forward_batch([([1], c), ([2], c)])
    with pytest.raises(OptionError, match="context length exceeded"):
        m.engine.forward_batch([(list(range(9)), c)])


def _collect(sched, req):
    done = threading.Event()
    events = []

    def emit(ev):
        events.append(ev)
        if ev[0] in ("done", "error"):
            done.set()

    job = sched.submit(req, emit)
    return job, events, done


def test_scheduler_same_tokens_as_one_at_a_time(tmp_path_factory):
    m = load(smol_bundle(tmp_path_factory))
    try:
        prompts = ["The capital of France is", "def add(a, b):", "Once upon a time", "1, 2, 3, 4,"]
        ref = ["".join(m.generate(p, 12)) for p in prompts]
        sched = Scheduler(m, parallel=3, queue_size=4)
        jobs = [_collect(sched, m.request(p, 12)) for p in prompts]  # the 4th waits for a slot
        rows = []
        while any(not d.is_set() for _, _, d in jobs):
            rows.append(sched.step())
        assert max(rows) >= 3  # sequences really shared passes
        for (job, events, _), r in zip(jobs, ref):
            assert events[-1][0] == "done", events[-1]
            assert "".join(e[1] for e in events if e[0] == "text") == r
            assert events[-1][1]["usage"]["completion_tokens"] == job.generated
        assert sched.metrics.requests_finished == 4
    finally:
        m.close()


def test_scheduler_queue_cancel_and_limits(tmp_path_factory):
    m = load(smol_bundle(tmp_path_factory))
    try:
        sched = Scheduler(m, parallel=2, queue_size=1, context=2 * 256)
        assert sched.slot_context == 256 and "2 slots x 256 KV positions" in sched.describe()
        with pytest.raises(OptionError, match="exceed the 256 positions of a slot"):
            sched.submit(m.request("hello", 300), lambda ev: None)
        a = _collect(sched, m.request("Tell me a long story", 64))
        b = _collect(sched, m.request("Another story", 64))
        c = _collect(sched, m.request("Queued", 8))  # two free slots + one queue place
        with pytest.raises(QueueFull):
            sched.submit(m.request("One too many", 8), lambda ev: None)
        sched.step()
        sched.step()
        sched.cancel(a[0])
        n_before = a[0].generated
        sched.step()  # a leaves before this step; c takes its slot
        assert a[0].done and a[0].generated == n_before and a[1][-1][1]["finish_reason"] == "cancelled"
        assert c[0] in sched._active
        while not (b[2].is_set() and c[2].is_set()):
            sched.step()
        assert sched.metrics.requests_cancelled == 1 and sched.busy == 0
    finally:
        m.close()


def test_streamed_slots_come_from_the_plan(synth_bundle):
    m = load(synth_bundle, memory_budget="64MiB", max_context=200)
    s = Scheduler(m, parallel=4)
    assert s.context == 200 and s.slot_context == 50
    with pytest.raises(BudgetError, match="exceeds the memory plan's KV cache of 200"):
        Scheduler(m, parallel=4, context=400)
    with pytest.raises(BudgetError, match="lower --parallel"):
        Scheduler(m, parallel=40)
    m.close()
