"""Serving: per-request text state (stop strings, incremental decoding), the continuous-batching scheduler and the
OpenAI-compatible HTTP app (``edgespool serve``)."""
