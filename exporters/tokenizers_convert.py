"""Convert tokenizers that are not HF ``tokenizer.json`` into `tokenizers` JSON text.

* :func:`spm_to_tokenizer_json` — a SentencePiece ``tokenizer.model`` (BPE, optionally with byte fallback; or
  Unigram), reproducing **sentencepiece's** own encoding: the model's normalizer spec (precompiled NFKC charsmap,
  ``remove_extra_whitespaces``, ``add_dummy_prefix``, whitespace escaping to ``▁``) becomes a `tokenizers`
  normalizer, the pieces become a BPE vocabulary whose merges are ordered by piece score (as transformers'
  ``LlamaConverter`` does), byte pieces ``<0xNN>`` give byte fallback. The ``.model`` protobuf is parsed by the small
  wire-format reader below, so neither ``protobuf`` nor ``sentencepiece`` is needed at export time.
* :func:`gguf_vocab_to_tokenizer_json` — the vocabulary embedded in a GGUF file, reproducing **llama.cpp's**
  tokenizer: ``tokenizer.ggml.model`` ``llama`` (SentencePiece-style: tokens, scores, token types; llama.cpp applies
  no normalization beyond the dummy-prefix space) or ``gpt2`` (BPE: tokens + merges, pre-tokenized by the
  regexes that ``tokenizer.ggml.pre`` names, from llama.cpp's table in :mod:`.pretokenizers`).

The JSON has no post-processor: BOS is not inserted by the tokenizer; the runtime prepends it when the model's
``add_bos`` says so (see :class:`~edgespool.exporters.source.TokenizerSpec`). Control tokens are special added
tokens (matched in input text, skipped when decoding), user-defined tokens are plain added tokens.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import ModelFormatError, UnsupportedModelError
from .pretokenizers import PRE_NAMES, PRE_TYPES, SUPPORTED_NAMES

# SentencePiece / GGUF token types (same numbering in both: sentencepiece_model.proto and llama.cpp's
# LLAMA_TOKEN_TYPE_*).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPIECE = "\u2581"  # ▁, SentencePiece's whitespace mark

# -- SentencePiece model protobuf (wire format) -------------------------------------------------------------------
@dataclass
class SpmModel:
    """The parts of a SentencePiece ``ModelProto`` a converter needs (defaults as in sentencepiece_model.proto)."""

    pieces: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    model_type: int = 1  # 1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR
    byte_fallback: bool = False
    unk_id: int = 0
    treat_whitespace_as_suffix: bool = False
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterable[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message: ints for varints, bytes for length-delimited,
    raw little-endian bytes for fixed32/fixed64."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt == 1:
            v, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            v, pos = buf[pos:pos + n], pos + n
        elif wt == 5:
            v, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield num, wt, v


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_spm_model(data: bytes) -> SpmModel:
    """Parse a serialized SentencePiece ``ModelProto`` (the ``tokenizer.model`` file)."""
    m = SpmModel()
    for num, wt, v in _fields(data):
        if num == 1 and wt == 2:  # repeated SentencePiece pieces
            piece, score, typ = "", 0.0, NORMAL
            for n2, w2, v2 in _fields(v):
                if n2 == 1 and w2 == 2:
                    piece = v2.decode("utf-8")
                elif n2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif n2 == 3 and w2 == 0:
                    typ = v2
            m.pieces.append(piece)
            m.scores.append(score)
            m.types.append(typ)
        elif num == 2 and wt == 2:  # TrainerSpec
            for n2, w2, v2 in _fields(v):
                if w2 != 0:
                    continue
                if n2 == 3:
                    m.model_type = v2
                elif n2 == 24:
                    m.treat_whitespace_as_suffix = bool(v2)
                elif n2 == 35:
                    m.byte_fallback = bool(v2)
                elif n2 == 40:
                    m.unk_id = _signed(v2)
        elif num == 3 and wt == 2:  # NormalizerSpec
            for n2, w2, v2 in _fields(v):
                if n2 == 1 and w2 == 2:
                    m.normalizer_name = v2.decode("utf-8")
                elif n2 == 2 and w2 == 2:
                    m.precompiled_charsmap = bytes(v2)
                elif n2 == 3 and w2 == 0:
                    m.add_dummy_prefix = bool(v2)
                elif n2 == 4 and w2 == 0:
                    m.remove_extra_whitespaces = bool(v2)
                elif n2 == 5 and w2 == 0:
                    m.escape_whitespaces = bool(v2)
    return m


# -- builders ---------------------------------------------------------------------------------------------------
def _vocab_dict(tokens: list[str]) -> dict[str, int]:
    """token -> id; a duplicated token string keeps its first id (later duplicates cannot be produced by encoding
    in sentencepiece or llama.cpp either)."""
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    return vocab


def _score_merges(tokens: list[str], scores: list[float], types: list[int], vocab: dict[str, int]
                  ) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's "merge the adjacent pair whose concatenation has the highest
    score" rule: every split (l, r) of a normal piece with both halves in the vocabulary, ranked by the piece's
    score (high first), ties broken like transformers' ``generate_merges``."""
    merges: list[tuple[float, int, int, str, str]] = []
    for i, piece in enumerate(tokens):
        if types[i] not in (NORMAL, USER_DEFINED) or len(piece) < 2 or vocab.get(piece) != i:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((scores[i], vocab[left], vocab[right], left, right))
    merges.sort(key=lambda m: (-m[0], m[1], m[2]))
    return [(m[3], m[4]) for m in merges]


