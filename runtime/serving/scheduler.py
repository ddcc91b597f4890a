"""Continuous batching: request slots decoded together, one :meth:`Engine.forward_batch` pass per step.

A :class:`Scheduler` owns a model's engine and runs it in ONE worker thread (the engine is not thread-safe).
Requests (:class:`~edgespool.runtime.api.Request`, already checked by :meth:`Model.request`) are submitted from any
thread into a bounded queue (:class:`QueueFull` when it is full: the server answers 429); between steps, queued
requests take free slots and finished or cancelled ones leave. Each step gathers, within the step's token budget
(the plan's prefill chunk, ``max_batch_tokens``), one decode token of every decoding sequence plus prompt chunks of
the sequences still reading their prompt, and runs them in one pass: a streamed model reads each weight group once
per step for all of them.

KV caches come out of the context budget: each slot may hold ``slot_context`` positions, ``context // parallel``
(llama-server's ``n_ctx / n_parallel``), where ``context`` is the memory plan's KV cache when streaming (so the
plan's KV bytes cover every slot at once) or ``--ctx-size`` when resident. A request is sized to what it asks
(prompt + max_tokens positions), refused up front (:class:`~edgespool.errors.OptionError`, HTTP 400) when that
exceeds its slot. :meth:`cancel` (a client that disconnected) takes effect before the next step.

Events go to each request's ``emit`` callback from the worker thread: ``("text", piece)`` and finally
``("done", info)`` (finish_reason, usage, timings) or ``("error", message)``.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ...errors import BudgetError, EdgespoolError, OptionError
from . import shapes
from .text import TextOutput

Emit = Callable[[tuple], None]


class QueueFull(EdgespoolError):
    """The request queue is full (HTTP 429): retry later."""


@dataclass
class Job:
    """One request in the scheduler: its checked request, KV cache, text state and timings."""

    id: int
    req: Any  # edgespool.runtime.api.Request
    emit: Emit
    out: TextOutput
    submitted: float = field(default_factory=time.perf_counter)
    cache: Any = None
    fed: int = 0  # prompt tokens already run
    last: int | None = None  # the last sampled token (fed next step)
    generated: int = 0
    first_token_at: float | None = None
    prompt_s: float = 0.0
    cancelled: bool = False
    done: bool = False

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.req.ids)


@dataclass
class Metrics:
    """Counters for /metrics (Prometheus): cumulative since start, plus the last step's figures."""

    requests_total: int = 0
    requests_rejected_full: int = 0
    requests_cancelled: int = 0
    requests_finished: int = 0
    prompt_tokens_total: int = 0
    generated_tokens_total: int = 0
    ttft_s_sum: float = 0.0
    ttft_count: int = 0
    steps_total: int = 0
    step_s_sum: float = 0.0
    batch_rows_sum: int = 0
    decode_tok_s: float = 0.0  # generated tokens / s over the last few seconds of steps
    _window: list[tuple[float, int]] = field(default_factory=list)


