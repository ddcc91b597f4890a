"""Bundle format: layout invariants, and loading rejects unknown schema versions, checksum mismatches and
truncated files with an error naming the file and tensor."""
import json
import shutil

import numpy as np
import pytest

from conftest import make_synth_bundle
from edgespool.errors import BundleError, OptionError
from edgespool.exporters.bundle_writer import BundleWriter
from edgespool.kernels.quant import quantize
from edgespool.runtime.bundle.reader import Bundle
from edgespool.runtime.bundle.constants import ALIGNMENT, MAX_SCHEMA_VERSION, SCHEMA_VERSION


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_layout_is_aligned_and_groups_contiguous(synth_bundle):
    b = Bundle(synth_bundle)
    m = b.manifest
    assert m["magic"] == "edgespool-bundle" and m["schema_version"] == SCHEMA_VERSION
    for name, rec in b.tensors.items():
        assert rec["offset"] % ALIGNMENT == 0, name
    prev_end = 0
    for g in b.groups.values():
        assert g.offset % ALIGNMENT == 0 and g.offset >= prev_end
        recs = [b.tensors[t] for t in g.tensors]
        assert g.offset == recs[0]["offset"]
        assert g.offset + g.nbytes == recs[-1]["offset"] + recs[-1]["nbytes"]
        prev_end = g.offset + g.nbytes
    # every MoE expert is its own contiguous group
    assert "layers.1.experts.3" in b.groups
    assert set(b.groups["layers.1.experts.3"].tensors) == {f"layers.1.experts.3.{p}" for p in ("gate", "up", "down")}


def test_roundtrip_values_equal_source(synth_bundle):
    from edgespool.exporters.synth import synth_demo_model
    from conftest import SMALL

    src = synth_demo_model(seed=0, **SMALL)
    b = Bundle(synth_bundle)
    got = b.read_group("layers.0")
    np.testing.assert_array_equal(got["layers.0.wq"].data, src.tensor("layers.0.wq"))
    b.verify()


def test_newer_schema_is_rejected(synth_bundle, tmp_path):
    d = _copy(synth_bundle, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["schema_version"] = MAX_SCHEMA_VERSION + 1
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=rf"schema version {MAX_SCHEMA_VERSION + 1} is not supported.*upgrade"):
        Bundle(d)


def test_wrong_magic_and_bad_json(synth_bundle, tmp_path):
    d = _copy(synth_bundle, tmp_path)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json: manifest is not valid JSON"):
        Bundle(d)
    (d / "manifest.json").write_text(json.dumps({"magic": "nope"}))
    with pytest.raises(BundleError, match="wrong magic"):
        Bundle(d)


def test_checksum_mismatch_names_tensor(synth_bundle, tmp_path):
    d = _copy(synth_bundle, tmp_path)
    b = Bundle(d)
    rec = b.tensors["layers.1.wk"]
    with open(d / "weights.bin", "r+b") as f:
        f.seek(rec["offset"] + 5)
        byte = f.read(1)
        f.seek(rec["offset"] + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match=r"weights.bin: checksum mismatch in tensor 'layers.1.wk'"):
        Bundle(d).read_group("layers.1")


def test_truncated_weights_names_file_and_tensor(synth_bundle, tmp_path):
    d = _copy(synth_bundle, tmp_path)
    size = (d / "weights.bin").stat().st_size
    with open(d / "weights.bin", "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(BundleError, match=r"weights.bin: truncated .* tensor '.*' needs bytes"):
        Bundle(d)
    (d / "weights.bin").unlink()
    with pytest.raises(BundleError, match="weights file is missing"):
        Bundle(d)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such bundle directory"):
        Bundle(tmp_path / "missing")
    with pytest.raises(BundleError, match="not a bundle"):
        Bundle(tmp_path)


def test_writer_refuses_out_of_order_and_wrong_shape(tmp_path):
    from edgespool.exporters.synth import demo_config

    cfg = demo_config(64, hidden=32, layers=1, experts=2, moe_intermediate=32, heads=2, kv_heads=1)
    w = BundleWriter(tmp_path / "b", cfg)
    with pytest.raises(BundleError, match="expected tensor 'embed' next, got 'norm'"):
        w.add_tensor("norm", quantize(np.ones(32, np.float32), "f32"))
    with pytest.raises(BundleError, match="shape"):
        w.add_tensor("embed", quantize(np.ones((3, 3), np.float32), "f32"))
    with pytest.raises(BundleError, match="missing tensors"):
        w.set_tokenizer("{}", bos_token_id=None, eos_token_ids=[], add_bos=False)
    w.abort()
    assert not (tmp_path / "b").exists() and not list(tmp_path.iterdir())


def test_export_never_clobbers_user_data(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.txt").write_text("precious")
    with pytest.raises(OptionError, match="not a bundle; refusing to overwrite"):
        make_synth_bundle(user)
    assert (user / "thesis.txt").read_text() == "precious"
    out = tmp_path / "b"
    make_synth_bundle(out)
    with pytest.raises(OptionError, match="pass --force"):
        make_synth_bundle(out)
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.synth import synth_demo_model
    from conftest import SMALL

    export_model(synth_demo_model(**SMALL), out, policy=QuantPolicy(quant="int8"), overwrite=True, onnx=False,
                 kernels=False, progress=False)
    assert Bundle(out).manifest["quant"]["quant"] == "int8"
