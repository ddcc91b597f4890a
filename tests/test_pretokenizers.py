"""llama.cpp's BPE pre-tokenizer table (exporters/pretokenizers.py) against llama.cpp itself.

For every ``tokenizer.ggml.pre`` name llama.cpp accepts and edgespool converts, a tiny vocabulary-only GGUF carrying
that name must tokenize exactly as ``llama_cpp.Llama(vocab_only=True).tokenize`` does, on a mixed text and on
random strings of awkward characters. One byte-level BPE vocabulary (and one raw-UTF-8 one for gemma4/sarvam-moe)
is trained once by `tokenizers` and written under each name. It is trained on whole lines, so its tokens cross
every category boundary and any difference in splitting changes the ids; extra tokens that no merge builds make
``ignore_merges`` (whole pieces that are tokens kept whole) visible. Then the real vocabularies of SmolLM2-135M
(``smollm``) and Qwen2.5-Coder-0.5B (``qwen2``) on the mixed text and on Hamlet.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import edgespool

import pytest

from edgespool.errors import UnsupportedModelError
from edgespool.exporters.pretokenizers import PRE_NAMES, PRE_TYPES, SUPPORTED_NAMES
from edgespool.exporters.tokenizers_convert import gguf_vocab_to_tokenizer_json

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers  # noqa: E402

CORPUS = Path(edgespool.__file__).resolve().parent / "apps" / "data" / "corpus.txt"  # package data
_SPACES = "\x85\xa0\u1680\u2000\u2005\u200a\u2028\u2029\u202f\u205f\u3000"  # non-ASCII whitespace
MIXED = (
    "def main(argv):\n    total = 1234567 + 3.14159\n\tif total > 42:  # don't, I'll, WE'RE, they've 'Ll\n"
    "        return f\"{total:.2f}\"  \n\n\n"
    "naïve café résumé e\u0301 Ångström ÉCOLE HelloWorld XMLHttpRequest iPhone ﬁ\n"
    "北京欢迎你 こんにちは カタカナ 안녕하세요 ㄱㄴ 中文，标点。「引号」 𠀀𪜀 \uf900 日々 ⺀⼀〇\n"
    "🦙🚀 👩\u200d👩\u200d👧 ✅ ① ² ½ ٣٤٥ ١٢٣٤٥٦٧ 12٣٤٥ १२३४५ １２３ ＡＢＣ ｶﾀｶﾅ ไทย ລາວ ខ្មែរ မြန်မာ "
    "Ελληνικά русский عربى हिन्दी। ۔،…\n"
    "x   1234 y 12345678901 a1b22c333 $100,000.00 <sentinel:12> IMGIMGABZ 1e10 (a|b) [x]{y} @#%^&*~`\r\n\r\n"
    "\n   \t\t \n" + f"ws{_SPACES}ws a\u3000b\xa01 end  \n" + " " * 40 + "tail" + " " * 7)
TEXTS = [MIXED] + [line for line in MIXED.split("\n") if line]
_POOL = (list("aAzZ'sStTlLdDmMrReEvV 0123456789 \t\n\r.,!?;:-_/\\()[]{}<>$+=^~|`@#%&*\"")
         + list("éÉñçßÅåøœæ\u0301\u0308日本中文々〇⺀⼀ひらカナ한국ㄱ٣١२１ＡｶΑαЖж\u00a0\u3000\u2003\u0085\u200d\ufe0f🦙✅①²½，。！…、")
         + ["IMGIMG", "<sentinel:", "   ", "\n\n", "'re", "'ll", "1234"])
_rng = random.Random(20240131)
RANDOM = ["".join(_rng.choice(_POOL) for _ in range(_rng.randint(1, 60))) for _ in range(300)]

BYTE_NAMES = [n for n in SUPPORTED_NAMES if PRE_TYPES[PRE_NAMES[n]].byte_level]
RAW_NAMES = [n for n in SUPPORTED_NAMES if not PRE_TYPES[PRE_NAMES[n]].byte_level]


def _lines() -> list[str]:
    return CORPUS.read_text(encoding="utf-8").splitlines() + MIXED.split("\n") * 2


def _vocab_of(tok: Tokenizer) -> tuple[list[str], list[str]]:
    model = json.loads(tok.to_str())["model"]
    tokens = [""] * len(model["vocab"])
    for t, i in model["vocab"].items():
        tokens[i] = t
    return tokens, [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


@pytest.fixture(scope="module")
def byte_vocab() -> tuple[list[str], list[str]]:
    """A byte-level BPE trained on whole lines, plus whole pieces of the mixed text that no merge builds."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.train_from_iterator(_lines(), trainers.BpeTrainer(vocab_size=3000, show_progress=False,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokens, merges = _vocab_of(tok)
    have = set(tokens)
    for kind in ("GPT2", "LLAMA3", "QWEN2", "GPT4O", "YOUTU", "TEKKEN", "MINICPM5"):
        split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), behavior="isolated")
                                         for r in PRE_TYPES[kind].regexes]
                                        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        for piece, _ in split.pre_tokenize_str(MIXED):
            if len(piece) > 1 and piece not in have:
                have.add(piece)
                tokens.append(piece)
    return tokens, merges


