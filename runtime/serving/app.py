"""The OpenAI-compatible HTTP app of ``edgespool serve`` (Starlette, an ASGI app run by uvicorn).

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream: true``: server-sent events, one
``data: {chunk}`` per piece, ending ``data: [DONE]``), ``GET /v1/models``, ``GET /health`` (503 while the model
loads), ``GET /metrics`` (Prometheus text), ``GET /`` (the chat page, when given). Requests are decoded together by
a :class:`~edgespool.runtime.serving.scheduler.Scheduler`. Errors use OpenAI's shape (``{"error": {"message",
"type", "param", "code"}}``): 400 for a malformed / non-UTF-8 / wrong-typed body or a prompt + max_tokens over the
slot's context, 404 for an unknown model, 413 for a body over ``max_body`` bytes, 429 when the queue is full, 503
while loading. A client that disconnects cancels its request before the next step.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ...errors import EdgespoolError, OptionError
from . import shapes
from .params import HttpError, completion_params, chat_messages
from .scheduler import QueueFull, Scheduler

MAX_BODY = 1 << 20  # bytes of a request body


class ServerState:
    """What the routes share: the loaded model and scheduler (None while loading), the load error if any."""

    def __init__(self) -> None:
        self.model: Any = None
        self.scheduler: Scheduler | None = None
        self.error: str | None = None
        self.started = time.time()
        self.http_requests: dict[tuple[str, int], int] = {}


def error_response(status: int, message: str, param: str | None = None, kind: str | None = None):
    from starlette.responses import JSONResponse

    kind = kind or {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
                    429: "rate_limit_error", 503: "unavailable_error"}.get(status, "server_error")
    code = {404: "model_not_found", 413: "request_too_large", 429: "queue_full"}.get(status)
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


async def read_json(request: Any, max_body: int) -> dict[str, Any]:
    """The request body as a JSON object: HttpError 413 past ``max_body`` bytes (the declared length or what
    arrives), 400 for non-UTF-8, malformed JSON or a non-object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise HttpError(413, f"request body of {declared} bytes exceeds the limit of {max_body} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body:
            raise HttpError(413, f"request body exceeds the limit of {max_body} bytes")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as e:
        raise HttpError(400, f"request body is not valid UTF-8 (byte {body[e.start]:#04x} at offset {e.start})")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise HttpError(400, f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")
    if not isinstance(obj, dict):
        raise HttpError(400, f"request body must be a JSON object, got {type(obj).__name__}")
    return obj


def create_app(load_model: Callable[[], Any], *, parallel: int = 4, queue_size: int = 32, context: int | None = None,
               page: Path | None = None, max_body: int = MAX_BODY, on_ready: Callable[[Any], None] | None = None):
    """The Starlette app. ``load_model()`` runs in a background thread at startup (``/health`` is 503 until it
    returns), then a :class:`Scheduler` with ``parallel`` slots starts; ``on_ready(scheduler)`` is called then
    (``--plan`` prints the slots)."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    state = ServerState()

    def loader() -> None:
        try:
            model = load_model()
            sched = Scheduler(model, parallel=parallel, queue_size=queue_size, context=context)
            sched.start()
            state.model, state.scheduler = model, sched
            if on_ready is not None:
                on_ready(sched)
        except EdgespoolError as e:
            state.error = str(e)
        except Exception as e:  # reported on /health, the server stays up
            state.error = f"internal error: {type(e).__name__}: {e}"

    @asynccontextmanager
    async def lifespan(app: Any):
        t = threading.Thread(target=loader, name="edgespool-load", daemon=True)
        t.start()
        yield
        if state.scheduler is not None:
            state.scheduler.stop()
        if state.model is not None:
            state.model.close()

    def ready() -> Any:
        if state.error is not None:
            return error_response(503, f"the model failed to load: {state.error}")
        if state.scheduler is None:
            return error_response(503, "the model is loading", kind="unavailable_error")
        return None

    async def health(request: Any):
        if state.error is not None:
            return JSONResponse({"status": "error", "error": state.error}, status_code=503)
        if state.scheduler is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        s = state.scheduler
        return JSONResponse({"status": "ok", "slots_idle": s.parallel - s.busy, "slots_processing": s.busy,
                             "queued": s.queued})

    async def models(request: Any):
        if (r := ready()) is not None:
            return r
        m = state.model
        return JSONResponse({"object": "list", "data": [{"id": m.name, "object": "model", "created": int(state.started),
                                                         "owned_by": "edgespool",
                                                         "meta": {"n_ctx_slot": state.scheduler.slot_context,
                                                                  "n_vocab": m.config.vocab_size}}]})

    async def metrics(request: Any):
        from .metrics import prometheus_text

        return PlainTextResponse(prometheus_text(state), media_type="text/plain; version=0.0.4")

    async def index(request: Any):
        if page is None or not page.is_file():
            return PlainTextResponse("edgespool serve: OpenAI-compatible API under /v1", status_code=200)
        return HTMLResponse(page.read_text(encoding="utf-8"))

    async def completions(request: Any):
        return await handle(request, chat=False)

    async def chat_completions(request: Any):
        return await handle(request, chat=True)

    async def handle(request: Any, chat: bool):
        try:
            body = await read_json(request, max_body)
            if (r := ready()) is not None:
                return r
            model, sched = state.model, state.scheduler
            model_name = body.get("model")
            if model_name is not None and (not isinstance(model_name, str) or model_name not in (model.name, "")):
                raise HttpError(404, f"model {model_name!r} is not served here (this server has {model.name!r})",
                                "model")
            p = completion_params(body, chat)
            prompt = model.chat_ids(chat_messages(body)) if chat else p.pop("prompt")
            max_tokens = p.pop("max_tokens")
            stream = p.pop("stream")
            include_usage = p.pop("include_usage")
            ignore_eos = p.pop("ignore_eos")
            req = model.request(prompt, 0, **p)  # checks the prompt and the sampling values
            if ignore_eos:
                req.stop_ids = ()
            if max_tokens is None:
                max_tokens = max(0, sched.slot_context - len(req.ids))
            sched.check(len(req.ids), max_tokens)
            req.max_tokens = max_tokens
        except HttpError as e:
            return error_response(e.status, e.message, e.param)
        except EdgespoolError as e:  # OptionError (context, values), ChatTemplateError, ...
            return error_response(400, str(e))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(ev: tuple) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ev)

        try:
            job = sched.submit(req, emit)
        except QueueFull as e:
            return error_response(429, str(e))
        except OptionError as e:
            return error_response(400, str(e))
        cid = shapes.new_id("chatcmpl" if chat else "cmpl")
        if stream:
            return StreamingResponse(sse(cid, chat, model.name, job, events, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await collect(request, cid, chat, model.name, job, events)

    async def collect(request: Any, cid: str, chat: bool, name: str, job: Any, events: asyncio.Queue):
        pieces: list[str] = []
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        state.scheduler.cancel(job)
                        return error_response(499, "client disconnected")
                    continue
                if ev[0] == "text":
                    pieces.append(ev[1])
                elif ev[0] == "error":
                    return error_response(500, ev[1])
                else:
                    info = ev[1]
                    extra = {"timings": info["timings"]}
                    text = "".join(pieces)
                    if chat:
                        return JSONResponse(shapes.chat_completion(cid, name, text, info["finish_reason"],
                                                                   info["usage"], extra))
                    return JSONResponse(shapes.completion(cid, name, text, info["finish_reason"], info["usage"],
                                                          extra))
        except asyncio.CancelledError:
            state.scheduler.cancel(job)
            raise

    async def sse(cid: str, chat: bool, name: str, job: Any, events: asyncio.Queue, include_usage: bool):
        def data(obj: dict) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        try:
            if chat:
                yield data(shapes.chat_chunk(cid, name, {"role": "assistant", "content": ""}))
            while True:
                ev = await events.get()
                if ev[0] == "text":
                    yield data(shapes.chat_chunk(cid, name, {"content": ev[1]}) if chat
                               else shapes.completion(cid, name, ev[1], None, None))
                elif ev[0] == "error":
                    yield data({"error": {"message": ev[1], "type": "server_error", "param": None, "code": None}})
                    break
                else:
                    info = ev[1]
                    extra = {"timings": info["timings"]}
                    if include_usage:
                        extra["usage"] = info["usage"]
                    yield data(shapes.chat_chunk(cid, name, {}, info["finish_reason"], extra) if chat
                               else shapes.completion(cid, name, "", info["finish_reason"], None, extra))
                    break
            yield "data: [DONE]\n\n"
        finally:  # the client went away (the generator is closed) or the stream ended: stop the job
            state.scheduler.cancel(job)

    routes = [Route("/", index), Route("/health", health), Route("/metrics", metrics),
              Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.edgespool = state
    return app
