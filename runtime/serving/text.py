"""Per-request text output: incremental detokenization and stop strings, shared by the Python API
(:meth:`edgespool.runtime.api.Model.generate`) and the batching scheduler.

:class:`TextDecoder` turns ids pushed one at a time into text pieces, holding back a piece while it ends in an
incomplete UTF-8 sequence (the same rule as :meth:`BundleTokenizer.stream`, push-driven so a scheduler can feed
many sequences). :class:`StopText` matches stop strings on the decoded text across token boundaries (a stop split
over several tokens is found), like llama-cpp-python: text that could still be the start of a stop string is held
back, and neither the stop string nor anything after it is emitted.
"""
from __future__ import annotations

from typing import Any, Iterable

from ...errors import OptionError


class TextDecoder:
    """Incremental decoding of one sequence's generated ids with ``tokenizer`` (a BundleTokenizer)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self._prefix = self._read = 0  # ids[prefix:read] already emitted (context); ids[read:] not yet emitted

    def push(self, token: int) -> str:
        """The new text that ``token`` completes ("" while a character is incomplete)."""
        self.ids.append(int(token))
        prefix_text = self.tok.decode(self.ids[self._prefix:self._read])
        new_text = self.tok.decode(self.ids[self._prefix:])
        if new_text.endswith("\ufffd") or len(new_text) <= len(prefix_text):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return new_text[len(prefix_text):]


class StopText:
    """Stop strings over a stream of text pieces. :meth:`push` returns the text that is safe to emit; after a stop
    string is seen :attr:`stopped` is True and nothing more is emitted. :meth:`flush` returns the held-back tail
    when generation ends for another reason."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped: str | None = None  # the stop string that ended the text

    def push(self, piece: str) -> str:
        if self.stopped is not None:
            return ""
        if not self.stops:
            return piece
        buf = self._pending + piece
        hits = [(buf.find(s), s) for s in self.stops if s in buf]
        if hits:
            at, s = min(hits)
            self.stopped, self._pending = s, ""
            return buf[:at]
        hold = 0  # the longest suffix of buf that is a proper prefix of some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:n]):
                    hold = n
                    break
        self._pending = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold] if hold else buf

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped is not None else self._pending), ""
        return out


def split_stops(stop: Any, vocab_size: int) -> tuple[tuple[int, ...] | None, tuple[str, ...]]:
    """``stop`` (None, one string, one id, or a list mixing strings and token ids) as (ids or None when no id was
    given, strings); OptionError naming the bad entry otherwise."""
    if stop is None:
        return None, ()
    if isinstance(stop, (str, int)) and not isinstance(stop, bool):
        stop = [stop]
    try:
        items = list(stop)
    except TypeError:
        raise OptionError(f"stop must be a string, a token id or a list of them, got {type(stop).__name__}") from None
    ids: list[int] = []
    strs: list[str] = []
    for s in items:
        if isinstance(s, str):
            if not s:
                raise OptionError("stop: an empty string would stop before any text; remove it")
            strs.append(s)
        elif hasattr(s, "__index__") and not isinstance(s, bool) and 0 <= int(s) < vocab_size:
            ids.append(int(s))
        else:
            raise OptionError(f"stop: {s!r} is neither a string nor a token id in 0..{vocab_size - 1}")
    return (tuple(ids) if ids or not strs else None), tuple(strs)


class TextOutput:
    """One sequence's text: :class:`TextDecoder` then :class:`StopText`. :meth:`push` a generated id, get the text
    to emit; :attr:`stopped` once a stop string was seen."""

    def __init__(self, tokenizer: Any, stops: Iterable[str]) -> None:
        self._dec, self._stops = TextDecoder(tokenizer), StopText(stops)

    @property
    def stopped(self) -> str | None:
        return self._stops.stopped

    def push(self, token: int) -> str:
        return self._stops.push(self._dec.push(token))

    def flush(self) -> str:
        return self._stops.flush()