@pytest.fixture(scope="module")
def raw_vocab() -> tuple[list[str], list[str], list[int]]:
    """A raw-UTF-8 BPE (spaces as ▁, <0xNN> byte tokens) for the SentencePiece-like gemma4 / sarvam-moe types."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|\n+"), behavior="isolated")
    tok.train_from_iterator([s.replace(" ", "\u2581") for s in _lines()],
                            trainers.BpeTrainer(vocab_size=3000, show_progress=False, limit_alphabet=200,
                                                special_tokens=[f"<0x{b:02X}>" for b in range(256)]))
    tokens, merges = _vocab_of(tok)
    types = [6 if t.startswith("<0x") and len(t) == 6 else 1 for t in tokens]  # 6: LLAMA_TOKEN_TYPE_BYTE
    return tokens, merges, types


def _write_gguf(path: Path, tokens: list[str], merges: list[str], pre: str | None,
                types: list[int] | None = None) -> Path:
    """A vocabulary-only GGUF (no tensors, no hyperparameters: llama.cpp loads it with vocab_only=True)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types or [1] * len(tokens))
    w.add_token_merges(merges)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _convert(path: Path) -> Tokenizer:
    return Tokenizer.from_str(gguf_vocab_to_tokenizer_json(gguf.GGUFReader(str(path)), where=str(path)))


