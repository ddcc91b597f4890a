"""Chat templates: the model's Jinja template (stored in the bundle at export) rendered the way transformers'
``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`` renders it.

The environment is transformers' own (``transformers/utils/chat_template_utils.py``): jinja2's
``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension and the
``{% generation %}`` block (rendered as its body), the ``tojson`` filter as ``json.dumps`` (no HTML escaping,
``ensure_ascii=False``, ``indent`` / ``separators`` / ``sort_keys``), the globals ``raise_exception``,
``strftime_now``, ``dict`` and a ``namespace`` that refuses underscore names. Messages are prepared as transformers
prepares them (keys whose value is None dropped, everything rebuilt from plain JSON types, a message's reasoning
copied to ``reasoning_content`` / ``thinking``), and the tokenizer's named special tokens (``bos_token``,
``eos_token``, ...) are template variables. One addition: the ``do`` extension (``{% do list.append(x) %}``), which
some templates written for other engines use; it only makes templates render that transformers would refuse.
"""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ...errors import BundleError, ChatTemplateError, OptionError

OPTION = "template"  # the keyword of Model.chat / Model.chat_prompt that supplies a template
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # transformers' order; the first is standard
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; renders its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: Any) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class TemplateDict:
        """``dict(...)`` / ``dict.fromkeys(...)`` without exposing the type itself."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """``namespace(...)`` refusing underscore-prefixed attribute names (no reach into CPython internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # jinja's own signature trick: namespace(self=...) works
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}. "
                    "Please rename the attribute.")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols, jinja2.ext.do])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