def _added_tokens(tokens: list[str], types: list[int]) -> list[Any]:
    from tokenizers import AddedToken

    out = []
    for t, typ in zip(tokens, types):
        if typ in (CONTROL, UNKNOWN):
            out.append(AddedToken(t, special=True, normalized=False))
        elif typ == USER_DEFINED:
            out.append(AddedToken(t, special=False, normalized=False))
    return out


def _finish(tok: Any, added: list[Any]) -> str:
    # add_tokens/add_special_tokens keep the ids already in the model vocabulary
    specials = [a for a in added if a.special]
    plain = [a for a in added if not a.special]
    if specials:
        tok.add_special_tokens(specials)
    if plain:
        tok.add_tokens(plain)
    return tok.to_str()


def _spm_like_tokenizer(tokens: list[str], scores: list[float], types: list[int], *, model_type: int,
                        byte_fallback: bool, unk_id: int | None, normalizer_steps: list[Any],
                        strip_prefix: bool) -> str:
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = _vocab_dict(tokens)
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    if model_type == 2:
        merges = _score_merges(tokens, scores, types, vocab)
        model = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=byte_fallback)
    elif model_type == 1:
        model = models.Unigram([(t, float(s)) for t, s in zip(tokens, scores)], unk_id=unk_id,
                               byte_fallback=byte_fallback)
    else:
        raise UnsupportedModelError(f"SentencePiece model type {model_type} (WORD/CHAR) is not supported; "
                                    "supported: BPE, Unigram")
    tok = Tokenizer(model)
    if normalizer_steps:
        tok.normalizer = normalizers.Sequence(normalizer_steps)
    steps = [decoders.Replace(SPIECE, " ")]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if strip_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    return _finish(tok, _added_tokens(tokens, types))


