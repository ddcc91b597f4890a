"""Speculative decoding (issue 16) on small random-weight models: KV rollback, one-pass verification reading each
streamed weight group once, greedy output identical to plain greedy, the accept/reject rule's output distribution
(chi-square against the exact target distribution), the drafters, adaptive k, the draft's share of the budget and
the one-line errors. Real-model greedy identity: test_speculative_real.py."""
from __future__ import annotations

import time

import numpy as np
import pytest

import offload_synth as syn
from edgespool.errors import BudgetError, BundleError, OptionError
from edgespool.offload.streaming_source import open_streaming
from edgespool.runtime.api import load
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.decoder.drafts import Draft, ModelDrafter, NgramDrafter, self_drafter
from edgespool.runtime.decoder.engine import Engine
from edgespool.runtime.decoder.sampling import Sampler
from edgespool.runtime.decoder.speculative import DraftLength, SpeculativeDecoder, _accept_sampled
from edgespool.runtime.decoder.weights import ResidentWeights
from edgespool.schedulers.memory_plan import minimum_budget

PROMPTS = [[1, 5, 9, 33, 5, 9, 33, 70, 5, 9], [1, 200, 3], [1, 7, 7, 7, 7, 7, 7], list(range(1, 40, 3)),
           [1, 100, 101, 102, 103, 100, 101]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(target, draft, other-vocabulary) dense bundles: the draft shares the target's tokenizer, other does not."""
    d = tmp_path_factory.mktemp("spec")
    t = syn.make_bundle(d / "target", syn.dense_config(layers=4, vocab=256, hidden=128), quant="f32", seed=0)
    s = syn.make_bundle(d / "draft", syn.dense_config(layers=2, vocab=256), quant="f32", seed=1)
    o = syn.make_bundle(d / "other", syn.dense_config(layers=2, vocab=300), quant="f32", seed=2)
    return t, s, o


def _engine(path) -> Engine:
    return Engine(ResidentWeights(Bundle(path)))


def _model_drafter(eng: Engine) -> ModelDrafter:
    return ModelDrafter("m", lambda t, c: eng.forward(t, c, last_only=True), eng.new_cache, eng.config.vocab_size)


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_truncate_forgets_rejected_positions(pair, dtype):
    eng = _engine(pair[0])
    eng.kv_dtype = dtype
    a, rejected, c = [1, 5, 9, 33], [40, 41, 42], [77, 78]
    cache = eng.new_cache(32)
    eng.forward(a, cache)
    eng.forward(rejected, cache)
    cache.truncate(len(a))
    got = eng.forward(c, cache)
    fresh = eng.new_cache(32)
    eng.forward(a, fresh)
    ref = eng.forward(c, fresh)
    np.testing.assert_array_equal(got, ref)  # the rejected keys/values are gone
    assert cache.length == len(a) + len(c)
    with pytest.raises(OptionError, match="truncate"):
        cache.truncate(cache.length + 1)


def test_verify_pass_reads_each_streamed_group_once(pair):
    """The streaming source's own read records: a pass over 5 positions reads exactly the groups (and bytes) a
    one-token pass reads, each streamed layer once per pass; only embedding rows grow with T."""
    from collections import Counter

    b = Bundle(pair[0])
    kw = dict(max_context=64, max_batch_tokens=16, logits_rows=8)
    sw = open_streaming(b, minimum_budget(b, None, **kw) + b.weights_nbytes // 3, adaptive_window=False, **kw)
    assert sw.plan.streamed_layers, "the test needs streamed layers"

    def reads(step, n=3):
        time.sleep(0.3)  # the read-ahead of the next pass's first layers lands before the count starts
        i0 = len(sw.store.records)
        for _ in range(n):
            step()
        time.sleep(0.3)
        got = [r for r in list(sw.store.records)[i0:] if r.group.startswith("layers.")]
        return Counter(r.group for r in got), sum(r.nbytes for r in got)

    try:
        eng = Engine(sw)
        cache = eng.new_cache(64)
        eng.prefill(np.array(PROMPTS[0]), cache)
        eng.forward([3], cache, last_only=True)  # steady state
        one = reads(lambda: eng.forward([3], cache))
        five = reads(lambda: eng.forward([4, 5, 6, 7, 8], cache))
        assert one == five and one[1] > 0
        assert set(one[0].values()) == {3}  # each streamed layer group once per pass
        assert eng.forward([4, 5, 6, 7, 8], cache).shape == (5, b.config.vocab_size)
    finally:
        sw.close()


@pytest.mark.parametrize("drafter", ["ngram", "model", "self", "same"])
def test_greedy_is_token_identical_to_plain_greedy(pair, drafter):
    eng = _engine(pair[0])
    d = {"ngram": lambda: NgramDrafter(), "model": lambda: _model_drafter(_engine(pair[1])),
         "self": lambda: self_drafter(eng, 2), "same": lambda: _model_drafter(_engine(pair[0]))}[drafter]()
    total = 0
    for prompt in PROMPTS:
        ref = list(eng.generate(prompt, 40))
        for k, adaptive in ((4, True), (3, False)):
            sd = SpeculativeDecoder(eng, d, k, adaptive=adaptive)
            assert list(sd.generate(prompt, 40)) == ref
            total += sd.stats.accepted
    if drafter == "same":  # the target drafting for itself: every draft accepted
        assert total > 0 and sd.stats.acceptance_rate == 1.0


def test_greedy_identical_streamed_with_a_draft_in_the_budget(pair):
    t, s, _ = pair
    budget = minimum_budget(Bundle(t), None, max_context=128, logits_rows=5) + Bundle(t).weights_nbytes // 2 \
        + Bundle(s).weights_nbytes + (12 << 20)
    with load(t) as m:
        refs = [list(m.generate_ids(p, 24, stop=[])) for p in PROMPTS[:3]]
    with load(t, memory_budget=budget, draft=str(s), draft_tokens=3, max_context=128) as m:
        plan = m.source.plan
        assert plan.reserved_bytes == m.draft.plan.total_bytes > 0 and plan.total_bytes <= budget
        assert "draft model draft" in plan.summary()
        for p, ref in zip(PROMPTS[:3], refs):
            assert list(m.generate_ids(p, 24, stop=[])) == ref
        assert m.stats.to_dict()["speculative"]["passes"] > 0
    with load(t, memory_budget=budget, draft="ngram", draft_tokens=4, max_context=128) as m:
        assert m.source.plan.logits_rows == 5  # the workspace holds a verify pass's logits
        for p, ref in zip(PROMPTS[:3], refs):
            assert list(m.generate_ids(p, 24, stop=[])) == ref


def _chi2_ok(counts: np.ndarray, probs: np.ndarray, n: int) -> bool:
    """Pearson chi-square at p = 0.001 (cells with expected < 5 pooled), via scipy when present."""
    exp = probs * n
    big = exp >= 5
    obs = np.append(counts[big], counts[~big].sum())
    ex = np.append(exp[big], exp[~big].sum())
    keep = ex > 0
    stat = float(((obs[keep] - ex[keep]) ** 2 / ex[keep]).sum())
    from scipy.stats import chi2

    return stat < chi2.ppf(0.999, int(keep.sum()) - 1)


def test_accept_reject_rule_gives_the_target_distribution():
    rng = np.random.default_rng(0)
    V, n = 12, 20000
    p_logits = rng.normal(size=(2, V)).astype(np.float32) * 2
    q = np.exp(rng.normal(size=V) * 2)
    q /= q.sum()
    sampler = Sampler(1.0, seed=1)
    p0 = sampler.probs(p_logits[0])
    counts = np.zeros(V)
    onehot = np.zeros(V)
    for i in range(n):
        x = int(rng.choice(V, p=q))
        _, tok = _accept_sampled(p_logits, Draft([x], [q]), sampler)
        counts[x if _ else tok] += 1  # the first emitted token
        _, tok2 = _accept_sampled(p_logits, Draft([3], None), sampler)  # a deterministic (one-hot) draft
        onehot[3 if _ else tok2] += 1
    assert _chi2_ok(counts, p0, n)
    assert _chi2_ok(onehot, p0, n)
    assert not _chi2_ok(np.bincount(rng.choice(V, size=n, p=q), minlength=V), p0, n)  # the test can fail


def test_sampled_speculative_output_follows_the_target(pair):
    """Joint distribution of generated tokens 1 and 2 (top-k 3, temperature 1.5) with a different draft model, vs the
    exact target distribution computed from the target's own logits."""
    eng, deng = _engine(pair[0]), _engine(pair[1])
    prompt = [1, 5, 9, 33]
    mk = lambda seed: Sampler(1.5, top_k=3, seed=seed)  # noqa: E731
    p1 = mk(0).probs(eng.forward(prompt, eng.new_cache(8), last_only=True)[0])
    exact: dict[tuple[int, int], float] = {}
    for x1 in np.flatnonzero(p1):
        c = eng.new_cache(8)
        eng.forward(prompt, c)
        l2 = eng.forward([int(x1)], c)[0]
        p2 = mk(0).probs(l2)
        for x2 in np.flatnonzero(p2):
            exact[(int(x1), int(x2))] = exact.get((int(x1), int(x2)), 0.0) + p1[x1] * p2[x2]
    sd = SpeculativeDecoder(eng, _model_drafter(deng), 2, adaptive=False)
    n = 1500
    seen: dict[tuple[int, int], int] = {}
    for s in range(n):
        out = list(sd.generate(prompt, 3, mk(s)))  # token 2 is a verified draft (k = 1), token 3 the bonus
        seen[(out[0], out[1])] = seen.get((out[0], out[1]), 0) + 1
    keys = sorted(exact)
    assert set(seen) <= set(keys)
    assert _chi2_ok(np.array([seen.get(k, 0) for k in keys], float), np.array([exact[k] for k in keys]), n)


def test_ngram_drafter_matches_transformers_prompt_lookup():
    torch = pytest.importorskip("torch")
    from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

    rng = np.random.default_rng(3)
    d = NgramDrafter(max_ngram=3, prefer="first")
    ref = PromptLookupCandidateGenerator(num_output_tokens=4, max_matching_ngram_size=3, max_length=10_000)
    for _ in range(200):
        ctx = [int(t) for t in rng.integers(0, 6, size=int(rng.integers(2, 30)))]
        cand, _ = ref.get_candidates(torch.tensor([ctx]))
        want = [int(t) for t in cand[0, len(ctx):]]
        assert d.propose(ctx, 4).tokens == want, ctx
    last = NgramDrafter(max_ngram=2)  # default: the most recent earlier occurrence
    assert last.propose([1, 2, 3, 9, 1, 2, 4, 8, 1, 2], 2).tokens == [4, 8]
    assert last.propose([1, 2, 3], 2).tokens == []


def test_adaptive_draft_length_follows_the_measured_costs():
    def run(verify_of_T, draft_s, acceptance):
        ch = DraftLength(8)
        for i in range(60):
            k = ch.choose()
            toks = list(range(k))
            ch.observe(k, Draft(toks, None, draft_s * k), int(round(acceptance * k)), verify_of_T(k + 1))
            if k == 0:  # measure a one-token pass too
                ch.observe(0, Draft([]), 0, verify_of_T(1))
        return ch.choose()

    streamed = run(lambda T: 1.0 + 0.01 * T, 0.0, 0.6)  # a pass costs the same for any small T
    resident = run(lambda T: 0.1 * T, 0.0, 0.6)  # a pass costs T times a token
    assert streamed >= 6 and resident <= 3
    assert run(lambda T: 1.0, 2.0, 0.9) == 0  # a draft token costs more than a target pass: do not draft
    assert DraftLength(5, adaptive=False).choose() == 5


def test_load_errors_are_one_line(pair, tmp_path):
    t, s, other = pair
    with pytest.raises(BundleError, match=r"draft .*other.* does not share the tokenizer of .*target.*vocabulary") as e:
        load(t, draft=str(other))
    assert "\n" not in str(e.value)
    for bad in (0, 33, True, 2.5):
        with pytest.raises(OptionError, match="--draft-tokens"):
            load(t, draft="ngram", draft_tokens=bad)
    with pytest.raises(OptionError, match="not a bundle directory"):
        load(t, draft=str(tmp_path / "nope"))
    with pytest.raises(OptionError, match="self:"):
        load(t, draft="self:x")
    b = Bundle(t)
    with pytest.raises(BudgetError, match="draft .* needs .* below the target's minimum"):
        load(t, memory_budget=Bundle(s).weights_nbytes // 4 + (9 << 20), draft=str(s),
             draft_budget=Bundle(s).weights_nbytes + (8 << 20), max_context=64)
    with pytest.raises(OptionError, match="streams"):  # self-drafting from streamed layers is refused
        load(t, memory_budget=minimum_budget(b, None, max_context=64, logits_rows=5) + b.weights_nbytes // 3,
             draft="self:2", max_context=64)


def test_cli_draft_flags(pair):
    import json
    import subprocess
    import sys

    t, s, other = pair

    def es(*args):
        return subprocess.run([sys.executable, "-m", "edgespool", "run", str(t), "--prompt", "t5 t9 t33 t5 t9", *args],
                              capture_output=True, text=True, timeout=300)

    plain = es("-n", "16", "--json", "--ignore-eos")
    assert plain.returncode == 0, plain.stderr
    for extra in (["--draft", "ngram"], ["--draft", str(s), "--draft-tokens", "3"],
                  ["--draft", str(s), "--memory-budget", "64MiB", "--plan"]):
        r = es("-n", "16", "--json", "--ignore-eos", *extra)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["tokens"] == json.loads(plain.stdout)["tokens"]
        assert json.loads(r.stdout)["stats"]["speculative"]["passes"] > 0
    assert "reserved" in r.stderr and "draft model" in r.stderr  # --plan shows the draft inside the budget
    for extra, msg in ((["--draft", "ngram", "--draft-tokens", "0"], "--draft-tokens 0"),
                       (["--draft", "ngram", "--draft-tokens", "1000"], "--draft-tokens 1000"),
                       (["--draft", str(other)], "does not share the tokenizer"),
                       (["--draft-tokens", "3"], "only apply with --draft")):
        r = es(*extra)
        assert r.returncode != 0 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
