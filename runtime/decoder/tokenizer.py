"""Tokenizer glue: the bundle's tokenizer.json (HF `tokenizers`) plus BOS/EOS settings, and incremental decoding
for streaming text out token by token."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from ...errors import BundleError, OptionError


def _checked_text(text: str, what: str = "prompt") -> str:
    """``text`` when it is valid Unicode that UTF-8 can encode (no lone surrogates, which is what invalid UTF-8
    bytes in a command-line argument decode to); an OptionError naming ``what`` otherwise."""
    if not isinstance(text, str):
        raise OptionError(f"{what}: expected text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise OptionError(f"{what} is not valid UTF-8 (undecodable byte at character {e.start}); pass UTF-8 "
                          "text") from None
    return text


class BundleTokenizer:
    """Encode prompts and decode generated ids the way the source model's tokenizer does."""

    def __init__(self, path: Path, bos_token_id: int | None, eos_token_ids: Iterable[int], add_bos: bool) -> None:
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a generic Exception on bad JSON
            raise BundleError(f"{path}: cannot load tokenizer ({e})") from None
        self.bos_token_id = bos_token_id
        self.eos_token_ids = tuple(eos_token_ids)
        self.add_bos = add_bos

    @classmethod
    def from_manifest(cls, bundle_dir: Path, section: dict) -> "BundleTokenizer":
        from ..bundle.manifest_schema import check_file_digest

        path = bundle_dir / section["file"]
        # tokenizer.json is covered by the manifest's sha256 (a few ms): an edited file is refused, not used
        check_file_digest(path, section.get("sha256"), "tokenizer.sha256")
        return cls(path, section.get("bos_token_id"), section.get("eos_token_ids", ()),
                   bool(section.get("add_bos", False)))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; the bundle's BOS is prepended when the model expects it."""
        ids = self._encode(text)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def encode_rendered(self, text: str) -> list[int]:
        """Token ids of a rendered chat prompt: special-token texts in it (``<|im_start|>``, the template's own
        BOS) become their ids, and the bundle's BOS is prepended only when the model expects one and the text does
        not already start with it -- llama.cpp's rule (it strips a leading BOS text and tokenizes with
        add_special), so a template that emits ``{{ bos_token }}`` gets exactly one BOS."""
        ids = self._encode(text)
        if self.add_bos and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids = [self.bos_token_id, *ids]
        return ids

    def _encode(self, text: str) -> list[int]:
        _checked_text(text)
        try:
            return self.tok.encode(text, add_special_tokens=False).ids
        except Exception as e:  # tokenizers raises plain Exceptions for a tokenizer.json it loaded but cannot run
            raise BundleError(f"the bundle's tokenizer cannot encode the prompt ({str(e)[:200]}); the tokenizer.json "
                              "is corrupt, re-export the bundle") from None

    def special_tokens(self) -> dict[str, str]:
        """``bos_token`` / ``eos_token`` texts from the ids (for bundles whose manifest does not name them)."""
        out = {}
        for name, tid in (("bos_token", self.bos_token_id), ("eos_token", (self.eos_token_ids or (None,))[0])):
            text = self.tok.id_to_token(tid) if tid is not None else None
            if text is not None:
                out[name] = text
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def stream(self, ids: Iterable[int]) -> Iterator[str]:
        """Turn a stream of ids into a stream of text pieces; a piece is held back while it ends in an incomplete
        UTF-8 sequence, so multi-byte characters split over tokens come out whole.

        Incremental: each step decodes only the ids since the last emitted piece plus the ids of the piece before
        it (whose text is subtracted, so decoder rules like SentencePiece's leading-space strip stay right), not
        the whole generation again."""
        seen: list[int] = []
        prefix = read = 0  # seen[prefix:read] is the context already emitted; seen[read:] is not yet emitted
        for i in ids:
            seen.append(i)
            prefix_text = self.decode(seen[prefix:read])
            new_text = self.decode(seen[prefix:])
            if new_text.endswith("\ufffd") or len(new_text) <= len(prefix_text):
                continue
            yield new_text[len(prefix_text):]
            prefix, read = read, len(seen)
