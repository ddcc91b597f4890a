"""Issue 13, defects 5, 9 and 10 (bundle side): the manifest cannot lie. One schema validates the whole manifest
when a bundle opens (types, ranges, scheme x shape x dtype x nbytes, names vs the model config, BOS/EOS within the
vocabulary, files confined to the bundle folder and regular), and the manifest's own checksum makes
`inspect --verify` catch an edit that stays consistent."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_synth_bundle
from edgespool.apps.cli import cli
from edgespool.errors import BundleError
from edgespool.runtime.bundle.manifest_schema import CHECKSUM_KEY, manifest_digest
from edgespool.runtime.bundle.reader import Bundle
from fuzz_harness import run_bounded


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    return make_synth_bundle(tmp_path_factory.mktemp("m") / "b", quant="int8").path


@pytest.fixture()
def bundle(int8_bundle, tmp_path) -> Path:
    d = tmp_path / "copy"
    shutil.copytree(int8_bundle, d)
    return d


def _edit(d: Path, fn, resign: bool = False) -> None:
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    if resign:
        m[CHECKSUM_KEY] = manifest_digest(m)
    (d / "manifest.json").write_text(json.dumps(m))


def _refused(d: Path, *match: str) -> str:
    out = run_bounded(lambda: Bundle(d).verify() or "opened", timeout_s=20)
    assert out.cls == "clean", (out.cls, out.detail)
    for m in match:
        assert m in out.detail, out.detail
    return out.detail


def _a_matrix(m) -> str:
    return next(n for n, r in m["tensors"].items() if r["scheme"] == "int8")


def test_export_writes_a_checksum_and_verify_passes(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    assert m[CHECKSUM_KEY] == manifest_digest(m)
    b = Bundle(bundle)
    assert b.verify_manifest() is True
    r = CliRunner().invoke(cli, ["inspect", str(bundle), "--verify"])
    assert r.exit_code == 0, r.output


def test_scheme_int8_to_f16_refused(bundle):
    _edit(bundle, lambda m: m["tensors"][_a_matrix(m)].update(scheme="f16"), resign=True)
    _refused(bundle, "scheme f16")


def test_data_dtype_int8_to_uint8_refused(bundle):
    _edit(bundle, lambda m: m["tensors"][_a_matrix(m)]["parts"]["data"].update(dtype="uint8"), resign=True)
    _refused(bundle, "parts.data", "uint8")


def test_shape_edit_refused(bundle):
    def f(m):
        r = m["tensors"][_a_matrix(m)]
        r["shape"] = [r["shape"][1], r["shape"][0]]
    _edit(bundle, f, resign=True)
    _refused(bundle, "shape")


@pytest.mark.parametrize("field,value,match", [("num_layers", 1, "layers"), ("num_layers", 3, "missing"),
                                               ("num_layers", 10**9, "num_layers"),
                                               ("rms_norm_eps", None, "rms_norm_eps"),
                                               ("rms_norm_eps", 0, "rms_norm_eps"),
                                               ("rope_theta", 0.0, "rope_theta"),
                                               ("hidden_size", "64", "hidden_size"),
                                               ("bos_token_id", 99999999, "bos_token_id"),
                                               ("bos_token_id", -5, "-5"),
                                               ("eos_token_ids", [100000], "100000"),
                                               ("vocab_size", 2**40, "vocab_size")])
def test_model_section_range_checked(bundle, field, value, match):
    _edit(bundle, lambda m: m["model"].update({field: value}), resign=True)
    _refused(bundle, match)


def test_nan_in_the_manifest_refused(bundle):
    t = (bundle / "manifest.json").read_text()
    m = json.loads(t)
    eps = json.dumps(m["model"]["rms_norm_eps"])
    (bundle / "manifest.json").write_text(t.replace(f'"rms_norm_eps": {eps}', '"rms_norm_eps": NaN'))
    _refused(bundle, "NaN")


@pytest.mark.parametrize("key,value", [("bos_token_id", 99999999), ("bos_token_id", -5),
                                       ("eos_token_ids", [100000]), ("eos_token_ids", "2")])
def test_tokenizer_ids_within_vocab(bundle, key, value):
    _edit(bundle, lambda m: m["tokenizer"].update({key: value}), resign=True)
    _refused(bundle, f"tokenizer.{key}")


def test_weights_file_confined_to_the_bundle(bundle, int8_bundle, tmp_path):
    other = str(int8_bundle / "weights.bin")
    _edit(bundle, lambda m: m["weights"].update(file=other), resign=True)
    _refused(bundle, "weights.file", "outside the bundle")
    _edit(bundle, lambda m: m["weights"].update(file="../../m0/b/weights.bin"), resign=True)
    _refused(bundle, "weights.file", "outside")
    _edit(bundle, lambda m: m["weights"].update(file="w2.bin"), resign=True)
    (bundle / "w2.bin").symlink_to(other)
    _refused(bundle, "weights.file", "outside the bundle folder")


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "dir"])
def test_tokenizer_file_must_be_a_regular_file_inside(bundle, target):
    if target == "fifo":
        os.mkfifo(bundle / "tok.fifo")
        name = "tok.fifo"
    elif target == "dir":
        (bundle / "tokdir").mkdir()
        name = "tokdir"
    else:
        name = target
    _edit(bundle, lambda m: m["tokenizer"].update(file=name), resign=True)
    t0 = time.monotonic()
    _refused(bundle, "tokenizer.file")
    assert time.monotonic() - t0 < 10  # a FIFO is refused, never opened (opening one blocks)


def test_consistent_edit_caught_by_the_checksum(bundle):
    """hidden_act silu -> relu is a valid config: only the manifest's checksum can tell."""
    _edit(bundle, lambda m: m["model"].update(hidden_act="relu"))
    b = Bundle(bundle)  # opens: every field is in range
    with pytest.raises(BundleError, match="manifest checksum mismatch"):
        b.verify()
    r = CliRunner().invoke(cli, ["inspect", str(bundle), "--verify"])
    assert r.exit_code == 1 and "manifest checksum mismatch" in r.output and "internal error" not in r.output


