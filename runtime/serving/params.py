"""Request bodies of the OpenAI endpoints, checked field by field (HttpError 400 naming the field): sampling options
by OpenAI's names (temperature, top_p, max_tokens / max_completion_tokens, stop, seed, frequency_penalty,
presence_penalty, stream, stream_options.include_usage) plus llama-server's top_k, repeat_penalty, repeat_last_n,
ignore_eos.
Fields OpenAI defines that do not change the output here (user, logprobs=false, n=1, ...) are accepted; others that
would (n > 1, logprobs, tools' execution) are refused rather than ignored."""
from __future__ import annotations

from typing import Any


class HttpError(Exception):
    """A request error with its HTTP status and the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


# llama-server's sampling defaults (temperature 0.8, top_k 40, top_p 0.95)
DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40}



def _number(body: dict, name: str, lo: float, hi: float, default: Any) -> Any:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise HttpError(400, f"'{name}' must be a number, got {type(v).__name__}", name)
    if not lo <= v <= hi:
        raise HttpError(400, f"'{name}' must be in [{lo:g}, {hi:g}], got {v}", name)
    return v


def _int(body: dict, name: str, lo: int, hi: int | None, default: Any) -> Any:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise HttpError(400, f"'{name}' must be an integer, got {type(v).__name__}", name)
    if v < lo or (hi is not None and v > hi):
        raise HttpError(400, f"'{name}' must be >= {lo}" + (f" and <= {hi}" if hi is not None else "") + f", got {v}",
                        name)
    return v


def completion_params(body: dict, chat: bool) -> dict[str, Any]:
    """The checked options of a completion / chat completion body: prompt (completions), max_tokens (None = up to
    the slot's context), stream, include_usage and the sampling keywords of :meth:`Model.request`."""
    out: dict[str, Any] = {}
    if not chat:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                       for t in prompt):
            out["prompt"] = prompt
        elif isinstance(prompt, str):
            out["prompt"] = prompt
        else:
            raise HttpError(400, "'prompt' must be a string, a list of one string or a list of token ids", "prompt")
    mt = body.get("max_completion_tokens") if chat and body.get("max_completion_tokens") is not None else None
    out["max_tokens"] = _int(body, "max_completion_tokens" if mt is not None else "max_tokens", 0, None,
                             16 if not chat else None)
    n = body.get("n", 1)
    if n != 1:
        raise HttpError(400, f"'n' must be 1 (one choice per request), got {n!r}", "n")
    if body.get("logprobs") not in (None, False):
        raise HttpError(400, "'logprobs' is not supported", "logprobs")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise HttpError(400, f"'stream' must be a boolean, got {type(stream).__name__}", "stream")
    out["stream"] = stream
    so = body.get("stream_options") or {}
    if not isinstance(so, dict):
        raise HttpError(400, "'stream_options' must be an object", "stream_options")
    out["include_usage"] = bool(so.get("include_usage", False))
    out["temperature"] = _number(body, "temperature", 0.0, 2.0, DEFAULTS["temperature"])
    out["top_p"] = _number(body, "top_p", 0.0, 1.0, DEFAULTS["top_p"])
    if out["top_p"] == 0:
        out["top_p"] = 1e-9  # OpenAI allows 0: keep only the most likely token
    out["top_k"] = _int(body, "top_k", 0, None, DEFAULTS["top_k"])
    out["seed"] = _int(body, "seed", 0, 2**63 - 1, None)
    out["frequency_penalty"] = _number(body, "frequency_penalty", -2.0, 2.0, 0.0)
    out["presence_penalty"] = _number(body, "presence_penalty", -2.0, 2.0, 0.0)
    out["repeat_penalty"] = _number(body, "repeat_penalty", 1e-6, 10.0, 1.0)
    out["repeat_last_n"] = _int(body, "repeat_last_n", -1, None, 64)
    ignore = body.get("ignore_eos", False)  # llama-server's extension: generate max_tokens whatever the model says
    if not isinstance(ignore, bool):
        raise HttpError(400, f"'ignore_eos' must be a boolean, got {type(ignore).__name__}", "ignore_eos")
    out["ignore_eos"] = ignore
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 16:
            raise HttpError(400, "'stop' must be a non-empty string or a list of up to 16 non-empty strings", "stop")
        out["stop"] = stop
    return out


def chat_messages(body: dict) -> list[dict[str, Any]]:
    """``messages``: a non-empty list of {role, content} with string content (or OpenAI's list of text parts)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise HttpError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise HttpError(400, f"messages[{i}] must be an object with a string 'role'", "messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": "..."}]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise HttpError(400, f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if content is not None and not isinstance(content, str):
            raise HttpError(400, f"messages[{i}].content must be a string, got {type(content).__name__}",
                            "messages")
        out.append({**m, "content": content if content is not None else ""})
    return out
