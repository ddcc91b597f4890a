"""The `edgespool` CLI: exit codes (0 ok / 1 error / 2 usage), one-line errors, --json output, the demo."""
import json
import os
import subprocess
import sys


from conftest import make_synth_bundle


def es(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "edgespool", *args], capture_output=True, text=True, env=e,
                          timeout=600)


def test_targets_json_lists_every_profile():
    r = es("targets", "--json")
    assert r.returncode == 0, r.stderr
    names = [t["name"] for t in json.loads(r.stdout)]
    assert names == ["host", "rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "x86-avx2", "intel-n100",
                     "mcu-m4", "mcu-m7"]
    rpi5 = json.loads(es("targets", "rpi5", "--json").stdout)
    assert rpi5["storage"][0]["medium"] == "nvme" and rpi5["storage"][0]["read_bandwidth"] == 440_000_000
    assert rpi5["tvm_target"]["mtriple"] == "aarch64-linux-gnu"


def test_unknown_target_is_one_line_error_exit_1():
    r = es("targets", "pi9")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0
    assert "unknown target 'pi9'" in r.stderr and "rpi5" in r.stderr and "Traceback" not in r.stderr


def test_usage_error_exit_2():
    assert es("run").returncode == 2
    assert es("export", "x", "--quant", "int3", "-o", "y").returncode == 2


def test_missing_path_errors(tmp_path):
    r = es("export", str(tmp_path / "nope"), "-o", str(tmp_path / "b"))
    assert r.returncode == 1 and "nope: no such file or directory" in r.stderr
    r = es("run", str(tmp_path / "nope"))
    assert r.returncode == 1 and "no such bundle directory" in r.stderr
    (tmp_path / "junk.bin").write_bytes(b"hello")
    r = es("export", str(tmp_path / "junk.bin"), "-o", str(tmp_path / "b"))
    assert r.returncode == 1 and "not a Hugging Face checkpoint directory or a GGUF file" in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = es("--debug", "inspect", str(tmp_path / "nope"))
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_inspect_and_run_json(tmp_path):
    b = make_synth_bundle(tmp_path / "b", quant="int4").path
    r = es("inspect", str(b), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["model"]["arch"] == "mixtral" and len(s["layers"]) == 2 and s["layers"][0]["experts"] == 4
    assert s["schemes"]["int4"]["tensors"] > 0
    txt = es("inspect", str(b)).stdout
    assert "per expert" in txt and "rel-RMSE" in txt
    r = es("run", str(b), "--prompt", "Once upon a time", "-n", "8", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["tokens"]) <= 8 and out["stats"]["prompt_tokens"] > 0
    # same seed, same sampled text
    a = json.loads(es("run", str(b), "-n", "8", "-t", "0.9", "--seed", "3", "--json").stdout)["tokens"]
    c = json.loads(es("run", str(b), "-n", "8", "-t", "0.9", "--seed", "3", "--json").stdout)["tokens"]
    assert a == c


def _no_torch_env(tmp_path, **extra):
    """HOME in tmp_path and torch/transformers unimportable: the demo must need neither."""
    blocker = tmp_path / "block"
    blocker.mkdir(exist_ok=True)
    for mod in ("torch", "transformers"):
        (blocker / f"{mod}.py").write_text(f"raise ImportError('demo must not import {mod}')")
    return {"PYTHONPATH": str(blocker), "HOME": str(tmp_path), **extra}


def test_demo_synthetic_runs_without_torch(tmp_path):
    env = _no_torch_env(tmp_path)
    r = es("demo", "--synthetic", "-n", "8", "--json", env=env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["random_weights"] is True and d["decode_tok_s"] > 0 and d["peak_rss_bytes"] > 0
    assert d["bundle_bytes"] > 0 and len(d["tokens"]) == 8
    txt = es("demo", "--synthetic", "-n", "4", env=env)
    assert txt.returncode == 0 and "RANDOM" in txt.stdout and "tok/s" in txt.stdout


def test_demo_chats_with_the_real_model_without_torch(tmp_path):
    from edgespool.apps.assets import cache_dir

    env = _no_torch_env(tmp_path, EDGESPOOL_ASSETS=str(cache_dir()))  # the shared asset cache (fetched once)
    r = es("demo", "-n", "24", "--json", env=env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"] == "smollm2-135m" and d["random_weights"] is False and d["decode_tok_s"] > 0
    assert "Paris" in d["text"], d["text"]  # a trained model answers the demo's question
    txt = es("demo", "-n", "8", env=env)
    assert txt.returncode == 0 and "assistant:" in txt.stdout and "RANDOM" not in txt.stdout


def test_demo_offline_falls_back_to_the_synthetic_model_and_says_so(tmp_path):
    env = _no_torch_env(tmp_path, EDGESPOOL_ASSETS=str(tmp_path / "empty"), PIP_NO_INDEX="1", PIP_FIND_LINKS="",
                        PIP_CONFIG_FILE="/dev/null")
    r = es("demo", "-n", "4", env=env)
    assert r.returncode == 0, r.stderr
    assert "falling back to the synthetic" in r.stdout and "RANDOM" in r.stdout