class Scheduler:
    """Continuous batching over ``model`` (a :class:`~edgespool.runtime.api.Model`) with ``parallel`` slots and a
    queue of ``queue_size`` waiting requests. ``context``: KV positions shared by the slots (default: the plan's
    KV cache when streaming, else ``parallel`` x min(model context, 4096))."""

    def __init__(self, model: Any, parallel: int = 4, queue_size: int = 32, context: int | None = None,
                 step_tokens: int | None = None) -> None:
        if parallel < 1:
            raise OptionError(f"--parallel {parallel}: needs at least one slot")
        if queue_size < 0:
            raise OptionError(f"--queue {queue_size}: must be >= 0")
        self.model, self.engine = model, model.engine
        model_ctx = int(model.config.max_position_embeddings)
        planned = self.engine.max_context
        if context is None:
            context = planned if planned is not None else parallel * min(model_ctx, 4096)
        if planned is not None and context > planned:
            raise BudgetError(f"--ctx-size {context} exceeds the memory plan's KV cache of {planned} positions; "
                              "raise --max-context / --memory-budget or lower --ctx-size")
        self.parallel, self.queue_size = int(parallel), int(queue_size)
        self.context = int(context)
        self.slot_context = min(model_ctx, self.context // self.parallel)
        if self.slot_context < 16:
            raise BudgetError(f"{self.context} KV positions over --parallel {parallel} slots leave "
                              f"{self.slot_context} per slot; lower --parallel or raise the budget / --max-context")
        self.step_tokens = int(step_tokens or self.engine.prefill_chunk or 256)
        self.metrics = Metrics()
        self._queue: list[Job] = []
        self._active: list[Job] = []
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def describe(self) -> str:
        """One line for ``--plan`` / logs: slots, per-slot KV positions and where they come from."""
        src = ("the memory plan's KV cache" if self.engine.max_context is not None else "--ctx-size (resident)")
        return (f"{self.parallel} slots x {self.slot_context} KV positions ({self.context} from {src}, split "
                f"evenly as llama-server's n_ctx/n_parallel; each request allocates prompt + max_tokens of its "
                f"slot), queue {self.queue_size}, {self.step_tokens} tokens per batched step")

    # -- the caller's side (any thread) ------------------------------------------------------------------------
    def check(self, prompt_tokens: int, max_tokens: int) -> None:
        """OptionError (HTTP 400) unless the request fits one slot (and the model's context)."""
        need = prompt_tokens + max_tokens
        if need > self.slot_context:
            raise OptionError(f"prompt {prompt_tokens} tokens + max_tokens {max_tokens} = {need} positions exceed "
                              f"the {self.slot_context} positions of a slot ({self.context} over {self.parallel} "
                              "slots); shorten the prompt or max_tokens")
        self.model.check_request(prompt_tokens, max_tokens)

    def submit(self, req: Any, emit: Emit) -> Job:
        """Queue ``req``; QueueFull when every slot is busy and the queue holds ``queue_size`` requests."""
        self.check(len(req.ids), req.max_tokens)
        with self._lock:
            free = self.parallel - len(self._active)
            if len(self._queue) >= self.queue_size + max(0, free):
                self.metrics.requests_rejected_full += 1
                raise QueueFull(f"{len(self._queue)} requests queued and {len(self._active)} slots busy; retry "
                                "later")
            job = Job(next(self._ids), req, emit, TextOutput(self.model.tokenizer, req.stop_strs))
            self._queue.append(job)
            self.metrics.requests_total += 1
            self._lock.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """Stop ``job`` (client gone): it leaves before the next step, its KV cache freed."""
        with self._lock:
            if not job.done:
                job.cancelled = True
                self._lock.notify_all()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        return len(self._active)

    def start(self) -> None:
        """Run the worker thread (daemon) that steps while there is work."""
        self._thread = threading.Thread(target=self._loop, name="edgespool-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the worker ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not self._queue and not self._active:
                    self._lock.wait()
                if self._stop:
                    break
            try:
                self.step()
            except Exception as e:  # a failed step fails its requests, never the server
                msg = str(e) if isinstance(e, EdgespoolError) else f"internal error: {type(e).__name__}: {e}"
                with self._lock:
                    jobs, self._active = self._active, []
                for j in jobs:
                    self._finish(j, None, error=msg)

    def _admit(self) -> None:
        with self._lock:
            kept = []
            for j in self._active:
                if j.cancelled:
                    self.metrics.requests_cancelled += 1
                    self._finish(j, "cancelled")
                else:
                    kept.append(j)
            self._active = kept
            for j in [j for j in self._queue if j.cancelled]:
                self._queue.remove(j)
                self.metrics.requests_cancelled += 1
                self._finish(j, "cancelled")
            while self._queue and len(self._active) < self.parallel:
                j = self._queue.pop(0)
                j.cache = self.engine.new_cache(len(j.req.ids) + max(1, j.req.max_tokens))
                self._active.append(j)

    def step(self) -> int:
        """One batched pass (after admitting and dropping requests); returns the rows it ran (0: nothing to do)."""
        self._admit()
        budget = self.step_tokens
        batch: list[tuple[Job, list[int]]] = []
        for j in self._active:  # decode tokens first: one each
            if not j.prefilling and j.last is not None:
                batch.append((j, [j.last]))
                budget -= 1
        for j in self._active:  # then prompt chunks within the remaining budget (at least one token each)
            if j.prefilling:
                n = max(1, min(budget, len(j.req.ids) - j.fed))
                batch.append((j, j.req.ids[j.fed:j.fed + n]))
                budget -= n
        if not batch:
            return 0
        t0 = time.perf_counter()
        logits = self.engine.forward_batch([(toks, j.cache) for j, toks in batch])
        t1 = time.perf_counter()
        m = self.metrics
        m.steps_total += 1
        m.step_s_sum += t1 - t0
        rows = sum(len(t) for _, t in batch)
        m.batch_rows_sum += rows
        produced = 0
        for (j, toks), row in zip(batch, logits):
            if j.prefilling:
                j.fed += len(toks)
                j.prompt_s += t1 - t0
                if j.prefilling:
                    continue
                m.prompt_tokens_total += len(j.req.ids)
            if j.req.max_tokens == 0:
                self._finish(j, "length")
                continue
            tok = j.req.sampler.sample(row)
            if j.first_token_at is None:
                j.first_token_at = time.perf_counter()
                m.ttft_s_sum += j.first_token_at - j.submitted
                m.ttft_count += 1
            if tok in j.req.stop_ids:
                self._finish(j, "stop")
                continue
            j.generated += 1
            produced += 1
            m.generated_tokens_total += 1
            text = j.out.push(tok)
            if text:
                j.emit(("text", text))
            if j.out.stopped is not None:  # the token completed a stop string
                self._finish(j, "stop")
            elif j.generated >= j.req.max_tokens:
                self._finish(j, "length")
            else:
                j.last = tok
        m._window.append((t1, produced))
        while m._window and t1 - m._window[0][0] > 5.0:
            m._window.pop(0)
        span = t1 - m._window[0][0] if len(m._window) > 1 else t1 - t0
        m.decode_tok_s = sum(n for _, n in m._window) / span if span > 0 else 0.0
        with self._lock:
            self._active = [j for j in self._active if not j.done]
        return rows

    def _finish(self, j: Job, reason: str | None, error: str | None = None) -> None:
        if j.done:
            return
        j.done, j.cache = True, None
        if error is not None:
            j.emit(("error", error))
            return
        if reason != "cancelled":
            tail = j.out.flush()
            if tail:
                j.emit(("text", tail))
            self.metrics.requests_finished += 1
        now = time.perf_counter()
        first = j.first_token_at or now
        info = {"finish_reason": reason, "usage": shapes.usage(len(j.req.ids), j.generated),
                "timings": shapes.timings(len(j.req.ids), j.prompt_s, j.generated, max(0.0, now - first)),
                "ttft_s": (first - j.submitted)}
        j.emit(("done", info))