def spm_to_tokenizer_json(path: str | os.PathLike) -> str:
    """A SentencePiece ``tokenizer.model`` as `tokenizers` JSON text that encodes exactly as sentencepiece does
    (for text without control-token strings such as ``<s>``, which `tokenizers` matches as special tokens)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ModelFormatError(f"{p}: cannot read the SentencePiece model ({e.strerror})") from None
    try:
        m = parse_spm_model(data)
    except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise ModelFormatError(f"{p}: not a valid SentencePiece model ({e})") from None
    if not m.pieces:
        raise ModelFormatError(f"{p}: not a valid SentencePiece model (no pieces)")
    if m.treat_whitespace_as_suffix:
        raise UnsupportedModelError(f"{p}: SentencePiece treat_whitespace_as_suffix is not supported")
    from tokenizers import Regex, normalizers

    steps: list[Any] = []
    if m.precompiled_charsmap and m.normalizer_name != "identity":
        steps.append(normalizers.Precompiled(m.precompiled_charsmap))
    if m.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if m.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPIECE if m.escape_whitespaces else " "))
    if m.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPIECE))
    unk_id = m.unk_id if 0 <= m.unk_id < len(m.pieces) else None
    byte_fallback = m.byte_fallback and any(t == BYTE for t in m.types)
    return _spm_like_tokenizer(m.pieces, m.scores, m.types, model_type=m.model_type, byte_fallback=byte_fallback,
                               unk_id=unk_id, normalizer_steps=steps, strip_prefix=m.add_dummy_prefix)


# -- GGUF -------------------------------------------------------------------------------------------------------
def _gguf_field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def gguf_vocab_to_tokenizer_json(reader: Any, where: str = "GGUF") -> str:
    """The vocabulary of an open ``gguf.GGUFReader`` as `tokenizers` JSON text that encodes exactly as llama.cpp
    does (llama.cpp's ``tokenize(..., special=True)``; the same as ``special=False`` for text without special-token
    strings). ``where`` names the file in error messages."""
    model = _gguf_field(reader, "tokenizer.ggml.model")
    if model is None:
        raise ModelFormatError(f"{where}: no embedded tokenizer (metadata key 'tokenizer.ggml.model' is missing)")
    tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise ModelFormatError(f"{where}: metadata key 'tokenizer.ggml.tokens' is missing or empty")
    types = _gguf_field(reader, "tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise ModelFormatError(f"{where}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    types = [int(t) for t in types]
    if model == "llama":
        scores = _gguf_field(reader, "tokenizer.ggml.scores")
        if scores is None or len(scores) != len(tokens):
            raise ModelFormatError(f"{where}: tokenizer.ggml.scores is missing or does not match the tokens")
        from tokenizers import normalizers

        prefix = bool(_gguf_field(reader, "tokenizer.ggml.add_space_prefix", True))
        steps = ([normalizers.Prepend(SPIECE)] if prefix else []) + [normalizers.Replace(" ", SPIECE)]
        unk = _gguf_field(reader, "tokenizer.ggml.unknown_token_id")
        if unk is None:
            unk = next((i for i, t in enumerate(types) if t == UNKNOWN), None)
        return _spm_like_tokenizer(list(tokens), [float(s) for s in scores], types, model_type=2,
                                   byte_fallback=any(t == BYTE for t in types), unk_id=unk,
                                   normalizer_steps=steps, strip_prefix=prefix)
    if model == "gpt2":
        return _gguf_bpe(reader, list(tokens), types, where)
    raise UnsupportedModelError(f"{where}: tokenizer.ggml.model {model!r} is not supported; supported: llama "
                                "(SentencePiece), gpt2 (byte-level BPE)")


def _gguf_bpe(reader: Any, tokens: list[str], types: list[int], where: str) -> str:
    """A ``gpt2`` vocabulary: llama.cpp's pre-tokenizer for ``tokenizer.ggml.pre`` (see :mod:`.pretokenizers`),
    then BPE over byte-level pieces (or, for the raw-text types, over UTF-8 with ``<0xNN>`` byte fallback)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    merges_raw = _gguf_field(reader, "tokenizer.ggml.merges")
    if merges_raw is None:
        raise ModelFormatError(f"{where}: metadata key 'tokenizer.ggml.merges' is missing (a gpt2 BPE vocabulary "
                               "needs it)")
    merges = []
    for m in merges_raw:
        cut = m.find(" ", 1)  # as llama.cpp splits a merge: at the first space after the first character
        if cut < 0:
            raise ModelFormatError(f"{where}: malformed BPE merge {m!r} (expected 'left right')")
        merges.append((m[:cut], m[cut + 1:]))
    pre = _gguf_field(reader, "tokenizer.ggml.pre") or "default"  # llama.cpp: missing or empty -> default
    if pre not in PRE_NAMES:
        raise UnsupportedModelError(f"{where}: BPE pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not one llama.cpp "
                                    f"knows; supported ({len(SUPPORTED_NAMES)}): {', '.join(SUPPORTED_NAMES)}")
    spec = PRE_TYPES[PRE_NAMES[pre]]
    if spec.unsupported:
        raise UnsupportedModelError(f"{where}: BPE pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported: "
                                    f"{spec.unsupported}")
    vocab = _vocab_dict(tokens)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=spec.ignore_merges,
                               byte_fallback=not spec.byte_level))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in spec.regexes]
    if spec.byte_level:
        tok.pre_tokenizer = pre_tokenizers.Sequence(splits + [
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
    else:
        if spec.escape_whitespace:
            tok.normalizer = normalizers.Replace(" ", SPIECE)
        tok.pre_tokenizer = pre_tokenizers.Sequence(splits)
        tok.decoder = decoders.Sequence(([decoders.Replace(SPIECE, " ")] if spec.escape_whitespace else [])
                                        + [decoders.ByteFallback(), decoders.Fuse()])
    if spec.newline_runs_whole:
        # llama.cpp keeps a newline-run piece whole when it is a token; the BPE here always merges, so the merges
        # must already give each such token
        for t, i in vocab.items():
            if len(t) > 1 and not t.strip("\n") and tok.encode(t, add_special_tokens=False).ids != [i]:
                raise UnsupportedModelError(
                    f"{where}: BPE pre-tokenizer {pre!r} (tokenizer.ggml.pre): llama.cpp takes the newline run "
                    f"{t!r} whole as token {i}, which its merges do not build; `tokenizers` cannot express that")
    return _finish(tok, _added_tokens(tokens, types))
