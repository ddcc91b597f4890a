"""End to end through the CLI: a Hugging Face checkpoint -> `edgespool export` -> `inspect` -> `run`, checked
against transformers' greedy continuation (f32) and for int8/int4 that the quantised run still works."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
import tiny_models  # noqa: E402


def es(*args):
    return subprocess.run([sys.executable, "-m", "edgespool", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def qwen2_moe_dir(tmp_path_factory):
    return tiny_models.make_hf_model("qwen2_moe", tmp_path_factory.mktemp("hf") / "qwen2moe")


def test_cli_export_run_matches_transformers_greedy(qwen2_moe_dir, tmp_path):
    out = tmp_path / "b"
    r = es("export", str(qwen2_moe_dir), "--target", "rpi5", "--quant", "f32", "-o", str(out), "--json",
           "--no-kernels")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["report"]["classes"]["shared_expert"]["tensors"] == 6
    from edgespool import load

    m = load(out)
    ids = m.encode("Once upon a time")
    r = es("run", str(out), "--prompt", "Once upon a time", "-n", "16", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["tokens"]
    want = tiny_models.hf_greedy(qwen2_moe_dir, ids, 16)
    eos = set(m.tokenizer.eos_token_ids)
    want = want[: next((k for k, t in enumerate(want) if t in eos), len(want))]
    assert got == want
    s = json.loads(es("inspect", str(out), "--json").stdout)
    assert s["target"] == "rpi5" and s["layers"][0]["experts"] == 4


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_cli_quantised_export_runs(qwen2_moe_dir, tmp_path, quant):
    out = tmp_path / quant
    r = es("export", str(qwen2_moe_dir), "--quant", quant, "--group-size", "32", "-o", str(out), "--no-kernels")
    assert r.returncode == 0, r.stderr
    assert "rel-RMSE" in r.stdout
    r = es("run", str(out), "-n", "8", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stats"]["prompt_tokens"] > 0


def test_cli_unsupported_architecture(tmp_path):
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    r = es("export", str(d), "-o", str(tmp_path / "b"))
    assert r.returncode == 1 and "GPT2LMHeadModel" in r.stderr and "LlamaForCausalLM" in r.stderr
    assert r.stderr.count("\n") == 1
