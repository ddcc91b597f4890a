"""Issue 13, defects 6 and 11 (run / bench side): contexts, max tokens, seeds and output files are checked before
any work starts, with the numbers of the model and the memory plan in the message, and never as ``internal
error:``. The API refuses at the call (``Model.generate_ids`` validates eagerly), the CLI before loading weights
where the bundle's manifest is enough to decide."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_synth_bundle
from edgespool.apps.cli import cli
from edgespool.errors import OptionError
from edgespool.runtime.api import load
from edgespool.runtime.bundle.reader import Bundle
from edgespool.schedulers.memory_plan import minimum_budget

CTX = 2048  # the synthetic model's max_position_embeddings


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    p = make_synth_bundle(tmp_path_factory.mktemp("cli") / "b", quant="int8").path
    assert Bundle(p).config.max_position_embeddings == CTX
    return p


def _cli(*args: str):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert "internal error" not in r.output, r.output
    assert "Traceback" not in r.output, r.output
    return r


def _fails(*args: str, match: tuple[str, ...]):
    r = _cli(*args)
    assert r.exit_code in (1, 2), (r.exit_code, r.output)
    for m in match:
        assert m in r.output, (m, r.output)
    return r


# -- run ------------------------------------------------------------------------------------------------------------
def test_run_negative_seed_names_the_option(bundle):
    _fails("run", bundle, "--seed", "-1", "-n", "2", match=("--seed", "-1", ">= 0"))


def test_run_huge_max_tokens_refused_before_load(bundle, monkeypatch):
    from edgespool.runtime import api

    def no_load(*a, **k):  # the manifest alone decides: no weights are read
        raise AssertionError("load() called for a request the model cannot hold")

    monkeypatch.setattr(api, "load", no_load)
    _fails("run", bundle, "-n", str(2**62), match=("-n 4611686018427387904", f"context of {CTX} tokens"))
    _fails("run", bundle, "-n", "-3", match=("-n -3", ">= 0"))


def test_run_max_tokens_over_planned_context(bundle, monkeypatch):
    from edgespool.runtime import api

    monkeypatch.setattr(api, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    _fails("run", bundle, "--memory-budget", "64MiB", "--max-context", "8", "-n", "50",
           match=("-n 50", "--max-context 8"))


def test_run_invalid_utf8_prompt_names_the_option(bundle):
    bad = b"caf\xff\xfe".decode("utf-8", "surrogateescape")  # what Python makes of such bytes in argv
    _fails("run", bundle, "--prompt", bad, "-n", "2", match=("--prompt", "UTF-8"))
    _fails("run", bundle, "--chat", "--system", bad, "--prompt", "hi", "-n", "2", match=("--system", "UTF-8"))


def test_run_prompt_longer_than_context_resident(bundle):
    t0 = time.perf_counter()
    r = _fails("run", bundle, "--prompt", "x " * 3000, "-n", "4", match=(f"context of {CTX} tokens", "prompt"))
    import re

    m = re.search(r"prompt (\d+) tokens \+ max_tokens 4 = (\d+) positions", r.output)
    assert m and int(m[1]) > CTX and int(m[2]) == int(m[1]) + 4, r.output
    assert time.perf_counter() - t0 < 30


def test_run_prompt_longer_than_plan_streaming(bundle):
    b = Bundle(bundle)
    lo = minimum_budget(b, None, max_context=16)
    r = _fails("run", bundle, "--memory-budget", str(lo + (1 << 20)), "--max-context", "16", "--prompt", "x " * 40,
               "-n", "4", match=("16 positions", "memory plan"))
    assert "prompt" in r.output


# -- the API ----------------------------------------------------------------------------------------------------
def test_api_checks_at_the_call(bundle):
    m = load(bundle)
    try:
        V = m.config.vocab_size
        # every one of these raises at the call, before a generator exists (no cache, no forward pass)
        with pytest.raises(OptionError, match=rf"max_tokens 4611686018427387904 .* context of {CTX} tokens"):
            m.generate_ids("hello", 2**62)
        with pytest.raises(OptionError, match=r"seed must be an integer >= 0"):
            m.generate_ids("hello", 2, seed=-1)
        with pytest.raises(OptionError, match=r"max_tokens must be an integer >= 0"):
            m.generate_ids("hello", 2.5)
        with pytest.raises(OptionError, match=r"max_tokens must be an integer >= 0"):
            m.generate_ids("hello", True)
        with pytest.raises(OptionError, match=rf"token id {V} .* vocabulary \(0\.\.{V - 1}\)"):
            m.generate_ids([1, 2, V], 2)
        with pytest.raises(OptionError, match=r"prompt is not valid UTF-8"):
            m.generate_ids(b"caf\xff", 2)
        with pytest.raises(OptionError, match=r"prompt is not valid UTF-8"):
            m.generate("caf\udcff", 2)
        with pytest.raises(OptionError, match=r"temperature"):
            m.generate_ids("hello", 2, temperature=float("nan"))
        # and a good request still works (bytes are UTF-8 text, like str)
        assert list(m.generate_ids(b"hello", 3, stop=[])) == list(m.generate_ids("hello", 3, stop=[]))
    finally:
        m.close()


def test_api_streaming_context_refused_with_plan_numbers(bundle):
    b = Bundle(bundle)
    lo = minimum_budget(b, None, max_context=16)
    m = load(bundle, memory_budget=lo + (1 << 20), max_context=16)
    try:
        assert m.engine.max_context == 16
        with pytest.raises(OptionError, match=r"= 30 positions exceed the memory plan's KV cache of 16 positions"):
            m.generate_ids(list(range(1, 11)), 20)
        assert len(list(m.generate_ids(list(range(1, 11)), 6, stop=[]))) == 6  # 16 positions fit exactly
    finally:
        m.close()


# -- bench ------------------------------------------------------------------------------------------------------
@pytest.fixture()
def no_bench(monkeypatch):
    import edgespool.runtime.bench as rb

    def refuse(*a, **k):
        raise AssertionError("the benchmark ran although its options were invalid")

    monkeypatch.setattr(rb, "bench_bundle", refuse)


def test_bench_json_out_into_missing_folder_refused_first(bundle, tmp_path, no_bench):
    out = tmp_path / "missing" / "x.json"
    _fails("bench", bundle, "--json-out", out, "-n", "2", "--prompt-tokens", "4",
           match=("--json-out", "missing", "does not exist"))
    (tmp_path / "adir").mkdir()
    _fails("bench", bundle, "--json-out", tmp_path / "adir", "-n", "2", match=("--json-out", "is a directory"))
    f = tmp_path / "file"
    f.write_text("x")
    _fails("bench", bundle, "--plot", f / "p.png", "-n", "2", match=("--plot", "not a directory"))


def test_bench_prompt_tokens_over_context_refused_first(bundle, no_bench):
    _fails("bench", bundle, "--prompt-tokens", "100000", "-n", "2",
           match=("--prompt-tokens 100000", f"context of {CTX} tokens"))
    _fails("bench", bundle, "--seed", "-1", "-n", "2", "--prompt-tokens", "4", match=("--seed", ">= 0"))
    _fails("bench", bundle, "--prompt-tokens", "0", match=("--prompt-tokens",))
    _fails("bench", bundle, "--io-threads", "0", match=("--io-threads 0", ">= 1"))
    _fails("bench", bundle, "--neuron-window", "-1", match=("--neuron-window -1", ">= 1"))
    _fails("bench", bundle, "--neuron-capacity", "nan", match=("--neuron-capacity nan",))


def test_run_image_on_a_decoder_bundle_is_refused(bundle, tmp_path):
    _fails("run", bundle, "--image", tmp_path / "cat.png", "-n", "2", match=("--image", "decoder bundle"))


def test_bench_json_out_written(bundle, tmp_path):
    out = tmp_path / "r.json"
    r = _cli("bench", bundle, "--json-out", out, "-n", "2", "--prompt-tokens", "4", "--quiet")
    assert r.exit_code == 0, r.output
    import json

    res = json.loads(out.read_text())
    assert res["prompt_tokens"] == 4


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to make a write fail with ENOSPC")
def test_bench_json_out_disk_full_keeps_the_figures(bundle):
    r = _fails("bench", bundle, "--json-out", "/dev/full", "-n", "2", "--prompt-tokens", "4",
               match=("--json-out /dev/full", "No space left on device"))
    assert "decode" in r.output and "tok/s" in r.output  # the measured figures were printed first


def test_perplexity_text_must_be_a_regular_file(bundle, tmp_path):
    _fails("perplexity", bundle, "--text", "/dev/zero", "--ctx", "8", match=("--text /dev/zero", "not a regular file"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block forever
    _fails("perplexity", bundle, "--text", fifo, "--ctx", "8", match=("fifo", "not a regular file"))
    d = tmp_path / "d"
    d.mkdir()
    _fails("perplexity", bundle, "--text", d, match=("not a regular file",))
