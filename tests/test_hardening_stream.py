"""Issue 13, defect 8: a weights file rewritten in place while a model streams from it (same inode, same size) is
caught at the next read -- the checked read compares size, mtime and ctime before and after every checked read --
instead of computing with whatever bytes the file holds now (the CRC covers only a group's first read with
``verify="first"``, and never the per-token embedding row reads)."""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
from conftest import make_synth_bundle
from edgespool.errors import StorageError
from edgespool.offload.streaming_source import open_streaming
from edgespool.runtime.bundle.checked_read import CheckedFile
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.decoder.engine import Engine
from edgespool.schedulers.memory_plan import minimum_budget

PROMPT = [1, 5, 9, 13]


@pytest.fixture(scope="module")
def src_bundle(tmp_path_factory):
    return make_synth_bundle(tmp_path_factory.mktemp("s") / "b", quant="int8").path


def _rewrite_in_place(path, offset: int, n: int) -> None:
    """Overwrite ``n`` bytes at ``offset`` with their complement: same inode, same size."""
    time.sleep(0.02)  # a later clock tick than the last check (kernels before 6.13 stamp coarse times)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(n)
        f.seek(offset)
        f.write(bytes(x ^ 0xFF for x in b))


def test_checked_file_sees_an_in_place_rewrite(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes())
    ino = os.stat(p).st_ino
    with CheckedFile(p, direct=False) as f:
        buf = np.empty(4096, np.uint8)
        f.read_into(4096, buf, "group 'layers.1'")
        _rewrite_in_place(p, 8192, 16)
        assert os.stat(p).st_ino == ino and os.stat(p).st_size == 1 << 16
        with pytest.raises(StorageError, match=r"w.bin: weights file was modified while running \(reading group "
                                               r"'layers.1' at offset 4096"):
            f.read_into(4096, buf, "group 'layers.1'")
        # an unchecked read (the caller checks elsewhere) still reads
        assert f.read_into(4096, buf, "group 'layers.1'", check=False) == 4096


def test_stream_rewritten_mid_run_is_a_storage_error(src_bundle, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(src_bundle, d)
    b = Bundle(d)
    budget = minimum_budget(b, None, max_context=32)
    src = open_streaming(b, budget, verify="first", max_context=32)
    try:
        assert 1 in src.plan.streamed_layers, src.plan.streamed_layers  # layers.1 is read per token
        eng = Engine(src)
        cache = eng.new_cache(32)
        eng.forward(PROMPT, cache)  # every streamed group read (and CRC-checked) once
        g = b.groups["layers.1"]
        _rewrite_in_place(b.weights_path, g.offset + 64, 256)
        with pytest.raises(StorageError, match=r"weights.bin: weights file was modified while running"):
            for t in range(3):
                eng.forward([t + 2], cache)
    finally:
        src.close()