def _plain(value: Any) -> Any:
    """What the template may see: plain JSON types rebuilt (as transformers' ``_plain_template_data``), anything
    else an inert ``<TypeName>`` placeholder."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):  # np.bool_(False) would otherwise be a truthy placeholder
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _as_dict(message: Any) -> Any:
    if dataclasses.is_dataclass(message) and not isinstance(message, type):
        return {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    if callable(getattr(message, "model_dump", None)):
        return message.model_dump()
    return message


def prepare_messages(messages: Iterable[Any]) -> list[dict[str, Any]]:
    """The conversation as the template sees it (transformers' normalisation): a list of dicts, keys whose value is
    None dropped, plain JSON types, reasoning under ``reasoning_content`` and ``thinking``."""
    if isinstance(messages, (str, bytes, Mapping)):
        raise OptionError("messages must be a list of {'role': ..., 'content': ...} dicts, got a "
                          f"{type(messages).__name__}")
    out = []
    for m in messages:
        m = _as_dict(m)
        if not isinstance(m, Mapping):
            raise OptionError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts; got {m!r}")
        m = _plain({k: v for k, v in m.items() if v is not None})
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    if not out:
        raise OptionError("messages is empty; a chat needs at least one message")
    return out


def _template_line(tb: Any) -> int | None:
    """Line of the template where a render error happened (jinja rewrites template frames to ``<template>``)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class ChatTemplate:
    """A compiled chat template plus the special-token texts it is rendered with."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None, *,
                 where: str = "chat template") -> None:
        import jinja2

        if not isinstance(source, str):
            raise OptionError(f"{OPTION}= must be a Jinja template string, got a {type(source).__name__}")
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self.where = where
        try:
            self._compiled = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ChatTemplateError(f"{where} does not compile: line {e.lineno}: {_one_line(e.message or e)}") from None

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, section: Mapping[str, Any]) -> "ChatTemplate":
        """The template a bundle's tokenizer section names (``chat_template``: a file in the bundle), with the
        section's ``special_tokens``. A bundle without one is an error that says how to pass a template."""
        name = section.get("chat_template")
        if not name:
            raise ChatTemplateError(f"{bundle_dir}: the bundle has no chat template (its source model had none); "
                                    f"pass one with chat(..., {OPTION}='<jinja template>'), or use generate() "
                                    "with a prompt you format yourself")
        path = Path(bundle_dir) / name
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BundleError(f"{path}: cannot read the chat template the manifest names ({e})") from None
        return cls(text, section.get("special_tokens") or {}, where=f"chat template {path}")

    def render(self, messages: Iterable[Any], add_generation_prompt: bool = True, *,
               tools: list[dict] | None = None, documents: list[dict] | None = None,
               continue_final_message: bool | str = False, **kwargs: Any) -> str:
        """The prompt text of ``messages``, byte for byte what transformers' ``apply_chat_template(messages,
        tokenize=False, add_generation_prompt=..., tools=..., documents=..., continue_final_message=...,
        **kwargs)`` gives. ``kwargs`` are extra template variables (e.g. ``enable_thinking=False``); they override
        the special tokens of the same name. ``tools`` are JSON-schema dicts."""
        chat = prepare_messages(messages)
        if continue_final_message and add_generation_prompt:
            raise OptionError("continue_final_message and add_generation_prompt exclude each other: continue the last "
                              "message, or open a new assistant turn")
        if tools is not None:
            for t in tools:
                if not isinstance(t, Mapping):
                    raise OptionError(f"tools must be JSON-schema dicts; got {type(t).__name__} (convert functions "
                                      "with transformers.utils.get_json_schema)")
        if documents is not None:
            for d in documents:
                if not isinstance(d, Mapping):
                    raise OptionError("documents must be a list of dicts with 'title' and 'text' keys")
        final = ""
        if continue_final_message:
            final = self._tag_final(chat, continue_final_message)
        variables = _plain({**self.special_tokens, **kwargs})
        text = self._render(messages=chat, tools=_plain(tools), documents=_plain(documents),
                            add_generation_prompt=add_generation_prompt, **variables)
        if continue_final_message:
            text = self._cut_at_tag(text, final)
        return text

    def _render(self, **context: Any) -> str:
        import jinja2

        try:
            return self._compiled.render(**context)
        except jinja2.TemplateError as e:
            msg = e.message if e.message is not None else str(e)
            kind = "raised" if type(e) is jinja2.TemplateError else f"failed ({type(e).__name__})"
            line = _template_line(e.__traceback__)
            at = f" at line {line}" if line and kind != "raised" else ""
            raise ChatTemplateError(f"{self.where} {kind}{at}: {_one_line(msg)}") from None
        except Exception as e:  # a Python error inside a template expression ('a' + none, 1 / 0, ...)
            line = _template_line(e.__traceback__)
            at = f" at line {line}" if line else ""
            raise ChatTemplateError(f"{self.where} failed ({type(e).__name__}){at}: {_one_line(e)}") from None

    def _tag_final(self, chat: list[dict[str, Any]], which: bool | str) -> str:
        """Mark the final message so the render can be cut right after it (transformers' continue_final_message)."""
        key = which if isinstance(which, str) else "content"
        final = chat[-1].get(key)
        if final is None:
            raise OptionError(f"continue_final_message: the final message has no {key!r} to continue")
        fields = [key]
        if key in _REASONING_FIELDS:
            fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == final]
        if not any(f in self.source for f in fields):
            raise OptionError(f"continue_final_message={key!r}, but the chat template never reads that field")
        if isinstance(final, (list, tuple)):
            for block in reversed(final):
                if "text" in block:
                    final = block["text"]
                    block["text"] = block["text"] + _CONTINUE_TAG
                    break
            else:
                raise OptionError("continue_final_message: the final message has no text block to continue")
        else:
            for f in fields:
                chat[-1][f] = chat[-1][f] + _CONTINUE_TAG
        return final

    def _cut_at_tag(self, text: str, final: str) -> str:
        if final.strip() not in text or _CONTINUE_TAG.strip() not in text:
            raise ChatTemplateError(f"{self.where}: continue_final_message, but the final message does not appear "
                                    "in the rendered chat (the template drops or rewrites it)")
        at = text.rindex(_CONTINUE_TAG.strip())
        if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
            return text[:at]
        return text[:at].rstrip()
