"""A GPU budget where no GPU can be used (CI: no CuPy / no device): a stated CPU fallback, the same tokens as the
CPU-only run; bad budgets are one-line errors. Skipped where a CUDA device is usable (tests/test_gpu_split.py
covers that)."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from edgespool.offload.gpu_ops import gpu_status

    if gpu_status()[0] is not None:
        pytest.skip("a CUDA device is usable here: the fallback does not apply")
    from edgespool.benchmarks.gpu_split_bench import export_synth

    return export_synth(tmp_path_factory.mktemp("fb") / "b", "int8", vocab_size=512, hidden_size=64,
                        intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                        max_position_embeddings=256)


def test_load_gpu_memory_falls_back_with_reason(bundle):
    from edgespool import load
    from edgespool.offload.gpu_ops import gpu_status

    why = gpu_status()[1]
    with load(bundle) as cpu, load(bundle, gpu_memory="1GiB") as m:
        assert m.gpu_fallback == why and ("CuPy" in why or "CUDA" in why)
        assert cpu.gpu_fallback is None
        ids = [5, 9, 200, 7]
        assert list(m.generate_ids(ids, 6, stop=[])) == list(cpu.generate_ids(ids, 6, stop=[]))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgespool", *args], capture_output=True, text=True, timeout=120)


def test_cli_run_and_bench_state_the_fallback(bundle):
    r = _cli("run", str(bundle), "--gpu-budget", "1GiB", "--plan", "-n", "3")
    assert r.returncode == 0, r.stderr
    assert "[gpu] running on the CPU only:" in r.stderr
    r = _cli("bench", str(bundle), "--gpu-budget", "1GiB", "--json", "-n", "3", "--prompt-tokens", "4")
    assert r.returncode == 0, r.stderr
    import json

    res = json.loads(r.stdout)
    assert res["gpu_fallback"] and res["decode_tok_s"] > 0 and "placement" not in res


@pytest.mark.parametrize("cmd", ["run", "bench"])
def test_cli_bad_gpu_budget_is_one_line(bundle, cmd):
    r = _cli(cmd, str(bundle), "--gpu-budget", "lots", "-n", "2")
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "--gpu-budget" in lines[0] and "Traceback" not in r.stderr


def test_zero_copy_without_a_gpu_budget_is_one_line(bundle):
    from edgespool import load
    from edgespool.errors import OptionError

    with pytest.raises(OptionError, match="gpu_zero_copy"):
        load(bundle, gpu_zero_copy=True)
    with pytest.raises(OptionError, match="gpu_moe"):
        load(bundle, gpu_moe=True)
    r = _cli("run", str(bundle), "--gpu-zero-copy", "-n", "2")
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "--gpu-zero-copy" in lines[0] and "Traceback" not in r.stderr
    r = _cli("run", str(bundle), "--gpu-budget", "1GiB", "--gpu-zero-copy", "-n", "3")  # no GPU: the stated fallback
    assert r.returncode == 0 and "[gpu] running on the CPU only:" in r.stderr, r.stderr