def test_older_bundle_without_a_checksum_opens_and_verify_says_so(bundle):
    _edit(bundle, lambda m: m.pop(CHECKSUM_KEY))
    b = Bundle(bundle)
    assert b.verify_manifest() is False and not b.manifest_checksummed
    b.verify()
    r = CliRunner().invoke(cli, ["inspect", str(bundle), "--verify"])  # output holds stdout and stderr
    assert r.exit_code == 0 and "the manifest has no checksum" in r.output


@pytest.mark.parametrize("mut", ["groups_missing_tensor", "tensor_in_no_group", "part_outside_record",
                                 "crc_not_int", "offset_negative", "extra_tensor", "group_size_zero_div"])
def test_structure_mutations_refused(bundle, mut):
    def f(m):
        name = _a_matrix(m)
        r = m["tensors"][name]
        if mut == "groups_missing_tensor":
            m["groups"][0]["tensors"].append("nope")
        elif mut == "tensor_in_no_group":
            for g in m["groups"]:
                if name in g["tensors"]:
                    g["tensors"].remove(name)
        elif mut == "part_outside_record":
            r["parts"]["scale"]["offset"] = r["nbytes"]
        elif mut == "crc_not_int":
            r["crc32"] = "abc"
        elif mut == "offset_negative":
            r["offset"] = -4096
        elif mut == "extra_tensor":
            m["tensors"]["layers.0.bogus"] = dict(r)
            m["groups"][1]["tensors"].append("layers.0.bogus")
        elif mut == "group_size_zero_div":
            r["scheme"] = "int4"
            r["group_size"] = 7
    _edit(bundle, f, resign=True)
    _refused(bundle, "manifest.json")


def test_tokenizer_json_covered_by_its_checksum(bundle):
    from edgespool.runtime.decoder.tokenizer import BundleTokenizer

    m = json.loads((bundle / "manifest.json").read_text())
    assert len(m["tokenizer"]["sha256"]) == 64
    tok = BundleTokenizer.from_manifest(bundle, m["tokenizer"])
    assert tok.encode("hello")
    t = json.loads((bundle / "tokenizer.json").read_text())
    t["added_tokens"] = []  # still a loadable tokenizer, just another one
    (bundle / "tokenizer.json").write_text(json.dumps(t))
    with pytest.raises(BundleError, match="tokenizer.json: checksum mismatch"):
        BundleTokenizer.from_manifest(bundle, m["tokenizer"])
    with pytest.raises(BundleError, match="tokenizer.json: checksum mismatch"):
        Bundle(bundle).verify()


def test_invalid_utf8_prompt_is_an_option_error(bundle):
    from edgespool.errors import OptionError
    from edgespool.runtime.decoder.tokenizer import BundleTokenizer

    m = json.loads((bundle / "manifest.json").read_text())
    tok = BundleTokenizer.from_manifest(bundle, m["tokenizer"])
    bad = b"caf\xe9 \xff".decode("utf-8", errors="surrogateescape")  # what argv decoding gives invalid UTF-8
    with pytest.raises(OptionError, match="prompt is not valid UTF-8"):
        tok.encode(bad)
    with pytest.raises(OptionError, match="prompt is not valid UTF-8"):
        tok.encode_rendered(bad)
