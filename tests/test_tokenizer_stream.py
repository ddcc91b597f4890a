"""Streaming detokenisation: the pieces `BundleTokenizer.stream` yields concatenate to the tokenizers library's own
decode of all ids, and no piece holds half a UTF-8 character."""
import pytest

from edgespool.exporters.synth import train_demo_tokenizer
from edgespool.runtime.decoder.tokenizer import BundleTokenizer

TEXTS = ["Once upon a time, the fox sang.", "Grüße aus Köln — naïve café ☕ 東京 🦊!", "  leading   spaces\tand\nlines"]


def _spm_json(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from edgespool.exporters.synth import CORPUS
    from edgespool.exporters.tokenizers_convert import spm_to_tokenizer_json

    spm.SentencePieceTrainer.train(input=str(CORPUS), model_prefix=str(tmp_path / "t"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, minloglevel=2)
    return spm_to_tokenizer_json(tmp_path / "t.model")


@pytest.fixture(params=["bytelevel-bpe", "sentencepiece"])
def tok(request, tmp_path):
    js = train_demo_tokenizer() if request.param == "bytelevel-bpe" else _spm_json(tmp_path)
    (tmp_path / "tokenizer.json").write_text(js)
    return BundleTokenizer(tmp_path / "tokenizer.json", None, (), False)


def test_stream_concatenates_to_full_decode(tok):
    for text in TEXTS:
        ids = tok.encode(text)
        pieces = list(tok.stream(iter(ids)))
        assert "".join(pieces) == tok.tok.decode(ids, skip_special_tokens=True)
        assert all("\ufffd" not in p for p in pieces)


def test_stream_of_a_long_generation_matches_decode(tok):
    from edgespool.exporters.synth import CORPUS

    text = CORPUS.read_text()[:3000] + " Grüße 🦊 東京"
    ids = tok.encode(text)
    assert len(ids) > 500
    assert "".join(tok.stream(iter(ids))) == tok.tok.decode(ids, skip_special_tokens=True)
