"""OpenAI / llama-cpp-python response shapes: completion and chat completion objects, their stream chunks, usage and
timings. Plain dicts (JSON-ready), built in one place for the Python API and the HTTP server."""
from __future__ import annotations

import time
import uuid
from typing import Any


def new_id(kind: str) -> str:
    """``cmpl-...`` / ``chatcmpl-...`` ids as OpenAI names them."""
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def timings(prompt_n: int, prompt_s: float, predicted_n: int, predicted_s: float, cached_n: int = 0) -> dict[str, Any]:
    """llama-server's ``timings`` object (milliseconds and tokens/s, measured by the caller)."""
    def per_s(n: int, s: float) -> float:
        return n / s if s > 0 else 0.0

    return {"cache_n": cached_n, "prompt_n": prompt_n, "prompt_ms": prompt_s * 1e3,
            "prompt_per_second": per_s(prompt_n, prompt_s), "predicted_n": predicted_n,
            "predicted_ms": predicted_s * 1e3, "predicted_per_second": per_s(predicted_n, predicted_s)}


def completion(cid: str, model: str, text: str, finish_reason: str | None, use: dict | None,
               extra: dict | None = None) -> dict[str, Any]:
    out = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
           "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]}
    if use is not None:
        out["usage"] = use
    out.update(extra or {})
    return out


def chat_completion(cid: str, model: str, content: str, finish_reason: str, use: dict,
                    extra: dict | None = None) -> dict[str, Any]:
    out = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                        "finish_reason": finish_reason}], "usage": use}
    out.update(extra or {})
    return out


def chat_chunk(cid: str, model: str, delta: dict[str, Any], finish_reason: str | None = None,
               extra: dict | None = None) -> dict[str, Any]:
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    out.update(extra or {})
    return out
