"""llama.cpp's BPE pre-tokenizers (GGUF ``tokenizer.ggml.pre``), as data.

Copied from llama.cpp as llama-cpp-python 0.3.36 vendors it (``src/llama-vocab.cpp``: the ``tokenizer_pre`` ->
``LLAMA_VOCAB_PRE_TYPE_*`` chain in ``llama_vocab::impl::load`` and the per-type ``regex_exprs`` of
``llm_tokenizer_bpe``; ``src/unicode.cpp``: how those regexes are run). Two tables:

* :data:`PRE_NAMES` — every ``tokenizer.ggml.pre`` string llama.cpp accepts for a ``gpt2`` (BPE) vocabulary -> a
  type name (llama.cpp's ``LLAMA_VOCAB_PRE_TYPE_`` suffix). A missing or empty key is llama.cpp's ``default``.
* :data:`PRE_TYPES` — type name -> :class:`PreType`: the split regexes and the flags the conversion needs.

How llama.cpp splits (``unicode_regex_split``): the regexes run in sequence, each over every piece the previous one
left; a match and the text between two matches are both pieces. Each piece is then byte-level encoded (GPT-2's
byte-to-unicode table) and merged by BPE on its own; with ``ignore_merges`` a piece that is itself a token is kept
whole. The `tokenizers` equivalent, built by ``tokenizers_convert._gguf_bpe``, is ``pre_tokenizers.Sequence`` of
``Split(Regex(r), behavior="isolated")`` per regex, then ``ByteLevel(add_prefix_space=False, use_regex=False)``.

The regexes here are written for `tokenizers`' engine (Oniguruma) so that they split exactly as llama.cpp does,
which is llama.cpp's own regex text except where llama.cpp does not run that text as written:

* llama.cpp matches a regex that uses ``\\p{..}`` on a "collapsed" text (every non-ASCII code point replaced by one
  byte for its category), so ``\\p{Lu}``, ``\\p{Ll}``, ``\\p{Lt}``, ``\\p{Lm}`` and ``\\p{Lo}`` all mean any letter:
  written ``\\p{L}`` here (youtu, tiny_aya).
* it replaces non-ASCII whitespace by U+000B before matching, so a character class whose range covers U+3000 or
  U+2000..U+205F does not match those spaces: such classes are intersected with ``\\S`` (deepseek-llm,
  deepseek-coder).
* ``\\d`` in ``std::wregex`` is ASCII only: ``[0-9]`` (superbpe).
* some regex texts are only triggers for hand-written splitters in unicode.cpp, written out here as the regex the
  splitter implements: kimi-k2 (``\\p{Han}+``: llama.cpp's own Han ranges, letters of any case, no ``\\p{M}``),
  afmoe (``\\p{AFMoE_digits}``) and tiny_aya (``\\d{1,3}(?=(?:\\d{3})*\\b)``), both digit groupers that cut a run of
  digits into a leading 1-2 and then threes and glue the non-digits before a run to its first group (``\\G``
  keeps that regex linear). llama.cpp's other splitters (gpt2, llama3, qwen2, qwen35, newlines) implement their
  regex text as written.

Each regex and the gluing above are checked against llama.cpp itself in ``tests/test_pretokenizers.py``.

Not byte-level: gemma4, granite-embed-multi-311m and sarvam-moe split lines and merge raw UTF-8 with ``▁`` for
spaces (``byte_level=False``, ``escape_whitespace``) and fall back to ``<0xNN>`` byte tokens. gemma4 (and
granite-embed-multi-311m) also take a run of newlines whole when it is a token (``newline_runs_whole``); the
`tokenizers` BPE cannot skip merges for some words only, so such a vocabulary converts only when its merges already
produce every newline-run token, and is refused otherwise.

Refused (``unsupported`` says why, in the error): ``whitespace``. llama.cpp pairs it with its own
``tokenizer.ggml.model`` ``whitespace`` (which drops whitespace); under ``gpt2`` its raw-text pieces keep runs of
spaces, on which llama.cpp aborts (``GGML_ASSERT`` in ``find_bpe_rank``), so there is no llama.cpp behaviour to
reproduce.

Flags of llama.cpp's that do not change the ids of a text are not kept: ``clean_spaces`` (detokenising only),
``add_bos``/``add_sep`` (special tokens around the text; edgespool reads ``tokenizer.ggml.add_bos_token``).
"""
from __future__ import annotations

