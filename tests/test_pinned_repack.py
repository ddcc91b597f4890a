"""Pinned layer groups of a streaming run in the C block kernels' packed layout (offload/pinned_repack.py): a plan
that pins every layer runs the resident engine's layout and numbers inside its own pool bytes; a plan that streams
layers keeps all of them stored; a region too small for the packed tensors is left untouched."""
from __future__ import annotations

import numpy as np
import pytest

from edgespool.kernels.block_pack import PackedQTensor
from edgespool.offload.pinned_repack import repack_in_place
from edgespool.offload.streaming_source import open_streaming
from edgespool.runtime.api import resolve_kernels
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.decoder.engine import Engine
from edgespool.runtime.decoder.weights import ResidentWeights
from serving_common import smol_bundle

KW = dict(max_context=32, kv_dtype="f32", max_batch_tokens=8)
PROMPT = [1, 504, 3458, 314, 260, 1345]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    b = Bundle(smol_bundle(tmp_path_factory))
    kern = resolve_kernels(b, True)
    if not getattr(kern.backend, "can_pack", False):
        pytest.skip("the bundle's C block kernels cannot pack on this CPU")
    return b, kern


def _logits(source, kern) -> np.ndarray:
    eng = Engine(source, kern, kv_dtype="f32")
    cache = eng.new_cache(32)
    out = [eng.forward(PROMPT, cache, last_only=True)[-1]]
    for t in (17, 42, 99):
        out.append(eng.forward([t], cache, last_only=True)[-1])
    return np.stack(out)


def test_every_layer_pinned_runs_packed_with_the_resident_numbers(smol):
    b, kern = smol
    want = _logits(ResidentWeights(b), kern)
    src = open_streaming(Bundle(b.path), 4 * b.weights_nbytes, kernels=kern, **KW)
    try:
        assert not src.plan.streamed_layers
        got = _logits(src, kern)
        layer = src.get("layers.3")
        assert any(type(t) is PackedQTensor for t in layer.values())
        assert src.stats()["pinned_bytes_used"] <= src.plan.total_bytes  # still inside the plan's pool
    finally:
        src.close()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_a_plan_that_streams_layers_keeps_every_layer_stored(smol):
    b, kern = smol
    src = open_streaming(Bundle(b.path), b.weights_nbytes // 3, kernels=kern, **KW)
    try:
        assert src.plan.streamed_layers and src.plan.pinned_groups
        Engine(src, kern, kv_dtype="f32")  # hands the source the kernels' prepare_weight
        for g in src.plan.pinned_groups:
            assert not any(type(t) is PackedQTensor for t in src.get(g).values()), g
    finally:
        src.close()


def test_repack_keeps_the_products_and_refuses_a_small_region(smol):
    b, kern = smol
    stored = ResidentWeights(b).get("layers.0")
    buf = np.zeros(sum(t.nbytes for t in stored.values()) + 64 * (2 * len(stored) + 1), np.uint8)
    # copy the group into a region of its own, as the pool holds it
    tensors, off = {}, 0
    for n, t in stored.items():
        d = buf[off: off + t.data.nbytes]
        d[:] = t.data.reshape(-1).view(np.uint8)
        off += t.data.nbytes
        s = None
        if t.scale is not None:
            s = buf[off: off + t.scale.nbytes]
            s[:] = t.scale.reshape(-1).view(np.uint8)
            off += t.scale.nbytes
            s = s.view(t.scale.dtype).reshape(t.scale.shape)
        tensors[n] = type(t)(t.scheme, tuple(t.shape), d.view(t.data.dtype).reshape(t.data.shape), s, t.group_size)
    before = buf.copy()
    assert repack_in_place(tensors, buf[:64], kern.backend.prepare_weight) is None  # too small: untouched
    assert (buf == before).all()
    got = repack_in_place(tensors, buf, kern.backend.prepare_weight)
    assert got is not None and set(got) == set(stored)
    x = np.random.default_rng(0).standard_normal((3, b.config.hidden_size)).astype(np.float32)
    for n, t in stored.items():
        if len(t.shape) == 2 and t.shape[1] == x.shape[1]:
            assert type(got[n]) is PackedQTensor
            np.testing.assert_allclose(kern.backend.linear(x, got[n]), kern.backend.linear(x, t), rtol=1e-5,
                                       atol=1e-4)
        elif len(t.shape) == 1:  # norms stay as they were, moved inside the region
            np.testing.assert_array_equal(got[n].dequantize(), t.dequantize())