def _llama(path: Path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def _assert_same_ids(path: Path, texts: list[str]) -> None:
    lc = _llama(path)
    tok = _convert(path)
    try:
        for s in texts:
            want = lc.tokenize(s.encode(), add_bos=False, special=False)
            got = tok.encode(s, add_special_tokens=False).ids
            assert got == want, f"{path.stem}: {s!r}"
    finally:
        lc.close()


# -- the table ------------------------------------------------------------------------------------------------------
def test_table_is_complete_and_compiles():
    assert len(PRE_NAMES) == 91 and set(PRE_NAMES.values()) == set(PRE_TYPES)
    assert {n for n in PRE_NAMES if n not in SUPPORTED_NAMES} == {"whitespace"}
    for kind, spec in PRE_TYPES.items():
        assert spec.regexes and all(isinstance(r, str) for r in spec.regexes), kind
        for r in spec.regexes:
            Regex(r)  # Oniguruma accepts every pattern


# -- every name vs llama.cpp ----------------------------------------------------------------------------------------
@pytest.mark.llamacpp
@pytest.mark.parametrize("pre", BYTE_NAMES)
def test_byte_level_pre_tokenizer_like_llamacpp(pre, byte_vocab, tmp_path):
    tokens, merges = byte_vocab
    _assert_same_ids(_write_gguf(tmp_path / f"{pre}.gguf", tokens, merges, pre), TEXTS + RANDOM)


@pytest.mark.llamacpp
@pytest.mark.parametrize("pre", RAW_NAMES)
def test_raw_text_pre_tokenizer_like_llamacpp(pre, raw_vocab, tmp_path):
    tokens, merges, types = raw_vocab
    _assert_same_ids(_write_gguf(tmp_path / f"{pre}.gguf", tokens, merges, pre, types), TEXTS + RANDOM)


@pytest.mark.llamacpp
def test_missing_pre_is_llamacpp_default(byte_vocab, tmp_path):
    tokens, merges = byte_vocab
    _assert_same_ids(_write_gguf(tmp_path / "nopre.gguf", tokens, merges, None), TEXTS)


@pytest.mark.llamacpp
def test_ignore_merges_is_visible(byte_vocab, tmp_path):
    """The extra whole-piece tokens change llama.cpp's ids under llama-bpe (ignore_merges) but not under
    chatglm-bpe (same regex, merges always): the per-name test above does check the flag."""
    tokens, merges = byte_vocab
    ids = {}
    for pre in ("llama-bpe", "chatglm-bpe"):
        lc = _llama(_write_gguf(tmp_path / f"{pre}.gguf", tokens, merges, pre))
        ids[pre] = lc.tokenize(MIXED.encode(), add_bos=False, special=False)
        lc.close()
    assert ids["llama-bpe"] != ids["chatglm-bpe"]


# -- refusals -------------------------------------------------------------------------------------------------------
def test_unknown_name_is_one_line_listing_known(byte_vocab, tmp_path):
    tokens, merges = byte_vocab
    p = _write_gguf(tmp_path / "x.gguf", tokens, merges, "qwen9")
    with pytest.raises(UnsupportedModelError) as e:
        _convert(p)
    msg = str(e.value)
    assert "\n" not in msg and "BPE pre-tokenizer 'qwen9' (tokenizer.ggml.pre)" in msg
    assert f"supported ({len(SUPPORTED_NAMES)}): {', '.join(SUPPORTED_NAMES)}" in msg
    assert "smollm" in msg and "qwen2" in msg and "whitespace" not in msg


def test_whitespace_is_refused_with_reason(raw_vocab, tmp_path):
    tokens, merges, types = raw_vocab
    p = _write_gguf(tmp_path / "ws.gguf", tokens, merges, "whitespace", types)
    with pytest.raises(UnsupportedModelError, match=r"pre-tokenizer 'whitespace' .*not supported: llama\.cpp uses "
                                                     r"it with tokenizer\.ggml\.model 'whitespace'") as e:
        _convert(p)
    assert "\n" not in str(e.value)


@pytest.mark.llamacpp
def test_gemma4_newline_token_beyond_merges_is_refused(raw_vocab, tmp_path):
    """gemma4 keeps a newline run whole when it is a token; with such a token that no merge builds, llama.cpp
    emits it and the conversion refuses (the `tokenizers` BPE would split the run)."""
    tokens, merges, types = raw_vocab
    run = "\n" * 7
    assert run not in tokens
    p = _write_gguf(tmp_path / "g4.gguf", tokens + [run], merges, "gemma4", types + [1])
    lc = _llama(p)
    assert lc.tokenize(f"a{run}b".encode(), add_bos=False, special=False)[1:-1] == [len(tokens)]
    lc.close()
    with pytest.raises(UnsupportedModelError, match=r"'gemma4'.*newline run '\\n\\n\\n\\n\\n\\n\\n' whole as "
                                                     rf"token {len(tokens)}"):
        _convert(p)


# -- real vocabularies ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.llamacpp
@pytest.mark.parametrize("asset, pre", [("smollm2-135m", "smollm"), ("qwen2.5-coder-0.5b", "qwen2")])
def test_real_vocabulary_like_llamacpp(asset, pre):
    from edgespool.apps.assets import AssetError, fetch
    from edgespool.exporters.gguf_source import open_gguf_model

    try:
        path, hamlet = fetch(asset), fetch("hamlet")
    except AssetError as e:
        pytest.skip(f"asset unavailable: {e}")
    model = open_gguf_model(path)
    assert model.meta("tokenizer.ggml.pre") == pre
    tok = Tokenizer.from_str(model.tokenizer().json)
    lc = _llama(path)
    try:
        for s in TEXTS + [Path(hamlet).read_text(encoding="utf-8")[:20000]]:
            assert tok.encode(s, add_special_tokens=False).ids == lc.tokenize(s.encode(), add_bos=False,
                                                                              special=False), f"{asset}: {s[:60]!r}"
    finally:
        lc.close()
