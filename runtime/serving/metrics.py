"""``GET /metrics``: the server's counters in the Prometheus text exposition format (version 0.0.4)."""
from __future__ import annotations

from typing import Any


def _line(out: list[str], name: str, kind: str, help_: str, value: float) -> None:
    out += [f"# HELP edgespool_{name} {help_}", f"# TYPE edgespool_{name} {kind}", f"edgespool_{name} {value:g}"]


def prometheus_text(state: Any) -> str:
    """Requests, tokens, time to first token, decode tokens/s, queue, slots and memory of ``state`` (a
    :class:`~edgespool.runtime.serving.app.ServerState`); only ``loading`` while the model loads."""
    import psutil

    out: list[str] = []
    s = state.scheduler
    _line(out, "loading", "gauge", "1 while the model loads", 1 if s is None and state.error is None else 0)
    proc = psutil.Process()
    _line(out, "process_resident_memory_bytes", "gauge", "Resident set size of the server process",
          proc.memory_info().rss)
    if s is None:
        return "\n".join(out) + "\n"
    m = s.metrics
    rows = [("requests_total", "counter", "Requests accepted into the queue", m.requests_total),
            ("requests_rejected_queue_full_total", "counter", "Requests answered 429 (queue full)",
             m.requests_rejected_full),
            ("requests_cancelled_total", "counter", "Requests cancelled (client disconnected)", m.requests_cancelled),
            ("requests_finished_total", "counter", "Requests that ran to a stop or max_tokens", m.requests_finished),
            ("prompt_tokens_total", "counter", "Prompt tokens processed", m.prompt_tokens_total),
            ("generated_tokens_total", "counter", "Tokens generated", m.generated_tokens_total),
            ("steps_total", "counter", "Batched forward passes", m.steps_total),
            ("step_seconds_total", "counter", "Seconds spent in batched forward passes", m.step_s_sum),
            ("batch_rows_total", "counter", "Token rows over all batched passes", m.batch_rows_sum),
            ("decode_tokens_per_second", "gauge", "Generated tokens per second over the last 5 s of steps",
             m.decode_tok_s),
            ("queue_length", "gauge", "Requests waiting for a slot", s.queued),
            ("slots_processing", "gauge", "Slots holding a request", s.busy),
            ("slots_total", "gauge", "Request slots (--parallel)", s.parallel),
            ("slot_context_positions", "gauge", "KV positions per slot", s.slot_context)]
    for name, kind, help_, value in rows:
        _line(out, name, kind, help_, value)
    out += ["# HELP edgespool_time_to_first_token_seconds Submit to first generated token",
            "# TYPE edgespool_time_to_first_token_seconds summary",
            f"edgespool_time_to_first_token_seconds_sum {m.ttft_s_sum:g}",
            f"edgespool_time_to_first_token_seconds_count {m.ttft_count}"]
    return "\n".join(out) + "\n"