from typing import NamedTuple

LLAMA_CPP_SOURCE = "llama-cpp-python 0.3.36 (vendor/llama.cpp/src/llama-vocab.cpp, unicode.cpp)"


class PreType(NamedTuple):
    """One llama.cpp BPE pre-tokenizer type."""

    regexes: tuple[str, ...]  # Oniguruma patterns, applied in sequence; matches and gaps are both pieces
    ignore_merges: bool = False  # a piece that is a token is kept whole (llama.cpp's ignore_merges)
    byte_level: bool = True  # GPT-2 byte-level pieces; False: raw UTF-8 with <0xNN> byte fallback
    escape_whitespace: bool = False  # ' ' -> '▁' before splitting (llama.cpp's escape_whitespaces)
    newline_runs_whole: bool = False  # a newline-run piece that is a token is kept whole (gemma4)
    unsupported: str = ""  # why `tokenizers` cannot reproduce it ("" when it can)


# -- regexes shared by several types ------------------------------------------------------------------------------
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)"
           r"|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)"
          r"|\s+")
_ASCII_PUNCT_WORD = r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"""
_DEEPSEEK3 = (_ASCII_PUNCT_WORD + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
_CJK_KANA = r"[一-龥\x{3040}-ゟ゠-ヿ]+"
_DEEPSEEK_CJK = r"[一-龥ࠀ-一가-\x{D7FF}&&\S]+"
_GPT4O = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTIONS + "?"
          r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTIONS + "?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
_NEWLINES = r"[^\n]+|[\n]+"
_DIGIT_GROUPS = r"\G\P{N}*\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))"  # llama.cpp's afmoe digit splitter
_HAN = (r"\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}"
        r"\x{2B820}-\x{2CEAF}\x{2CEB0}-\x{2EBEF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}")  # unicode_cpt_is_han

_STARCODER = PreType((r"\p{N}", _GPT2))
_GPT2_TYPE = PreType((_GPT2,))
_LLAMA3_TYPE = PreType((_LLAMA3,))
_QWEN2_TYPE = PreType((_QWEN2,))
_DEEPSEEK3_TYPE = PreType((r"\p{N}{1,3}", _CJK_KANA, _DEEPSEEK3))
_GPT4O_TYPE = PreType((_GPT4O,))
_BLOOM_TYPE = PreType((_BLOOM,))
_GEMMA4 = PreType((_NEWLINES,), byte_level=False, escape_whitespace=True, newline_runs_whole=True)

# llama.cpp type -> how it splits. Types that share llama.cpp's regexes share an entry object.
PRE_TYPES: dict[str, PreType] = {
    "DEFAULT": PreType((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
    "LLAMA3": PreType((_LLAMA3,), ignore_merges=True),
    "JAIS2": PreType((_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                      r"|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)"
                      r"|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",)),
    "DBRX": _LLAMA3_TYPE,
    "SMAUG": _LLAMA3_TYPE,
    "DEEPSEEK_LLM": PreType((
        r"[\r\n]",
        (r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼ"
         r"ℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"),  # \x{..}: letters NFC would change
        r"\s?[!-/:-~！-／：-～‘-‟\x{3000}-。&&\S]+",
        r"\s+$",
        _DEEPSEEK_CJK,
        r"\p{N}+")),
    "DEEPSEEK3_LLM": _DEEPSEEK3_TYPE,
    "HUNYUAN_DENSE": _DEEPSEEK3_TYPE,
    "JOYAI_LLM": _DEEPSEEK3_TYPE,
    "HY_V4": _DEEPSEEK3_TYPE,
    "SPARK2_5": PreType((r"\p{N}{1,3}", _CJK_KANA,
                         (_ASCII_PUNCT_WORD + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]"
                         r"|\s+(?!\S)|\s+"),
                         r"\p{N}")),
    "YOUTU": PreType((
        r"[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|" + _CJK_KANA,
        (r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]*[\p{L}\p{M}]+" + _CONTRACTIONS + "?"
         r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+[\p{L}\p{M}]*" + _CONTRACTIONS + "?"
         r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")), ignore_merges=True),
    "DEEPSEEK_CODER": PreType((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _DEEPSEEK_CJK, r"\p{N}")),
    "FALCON": PreType((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
    "STARCODER": _STARCODER,
    "REFACT": _STARCODER,
    "COMMAND_R": _STARCODER,
    "SMOLLM": _STARCODER,
    "CODESHELL": _STARCODER,
    "EXAONE": _STARCODER,
    "MINERVA": _STARCODER,
    "MELLUM2": _STARCODER,
    "GPT2": _GPT2_TYPE,
    "MPT": _GPT2_TYPE,
    "OLMO": _GPT2_TYPE,
    "JAIS": _GPT2_TYPE,
    "TRILLION": _GPT2_TYPE,
    "GRANITE_DOCLING": _GPT2_TYPE,
    "STABLELM2": _QWEN2_TYPE,
    "QWEN2": _QWEN2_TYPE,
    "HUNYUAN": _QWEN2_TYPE,
    "SOLAR_OPEN": _QWEN2_TYPE,
    "QWEN35": PreType((_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
                       r"|\s*[\r\n]+|\s+(?!\S)|\s+",)),
    "PORO": _BLOOM_TYPE,
    "BLOOM": _BLOOM_TYPE,
    "GPT3_FINNISH": _BLOOM_TYPE,
    "CHATGLM4": _LLAMA3_TYPE,  # chatglm-bpe
    "GLM4": PreType((_LLAMA3,), ignore_merges=True),  # llama.cpp's CHATGLM4 with ignore_merges (glm4, glm5)
    "VIKING": PreType((_BLOOM, r"\p{N}")),
    "TEKKEN": PreType((r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
                       r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
                       r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",), ignore_merges=True),
    "CHAMELEON": PreType((r"<sentinel:[0-9]+>", r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", r"([\t\n]|    |  )",
                          r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", _GPT2)),
    "GPT4O": _GPT4O_TYPE,
    "MINIMAX_M2": _GPT4O_TYPE,
    "GRANITE_EMB_MULTI": PreType((
        r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+" + _CONTRACTIONS + "?"
        r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*" + _CONTRACTIONS + "?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",), ignore_merges=True),
    "TINY_AYA": PreType((
        _DIGIT_GROUPS,
        (r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]*[\p{L}\p{M}]+" + _CONTRACTIONS + "?"
         r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+[\p{L}\p{M}]*" + _CONTRACTIONS + "?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"))),
    "KIMI_K2": PreType((
        f"[{_HAN}]+|[^\\r\\n\\p{{L}}\\p{{N}}]?[\\p{{L}}&&[^{_HAN}]]+{_CONTRACTIONS}?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",)),
    "SUPERBPE": PreType((r"\p{N}+", r"(?=([0-9]{3})+(?![0-9]))")),
    "BAILINGMOE": PreType((r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",)),
    "SEED_CODER": PreType((_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
                           r"|\s+(?!\S)|\s+",)),
    "UFAKZEKA": PreType((r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",)),
    "GROK_2": _QWEN2_TYPE,
    "AFMOE": PreType((
        _DIGIT_GROUPS,
        (r"[一-鿿㐀-䶿\x{8C48}-\x{FAFF}\x{3040}-ゟ゠-ヿ･-ﾟ⼀-\x{2FDF}เ-\x{E7F}\x{E80}-\x{EFF}ក-\x{17FF}က-႟ꩠ-ꩿꧠ-\x{A9FF}"
         r"가-\x{D7AF}ᄀ-ᇿ]+"),  # \x{8C48}-: so in llama.cpp's source (U+F900 NFC-normalised), not U+F900-
        _DEEPSEEK3)),
    "LAGUNA": PreType((_NEWLINES, _QWEN2)),
    "EXAONE_MOE": PreType((_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                           r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",)),
    "GEMMA4": _GEMMA4,
    "SARVAM_MOE": PreType((_NEWLINES,), byte_level=False, escape_whitespace=True),
    "MINICPM5": PreType((r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
                         r"|\s*[\r\n]+|\s+(?!\S)|\s+"), ignore_merges=True),
    "WHITESPACE": PreType((r"\S+",), byte_level=False, unsupported=(
        "llama.cpp uses it with tokenizer.ggml.model 'whitespace'; under 'gpt2' it aborts on runs of spaces, so "
        "there is no behaviour to reproduce")),
}

# tokenizer.ggml.pre -> type (llama.cpp's if/else chain, in its order)
PRE_NAMES: dict[str, str] = {
    "default": "DEFAULT",
    "minicpm5": "MINICPM5",
    "llama3": "LLAMA3", "llama-v3": "LLAMA3", "llama-bpe": "LLAMA3", "falcon3": "LLAMA3", "falcon-h1": "LLAMA3",
    "pixtral": "LLAMA3", "midm-2.0": "LLAMA3", "lfm2": "LLAMA3", "jina-v5-nano": "LLAMA3",
    "deepseek-llm": "DEEPSEEK_LLM",
    "deepseek-coder": "DEEPSEEK_CODER",
    "deepseek-v3": "DEEPSEEK3_LLM",
    "spark2_5": "SPARK2_5",
    "youtu": "YOUTU",
    "falcon": "FALCON",
    "mpt": "MPT",
    "starcoder": "STARCODER",
    "gpt-2": "GPT2", "phi-2": "GPT2", "jina-es": "GPT2", "jina-de": "GPT2", "gigachat": "GPT2",
    "jina-v2-es": "GPT2", "jina-v2-de": "GPT2", "a.x-4.0": "GPT2", "mellum": "GPT2", "modern-bert": "GPT2",
    "jais-2": "JAIS2",
    "gemma4": "GEMMA4", "granite-embed-multi-311m": "GEMMA4",
    "sarvam-moe": "SARVAM_MOE",
    "jina-v1-en": "GPT2", "jina-v2-code": "GPT2", "roberta-bpe": "GPT2",
    "whitespace": "WHITESPACE",
    "refact": "REFACT",
    "command-r": "COMMAND_R",
    "qwen2": "QWEN2", "deepseek-r1-qwen": "QWEN2", "kormo": "QWEN2", "f2llmv2": "QWEN2",
    "qwen35": "QWEN35",
    "stablelm2": "STABLELM2",
    "olmo": "OLMO",
    "dbrx": "DBRX",
    "smaug-bpe": "SMAUG",
    "poro-chat": "PORO",
    "chatglm-bpe": "CHATGLM4",
    "glm4": "GLM4", "glm5": "GLM4",
    "viking": "VIKING",
    "jais": "JAIS",
    "tekken": "TEKKEN",
    "smollm": "SMOLLM",
    "codeshell": "CODESHELL",
    "bloom": "BLOOM",
    "gpt3-finnish": "GPT3_FINNISH",
    "exaone": "EXAONE",
    "exaone4": "GPT2",
    "exaone-moe": "EXAONE_MOE",
    "chameleon": "CHAMELEON",
    "minerva-7b": "MINERVA",
    "megrez": "QWEN2",
    "gpt-4o": "GPT4O", "llama4": "GPT4O", "kanana2": "GPT4O", "talkie": "GPT4O",
    "granite-embed-multi-97m": "GRANITE_EMB_MULTI",
    "tiny_aya": "TINY_AYA", "cohere2moe": "TINY_AYA",
    "superbpe": "SUPERBPE",
    "trillion": "TRILLION",
    "granite-docling": "GRANITE_DOCLING",
    "bailingmoe": "BAILINGMOE", "bailingmoe2": "BAILINGMOE", "llada-moe": "BAILINGMOE",
    "seed-coder": "SEED_CODER",
    "hunyuan": "HUNYUAN",
    "hunyuan-dense": "HUNYUAN_DENSE",
    "hy_v4": "HY_V4",
    "joyai-llm": "JOYAI_LLM",
    "kimi-k2": "KIMI_K2",
    "ufakzeka": "UFAKZEKA",
    "grok-2": "GROK_2",
    "afmoe": "AFMOE",
    "laguna": "LAGUNA",
    "minimax-m2": "MINIMAX_M2",
    "solar-open": "SOLAR_OPEN",
    "mellum2": "MELLUM2",
}

# the names edgespool converts (PRE_NAMES less the refused types)
SUPPORTED_NAMES: tuple[str, ...] = tuple(sorted(n for n, t in PRE_NAMES.items() if not PRE_TYPES[t].unsupported))
