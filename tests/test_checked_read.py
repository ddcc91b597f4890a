"""The one checked-read primitive (runtime/bundle/checked_read.py): bytes equal to a plain read of the file for
aligned and unaligned offsets, single and scatter reads, O_DIRECT and buffered modes; every fault (short read of a
truncated file, EIO, removed or replaced file, closed file) a StorageError naming the file, what was read and the
offset; and no descriptor or memory left behind: not by a failed O_DIRECT probe, not over 100 load/generate/close
cycles of a streamed and of a resident bundle."""
from __future__ import annotations

import errno
import fcntl
import gc
import mmap
import os

import numpy as np
import pytest

import offload_synth as syn
from edgespool.errors import BundleError, StorageError
from edgespool.runtime.bundle.checked_read import (IOV_MAX, MODE_BUFFERED, MODE_DIRECT, CheckedFile,
                                                   fault_from_env, timed_sequential_read)
from edgespool.runtime.bundle.reader import Bundle

SIZE = (1 << 20) + 12345  # not a multiple of 512: the file's tail is an unaligned partial block


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture()
def data_file(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    p = tmp_path / "weights.bin"
    p.write_bytes(data)
    return p, data


def _plain(path, offset, n) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        out = b""
        while len(out) < n:
            chunk = os.read(fd, n - len(out))
            if not chunk:
                break
            out += chunk
        return out
    finally:
        os.close(fd)


def _no_direct_open(monkeypatch):
    """Make the filesystem refuse O_DIRECT at open (as some FUSE/overlay filesystems do)."""
    real = os.open

    def fake(path, flags, *a, **k):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", fake)


def _no_direct_read(monkeypatch):
    """Let O_DIRECT open succeed but every O_DIRECT read fail (the probe fails)."""
    real = os.preadv

    def fake(fd, bufs, offset, *a):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, bufs, offset, *a)

    monkeypatch.setattr(os, "preadv", fake)


# -- bytes --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("direct", [None, False])
def test_reads_equal_a_plain_read(data_file, direct):
    path, data = data_file
    before = _fds()
    with CheckedFile(path, direct) as f:
        assert f.mode == (MODE_BUFFERED if direct is False else f.mode)
        assert f.mode in (MODE_DIRECT, MODE_BUFFERED) and f.direct == (f.mode == MODE_DIRECT)
        aligned = mmap.mmap(-1, 1 << 16)
        for off in (0, 4096, 1 << 19):  # aligned offset, page-aligned buffer: the O_DIRECT path
            assert f.read_into(off, aligned, "group 'a'") == 1 << 16
            assert bytes(aligned) == _plain(path, off, 1 << 16)
        for off, n in ((1, 100), (1000, 5000), (4095, 70000), (SIZE - 10, 10)):  # unaligned offset / length
            buf = np.zeros(n, np.uint8)
            assert f.read_into(off, buf, "group 'b'") == n
            assert buf.tobytes() == data[off: off + n] == _plain(path, off, n)
        raw = np.zeros(8192 + 1, np.uint8)
        assert f.read_into(8192, raw[1:], "group 'c'") == 8192  # unaligned buffer address
        assert raw[1:].tobytes() == data[8192: 16384]
        # scatter reads: more buffers than IOV_MAX (batched), then buffers of mixed, unaligned sizes
        slots = np.frombuffer(mmap.mmap(-1, (IOV_MAX + 37) * 512), np.uint8).reshape(-1, 512)
        assert f.read_into(512, list(slots), "layer 0 neurons 1..") == slots.nbytes
        assert slots.tobytes() == data[512: 512 + slots.nbytes]
        parts = [np.zeros(n, np.uint8) for n in (7, 4096, 1, 3000, 512)]
        assert f.read_into(333, parts, "tensor 'x'") == sum(p.nbytes for p in parts)
        assert b"".join(p.tobytes() for p in parts) == data[333: 333 + sum(p.nbytes for p in parts)]
        # a buffer running past the end of the file: ``need`` says how much must be there
        tail = mmap.mmap(-1, 8192)
        off = SIZE // 4096 * 4096
        assert f.read_into(off, tail, "group 'last'", need=SIZE - off) == SIZE - off
        assert tail[: SIZE - off] == data[off:]
        assert f.read_into(0, np.zeros(0, np.uint8), "nothing") == 0
    assert _fds() == before


