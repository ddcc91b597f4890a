"""The AMX prefill tiles of the q8_0 / int8 x16 weights (kernels/c_src/blockpack_amx.h).

Everywhere: the Sapphire Rapids build compiles with the AMX code and, on a CPU without AMX, says so (``es_amx`` 0,
label without "amx") without executing a tile instruction. On an AMX host (the lent GPU machine's Xeon): the host
build's self-check passed (``es_amx`` 1), and its prefill on AMX equals, bit for bit, the same library with
``EDGESPOOL_AMX=0`` (the AVX-512 VNNI tiles, checked against numpy and llama.cpp's numerics elsewhere) and the
float64 numpy model, over row counts that are not multiples of 16 and activation rows 16 k + 0..15."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgespool.kernels import c_blocks
from test_blockpack_avx2 import _cpu_flags
from test_kernels_blocks import _weight, q8_rounded, rel

AMX = {"amx_tile", "amx_int8"} <= _cpu_flags()
SHAPES = ((40, 96), (301, 896), (129, 1536))
MS = (1, 15, 16, 17, 35, 64)


def test_sapphirerapids_build_has_amx_code_and_reports_this_cpu(tmp_path):
    lib = tmp_path / "spr.so"
    rec = c_blocks.compile_library({"mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids"}, lib, cache_dir=tmp_path)
    assert "-march=sapphirerapids" in rec["flags"]
    assert b"es_amx" in lib.read_bytes()
    so = ctypes.CDLL(str(lib))
    so.es_isa.restype = ctypes.c_char_p
    if not AMX:  # only cpuid runs: no tile instruction on a CPU without AMX
        assert so.es_amx() == 0 and so.es_isa().decode() == "avx512-vnni+x16"


def _prefill(lib: str, out: str) -> None:
    """Child: every shape x m of SHAPES / MS through the library at ``lib``; writes the outputs to ``out``."""
    k = c_blocks.BlockKernels(Path(lib), threads=2)
    rng = np.random.default_rng(7)
    res = {}
    for scheme in ("q8_0", "int8"):
        for rows, n in SHAPES:
            w = _weight(rng, scheme, rows, n)
            p = k.prepare_weight(w)
            for m in MS:
                x = rng.standard_normal((m, n)).astype(np.float32)
                res[f"{scheme}/{rows}/{n}/{m}"] = k.linear(x, p)
    np.savez(out, amx=np.array(int(k._lib.es_amx())), **res)
    k.close()


@pytest.mark.skipif(not AMX, reason="this CPU has no AMX-INT8 (cpuinfo amx_tile / amx_int8)")
def test_amx_prefill_bit_identical_to_avx512_tiles_and_numpy(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPOOL_AMX", "1")  # opt-in (not faster than the AVX-512 tiles where measured)
    lib = c_blocks.host_library(cache_dir=tmp_path)
    so = ctypes.CDLL(str(lib))
    so.es_isa.restype = ctypes.c_char_p
    assert so.es_amx() == 1, f"AMX build {so.es_isa().decode()}: the self-check or the kernel's permission failed"
    assert so.es_isa().decode() == "avx512-vnni+amx+x16"
    here = str(Path(__file__).parent)
    outs = {}
    for amx in ("1", "0"):
        out = tmp_path / f"amx{amx}.npz"
        env = dict(os.environ, EDGESPOOL_AMX=amx, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
        subprocess.run([sys.executable, "-c", f"import test_blockpack_amx as t; t._prefill({str(lib)!r}, {str(out)!r})"],
                       check=True, env=env, cwd=here, timeout=600)
        outs[amx] = np.load(out)
    assert int(outs["1"]["amx"]) == 1 and int(outs["0"]["amx"]) == 0
    rng = np.random.default_rng(7)  # the children's weights and inputs again, for the numpy model
    for scheme in ("q8_0", "int8"):
        for rows, n in SHAPES:
            w = _weight(rng, scheme, rows, n)
            wf = w.dequantize().astype(np.float64)
            for m in MS:
                x = rng.standard_normal((m, n)).astype(np.float32)
                key = f"{scheme}/{rows}/{n}/{m}"
                np.testing.assert_array_equal(outs["1"][key], outs["0"][key], err_msg=key)
                assert rel(outs["1"][key], q8_rounded(x) @ wf.T) < 2e-6, key
