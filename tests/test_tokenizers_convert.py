"""Tokenizer conversion (exporters/tokenizers_convert.py) against the reference tokenizers themselves:

* SentencePiece ``tokenizer.model`` -> tokenizers JSON encodes exactly like the ``sentencepiece`` library (BPE with
  an NFKC normalizer and whitespace removal, BPE with an identity normalizer as real Llama models use, Unigram),
  and like transformers' tokenizer on ordinary text.
* GGUF embedded vocabularies (made by llama.cpp's converter) encode exactly like llama.cpp's own tokenizer
  (``llama_cpp.Llama(vocab_only=True).tokenize``): SentencePiece-style ``llama`` and byte-level ``gpt2`` with the
  gpt-2, llama-bpe and qwen2 pre-tokenizers (every other pre-tokenizer name: test_pretokenizers.py).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import edgespool

import pytest

import gguf_tools as gt

from edgespool.errors import ModelFormatError, UnsupportedModelError
from edgespool.exporters.tokenizers_convert import (gguf_vocab_to_tokenizer_json, parse_spm_model,
                                                    spm_to_tokenizer_json)

spm = pytest.importorskip("sentencepiece")
from tokenizers import Tokenizer  # noqa: E402

CORPUS = Path(edgespool.__file__).resolve().parent / "apps" / "data" / "corpus.txt"  # package data
ORDINARY = CORPUS.read_text(encoding="utf-8").splitlines() + [
    "Hello world.", "digits 0 7 42 12345 3.14159 2024-01-31", "x", "I've been 'told he's there, 'RE you sure?",
    "unicode: héllo wörld — ünïcödé, Ελληνικά, русский, عربى, 日本語のテキスト, 한국어 🦙🚀 ✅",
    "def f(x): # code-like, with brackets [1, 2] {a: b} and symbols <=> ~ | ^ $",
]
EDGE = [
    "", " ", "   ", " Hello world", "  two  spaces  inside", "trailing ", "a  b   c",
    "tabs\tand\nnewlines\n\n", "\n \n\n \n\n\n \t \t\t \t\n  \n   \n",
    "ﬁ ligature ① ＡＢＣ full-width", "3333333 33 3.3 3..3 3...3", "🦙" * 5,
]
SENTENCES = ORDINARY + EDGE


def _ids(tok: Tokenizer, s: str) -> list[int]:
    return tok.encode(s, add_special_tokens=False).ids


def _train(path: Path, model_type: str = "bpe", **kw) -> Path:
    spm.SentencePieceTrainer.train(input=str(CORPUS), model_prefix=str(path), vocab_size=400, model_type=model_type,
                                   byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0,
                                   pad_id=-1, num_threads=1, minloglevel=2, **kw)
    return path.with_suffix(".model")


@pytest.fixture(scope="module")
def spm_models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("spm")
    return {
        "nfkc_bpe": _train(d / "nfkc_bpe"),  # sentencepiece defaults: nmt_nfkc, remove_extra_whitespaces
        "identity_bpe": _train(d / "identity_bpe", normalization_rule_name="identity",
                               remove_extra_whitespaces=False, split_digits=True),  # like Llama 1/2
        "unigram": _train(d / "unigram", model_type="unigram"),
    }


class Ggufs:
    """GGUF files with embedded vocabularies, converted by llama.cpp from tiny HF models."""

    def __init__(self, root: Path) -> None:
        import tiny_models as tm

        self.root = root
        self.spm_dir = tm.make_hf_model("llama", root / "llama")
        self.bpe_dir = tm.make_hf_model("qwen2", root / "qwen2")
        self._cache: dict[str, Path] = {}

    def get(self, name: str, identity_model: Path | None = None) -> Path:
        if name not in self._cache:
            if name == "spm_identity":
                d = self.root / "llama_identity"
                shutil.copytree(self.spm_dir, d)
                shutil.copy(identity_model, d / "tokenizer.model")
                src = d
            else:
                src = {"spm": self.spm_dir, "bpe": self.bpe_dir}[name]
            self._cache[name] = gt.convert(src, self.root / f"{name}.gguf", "f32", vocab_only=True)
        return self._cache[name]


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> Ggufs:
    gt.require_converter()
    return Ggufs(tmp_path_factory.mktemp("tok_gguf"))


def _reader(path: Path):
    import gguf

    return gguf.GGUFReader(str(path))


def _llama_vocab(path: Path):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    return gt.llama_vocab(path)


# -- SentencePiece .model -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["nfkc_bpe", "identity_bpe", "unigram"])
def test_parse_spm_model_matches_sentencepiece(kind, spm_models):
    sp = spm.SentencePieceProcessor(model_file=str(spm_models[kind]))
    m = parse_spm_model(spm_models[kind].read_bytes())
    assert len(m.pieces) == sp.get_piece_size()
    for i in range(sp.get_piece_size()):
        assert m.pieces[i] == sp.id_to_piece(i)
        assert m.scores[i] == pytest.approx(sp.get_score(i), abs=0)
        assert (m.types[i] == 3) == sp.is_control(i) and (m.types[i] == 2) == sp.is_unknown(i)
        assert (m.types[i] == 6) == sp.is_byte(i)
    assert m.model_type == (2 if "bpe" in kind else 1) and m.byte_fallback and m.unk_id == 0
    assert (m.normalizer_name, m.remove_extra_whitespaces) == (
        ("identity", False) if kind == "identity_bpe" else ("nmt_nfkc", True))
    assert bool(m.precompiled_charsmap) == (kind != "identity_bpe")


@pytest.mark.parametrize("kind", ["nfkc_bpe", "identity_bpe", "unigram"])
def test_spm_encodes_like_sentencepiece(kind, spm_models):
    sp = spm.SentencePieceProcessor(model_file=str(spm_models[kind]))
    tok = Tokenizer.from_str(spm_to_tokenizer_json(spm_models[kind]))
    assert tok.get_vocab_size() == sp.get_piece_size()
    for s in SENTENCES:
        want = sp.encode(s)
        assert _ids(tok, s) == want, f"{kind}: {s!r}"
        assert tok.decode(want) == sp.decode(want), f"{kind} decode: {s!r}"


@pytest.mark.parametrize("kind", ["nfkc_bpe", "identity_bpe"])
def test_spm_encodes_like_transformers_on_ordinary_text(kind, spm_models, tmp_path):
    """transformers' LlamaTokenizer (legacy=False) prepends '▁' only when the text does not already start with a
    space and ignores the SentencePiece normalizer, so it is compared on ordinary text (no leading or repeated
    whitespace, no NFKC-sensitive characters), where it must agree exactly."""
    tf = pytest.importorskip("transformers")
    shutil.copy(spm_models[kind], tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "legacy": False}))
    ref = tf.AutoTokenizer.from_pretrained(tmp_path)
    tok = Tokenizer.from_str(spm_to_tokenizer_json(tmp_path / "tokenizer.model"))
    for s in ORDINARY:
        assert _ids(tok, s) == ref.encode(s, add_special_tokens=False), s


def test_spm_special_tokens_are_special(spm_models):
    tok = Tokenizer.from_str(spm_to_tokenizer_json(spm_models["identity_bpe"]))
    ids = _ids(tok, "a</s>")
    assert ids[-1] == 2 and tok.decode(ids, skip_special_tokens=True) == "a"


def test_spm_errors(tmp_path):
    with pytest.raises(ModelFormatError, match=r"missing\.model: cannot read"):
        spm_to_tokenizer_json(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")
    with pytest.raises(ModelFormatError, match=r"bad\.model: not a valid SentencePiece model"):
        spm_to_tokenizer_json(bad)


# -- GGUF vocabularies vs llama.cpp -------------------------------------------------------------------------------
@pytest.mark.llamacpp
def test_gguf_spm_vocab_encodes_like_llamacpp(ggufs):
    path = ggufs.get("spm")
    lc = _llama_vocab(path)
    tok = Tokenizer.from_str(gguf_vocab_to_tokenizer_json(_reader(path)))
    for s in SENTENCES:
        want = lc.tokenize(s.encode(), add_bos=False, special=False)
        assert _ids(tok, s) == want, repr(s)
    for s in ["<s> text after bos</s>", "a<unk>b"]:
        assert _ids(tok, s) == lc.tokenize(s.encode(), add_bos=False, special=True), repr(s)


@pytest.mark.llamacpp
def test_identity_spm_agrees_everywhere(ggufs, spm_models):
    """An identity-normalizer SentencePiece (as Llama 1/2 ship): sentencepiece, llama.cpp on the GGUF, and both
    converted tokenizers give the same ids on every sentence, edge cases included."""
    model = spm_models["identity_bpe"]
    path = ggufs.get("spm_identity", model)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    lc = _llama_vocab(path)
    from_model = Tokenizer.from_str(spm_to_tokenizer_json(model))
    from_gguf = Tokenizer.from_str(gguf_vocab_to_tokenizer_json(_reader(path)))
    for s in SENTENCES:
        want = sp.encode(s)
        assert lc.tokenize(s.encode(), add_bos=False, special=False) == want, repr(s)
        assert _ids(from_model, s) == want and _ids(from_gguf, s) == want, repr(s)
        assert from_gguf.decode(want) == sp.decode(want)


@pytest.mark.llamacpp
def test_gguf_bpe_vocab_encodes_like_llamacpp_and_hf(ggufs):
    path = ggufs.get("bpe")
    lc = _llama_vocab(path)
    hf = Tokenizer.from_file(str(ggufs.bpe_dir / "tokenizer.json"))
    tok = Tokenizer.from_str(gguf_vocab_to_tokenizer_json(_reader(path)))
    for s in SENTENCES:
        want = lc.tokenize(s.encode(), add_bos=False, special=False)
        assert _ids(tok, s) == want, repr(s)
        assert _ids(hf, s) == want, repr(s)
        assert tok.decode(want) == hf.decode(want) == s
    s = "end<|endoftext|>next"
    assert _ids(tok, s) == lc.tokenize(s.encode(), add_bos=False, special=True)


@pytest.mark.llamacpp
@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "olmo"])
def test_gguf_bpe_pre_tokenizers_like_llamacpp(pre, ggufs, tmp_path):
    """The same byte-level vocabulary under other tokenizer.ggml.pre values: llama.cpp splits with the regex the
    name selects (llama-bpe also skips merges for whole-word tokens); ours must split the same way."""
    path = gt.rewrite_gguf(ggufs.get("bpe"), tmp_path / f"{pre}.gguf", {"tokenizer.ggml.pre": pre})
    lc = _llama_vocab(path)
    tok = Tokenizer.from_str(gguf_vocab_to_tokenizer_json(_reader(path)))
    for s in SENTENCES:
        assert _ids(tok, s) == lc.tokenize(s.encode(), add_bos=False, special=False), repr(s)


def test_gguf_vocab_errors(ggufs, tmp_path):
    src = ggufs.get("bpe")
    p = gt.rewrite_gguf(src, tmp_path / "bert.gguf", {"tokenizer.ggml.model": "bert"})
    with pytest.raises(UnsupportedModelError, match="tokenizer.ggml.model 'bert' is not supported; supported: llama"):
        gguf_vocab_to_tokenizer_json(_reader(p), where=str(p))
    p = gt.rewrite_gguf(src, tmp_path / "pre.gguf", {"tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(UnsupportedModelError, match=r"pre-tokenizer 'no-such-pre'.*supported \(\d+\): a\.x-4\.0, "):
        gguf_vocab_to_tokenizer_json(_reader(p))
    p = gt.rewrite_gguf(src, tmp_path / "nomerge.gguf", drop=("tokenizer.ggml.merges",))
    with pytest.raises(ModelFormatError, match="'tokenizer.ggml.merges' is missing"):
        gguf_vocab_to_tokenizer_json(_reader(p))
    p = gt.rewrite_gguf(src, tmp_path / "notok.gguf", drop=("tokenizer.ggml.model",))
    with pytest.raises(ModelFormatError, match="no embedded tokenizer"):
        gguf_vocab_to_tokenizer_json(_reader(p))
