"""The export report's 'before' sizes of a GGUF source are the bytes its tensors occupy in the GGUF file."""
import pytest

pytest.importorskip("transformers")
import gguf_tools  # noqa: E402
import tiny_models  # noqa: E402
from gguf import GGUFReader  # noqa: E402

from edgespool.exporters.compress import QuantPolicy  # noqa: E402
from edgespool.exporters.export import export_model, open_source  # noqa: E402


def test_gguf_report_sizes_are_file_bytes(tmp_path):
    hf = tiny_models.make_hf_model("mixtral", tmp_path / "hf")
    path = gguf_tools.convert(hf, tmp_path / "m.gguf", "f16")
    res = export_model(open_source(path), tmp_path / "b", policy=QuantPolicy(quant="int8"), onnx=False,
                       kernels=False, progress=False)
    file_bytes = sum(int(t.n_bytes) for t in GGUFReader(path).tensors if t.name != "rope_freqs.weight")
    assert res.report["bytes_before"] == file_bytes
    assert res.report["classes"]["expert"]["bytes_before"] == res.report["classes"]["expert"]["params"] * 2