def test_direct_required_where_possible(data_file):
    path, data = data_file
    try:
        f = CheckedFile(path, direct=True)
    except StorageError as e:
        pytest.skip(f"this filesystem refuses O_DIRECT: {e}")
    with f:
        assert f.mode == MODE_DIRECT
        buf = mmap.mmap(-1, 4096)
        f.read_into(4096, buf, "group 'a'")
        assert bytes(buf) == data[4096: 8192]


def test_tmpfs_reads_equal(tmp_path):
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    p = f"/dev/shm/edgespool-checked-read-{os.getpid()}"
    data = os.urandom(20000)
    with open(p, "wb") as fh:
        fh.write(data)
    try:
        for direct in (None, False):
            with CheckedFile(p, direct) as f:  # tmpfs: O_DIRECT only on recent kernels, else buffered
                buf = np.zeros(9000, np.uint8)
                f.read_into(4096, buf, "group 'a'")
                assert buf.tobytes() == data[4096: 13096]
    finally:
        os.unlink(p)


@pytest.mark.parametrize("refuse", [_no_direct_open, _no_direct_read])
def test_filesystem_without_o_direct_falls_back_to_buffered_without_leaking(data_file, monkeypatch, refuse):
    path, data = data_file
    before = _fds()
    refuse(monkeypatch)
    with pytest.raises(StorageError, match="O_DIRECT reads are not possible here"):
        CheckedFile(path, direct=True)
    assert _fds() == before
    f = CheckedFile(path)
    assert f.mode == MODE_BUFFERED and _fds() == before + 1  # the failed probe's descriptor was closed
    buf = mmap.mmap(-1, 4096)
    f.read_into(4096, buf, "group 'a'")
    assert bytes(buf) == data[4096: 8192]
    f.close()
    f.close()  # idempotent
    assert _fds() == before


def test_bandwidth_probe_reads_the_file(data_file):
    path, _ = data_file
    before = _fds()
    marks, mode = timed_sequential_read(path, chunk=1 << 18, max_s=5.0)
    assert sum(n for _, n in marks) == SIZE and mode in (MODE_DIRECT, MODE_BUFFERED)
    marks, _ = timed_sequential_read(path, chunk=1 << 18, max_s=0.2, wrap=True)
    assert marks and all(n == 1 << 18 for _, n in marks)
    assert _fds() == before


def test_rate_limiter_and_fault_hook_apply_once_per_read(data_file):
    path, _ = data_file
    asked, calls = [], []

    class Limiter:
        def acquire(self, n):
            asked.append(n)

    with CheckedFile(path, limiter=Limiter(), fault=lambda g, off: calls.append((g, off))) as f:
        f.read_into(8192, [np.zeros(100, np.uint8), np.zeros(412, np.uint8)], "group 'g'", group="g", base=4096)
        f.read_into(0, np.zeros(10, np.uint8), "tensor 't'")  # names no group: no hook call
    assert asked == [512, 10] and calls == [("g", 4096)]


# -- faults -------------------------------------------------------------------------------------------------------
def test_short_read_of_a_truncated_file_names_file_group_and_offset(data_file):
    path, _ = data_file
    with CheckedFile(path) as f:
        os.truncate(path, 100_000)
        buf = mmap.mmap(-1, 8192)
        with pytest.raises(StorageError) as ei:
            f.read_into(98304, buf, "group 'layers.3'", check=False)
        msg = str(ei.value)
        assert str(path) in msg and "group 'layers.3'" in msg and "offset 98304" in msg and "truncated" in msg
        with pytest.raises(StorageError, match=r"truncated to 100000 bytes .*group 'layers.3' at offset 98304"):
            f.read_into(98304, buf, "group 'layers.3'")  # checked before the read


@pytest.mark.parametrize("kind,match", [("eio", r"read error in group 'layers.3' at offset 12288 \(injected"),
                                        ("short", r"truncated while reading group 'layers.3' \(short read at "
                                                  r"offset 12288")])
def test_injected_fault_is_a_storage_error(data_file, kind, match):
    path, _ = data_file
    with CheckedFile(path, fault=fault_from_env(f"{kind}:layers.3:2")) as f:
        buf = mmap.mmap(-1, 4096)
        f.read_into(12288, buf, "group 'layers.3'", group="layers.3", base=12288)  # 1st read: fine
        f.read_into(16384, buf, "group 'layers.3'", group="layers.3", base=12288)  # not the group's first byte
        with pytest.raises(StorageError, match=match) as ei:
            f.read_into(12288, buf, "group 'layers.3'", group="layers.3", base=12288)
        assert str(path) in str(ei.value)
    with pytest.raises(StorageError, match="expected KIND:GROUP"):
        fault_from_env("boom:layers.3")


