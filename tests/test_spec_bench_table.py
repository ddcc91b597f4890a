"""spec_bench's per-pass split (draft_s / verify_s per target pass) and its table columns."""
from __future__ import annotations

from edgespool.benchmarks.spec_bench import drafts, per_pass, table
from edgespool.runtime.decoder.speculative import SpecStats


def _stats() -> dict:
    st = SpecStats(passes=4, drafted=16, accepted=12, emitted=16, draft_s=2.0, verify_s=6.0, k_used=[4, 4, 4, 4])
    return st.to_dict()


def test_per_pass_divides_the_counters_by_the_passes():
    pp = per_pass(_stats())
    assert pp["draft_s_per_pass"] == 0.5 and pp["verify_s_per_pass"] == 1.5
    assert pp["tokens_per_pass"] == 4.0 and pp["drafted_per_pass"] == 4.0 and pp["draft_share"] == 0.25
    assert per_pass(None) == {} and per_pass({"passes": 0}) == {}
    assert per_pass({"passes": 3, "drafted": 9, "accepted": 8, "source": "llama-server timings"}) == {}


def test_table_prints_the_split_and_k_per_row():
    meta = {"profile": "rpi5", "date": "d", "cpu": "c", "n": 128, "draft_tokens": "4,8", "storage": {}}
    rows = [{"system": "edgespool-stream", "fraction": 4, "prompt": "code", "decode_tok_s": 0.5, "draft_tokens": 4},
            {"system": "edgespool-draft", "fraction": 4, "prompt": "code", "decode_tok_s": 1.0, "draft_tokens": 4,
             "speculative": _stats()},
            {"system": "edgespool-draft", "fraction": 4, "prompt": "code", "decode_tok_s": 1.2, "draft_tokens": 8,
             "speculative": _stats()}]
    lines = table(rows, meta).splitlines()
    head = [c.strip() for c in lines[2].split("|")]
    assert "draft s/pass" in head and "verify s/pass" in head and "k" in head
    body = [[c.strip() for c in ln.split("|")] for ln in lines[4:]]
    assert len(body) == 3  # k=4 and k=8 are separate rows
    d4 = body[1]
    assert d4[head.index("k")] == "4" and d4[head.index("x no-spec")] == "2.00"
    assert d4[head.index("draft s/pass")] == "0.500" and d4[head.index("verify s/pass")] == "1.500"
    assert body[0][head.index("k")] == "-" and body[0][head.index("draft s/pass")] == "-"
    assert drafts("llama-server-ngramk-norepack") and drafts("llama-server-draft")
    assert not drafts("llama-server-ngram-norepack") and not drafts("edgespool-stream")  # k does not apply


def test_server_spec_args_per_variant():
    from edgespool.benchmarks.spec_bench import server_spec_args

    assert server_spec_args("llama-server-draft-norepack", 8, "d.gguf") == [
        "-md", "d.gguf", "--spec-type", "draft-simple", "--spec-draft-n-max", "8"]
    assert server_spec_args("llama-server-ngramk", 4, "d")[-4:] == [
        "--spec-ngram-simple-size-n", "3", "--spec-ngram-simple-size-m", "4"]
    assert server_spec_args("llama-server-ngram-map-k-norepack", 4, "d") == ["--spec-type", "ngram-map-k"]
    import pytest

    with pytest.raises(SystemExit, match="unknown llama-server system"):
        server_spec_args("llama-server-medusa", 4, "d")


def test_rebound_and_auto_k_label():
    from edgespool.benchmarks.spec_bench import k_label, rebound

    meta = {"storage": {"bandwidth": 400e6}, "draft_tokens": "auto"}
    rows = [{"decode_tok_s": 1.0, "bound_tok_s": 0.5, "x_bound": 2.0}, {"decode_tok_s": 0.3}]
    rebound(rows, meta, 440e6)  # plan bytes/token = 400e6 / 0.5 = 800 MB: the bound at 440 MB/s is 0.55 tok/s
    assert abs(rows[0]["bound_tok_s"] - 0.55) < 1e-12 and abs(rows[0]["x_bound"] - 1 / 0.55) < 1e-12
    assert "x_bound" not in rows[1] and meta["bound_bandwidth"] == 440e6
    assert k_label({"draft_tokens": 0, "draft_tokens_max": 12}, meta) == "auto (<=12)"
    assert k_label({"draft_tokens": 8}, meta) == "8"


def test_run_list_orders_runs_and_pins_k():
    from edgespool.benchmarks.spec_bench import run_list

    assert run_list("edgespool-stream,edgespool-draft", [0, 8]) == [
        ("edgespool-stream", 0), ("edgespool-draft", 0), ("edgespool-draft", 8)]
    assert run_list("edgespool-draft-head4:8,edgespool-draft:auto,llama-server-plain-norepack", [4]) == [
        ("edgespool-draft-head4", 8), ("edgespool-draft", 0), ("llama-server-plain-norepack", 4)]