@pytest.mark.parametrize("how", ["replace", "remove"])
def test_replaced_or_removed_file_is_a_storage_error(data_file, how):
    path, data = data_file
    before = _fds()
    f = CheckedFile(path)
    buf = np.zeros(5000, np.uint8)
    f.read_into(100, buf, "group 'layers.1'")
    if how == "replace":
        new = path.with_name("new.bin")
        new.write_bytes(data)
        os.replace(new, path)
        match = r"replaced while running \(reading group 'layers.1' at offset 100\)"
    else:
        os.unlink(path)
        match = r"removed while running \(reading group 'layers.1' at offset 100\)"
    with pytest.raises(StorageError, match=match) as ei:
        f.read_into(100, buf, "group 'layers.1'")
    assert str(path) in str(ei.value)
    f.close()
    with pytest.raises(StorageError, match="closed"):
        f.read_into(0, buf, "group 'layers.1'")
    assert _fds() == before


def test_missing_file(tmp_path):
    with pytest.raises(StorageError, match="missing.bin: cannot open weights file"):
        CheckedFile(tmp_path / "missing.bin")
    with pytest.raises(StorageError, match="cannot open weights file"):
        CheckedFile(tmp_path / "missing.bin", direct=False)


def test_bundle_read_group_io_errors_are_storage_errors(tmp_path):
    import shutil

    src = syn.make_bundle(tmp_path / "src", syn.dense_config(layers=2))
    shutil.copytree(src, tmp_path / "b")
    b = Bundle(tmp_path / "b")
    g = b.groups["layers.1"]
    os.truncate(b.weights_path, g.offset + 10)
    with pytest.raises(StorageError, match=rf"weights.bin: .*truncated.*group 'layers.1'.*offset {g.offset}"):
        b.read_group("layers.1")
    assert issubclass(StorageError, Exception) and not issubclass(StorageError, BundleError)


# -- no leaks -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return syn.make_bundle(tmp_path_factory.mktemp("leak") / "dense", syn.dense_config(layers=4))


def _cycle(path, budget):
    import edgespool

    kw = dict(max_context=32, max_batch_tokens=8) if budget is not None else {}
    m = edgespool.load(path, memory_budget=budget, **kw)
    try:
        toks = list(m.generate_ids([1, 17, 42, 99], max_tokens=3, stop=[]))
        if budget is not None:
            assert m.source.plan.streamed_layers and m.source.store.bytes_read > 0
    finally:
        m.close()
    return toks


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "resident"])
def test_no_descriptor_or_memory_leak_over_100_cycles(dense, streamed):
    budget = None
    if streamed:
        from edgespool.schedulers.memory_plan import minimum_budget

        b = Bundle(dense)
        budget = minimum_budget(b, None, max_context=32, max_batch_tokens=8) + b.groups["layers.0"].nbytes + 4096
    ref = _cycle(dense, budget)
    for _ in range(5):  # warm-up: imports, allocator pools, kernel caches
        _cycle(dense, budget)
    gc.collect()
    fds, rss = _fds(), _rss()
    for _ in range(100):
        assert _cycle(dense, budget) == ref
    gc.collect()
    assert _fds() == fds
    assert _rss() - rss < 4 << 20, f"RSS grew by {(_rss() - rss) >> 10} KiB over 100 cycles"


def test_neuron_window_prototype_closes_the_descriptor_of_a_failed_probe(tmp_path, monkeypatch):
    from edgespool.benchmarks.neuron_window import NeuronWindow, write_neuron_file

    rng = np.random.default_rng(0)
    layers = [{"up": rng.standard_normal((64, 32)).astype(np.float32),
               "down": rng.standard_normal((32, 64)).astype(np.float32)}]
    write_neuron_file(tmp_path / "n.bin", "relu", layers, "f32")
    ref = NeuronWindow(tmp_path / "n.bin", capacity=8)
    want = ref.ffn(0, np.ones(32, np.float32), [1, 2, 5])
    ref.close()
    before = _fds()
    _no_direct_read(monkeypatch)  # O_DIRECT open works, the probe read fails
    nw = NeuronWindow(tmp_path / "n.bin", capacity=8)
    try:
        assert nw.stats()["io"] == "buffered" and _fds() == before + 1
        np.testing.assert_array_equal(nw.ffn(0, np.ones(32, np.float32), [1, 2, 5]), want)
    finally:
        nw.close()
    assert _fds() == before
