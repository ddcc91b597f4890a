"""`edgespool serve BUNDLE [--memory-budget 512MiB] [--port 8080] [--host 127.0.0.1] [--parallel 4]`: an
OpenAI-compatible local server (runtime/serving/app.py, Starlette on uvicorn) with continuous batching, and a chat
page at ``/``."""
from __future__ import annotations

from pathlib import Path

import click

PAGE = Path(__file__).parent / "web" / "index.html"


@click.command("serve")
@click.argument("bundle", type=click.Path())
@click.option("--memory-budget", default=None, help="Stream weights under this budget, e.g. 512MiB (the plan's KV "
                                                    "cache is split over the slots).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless told).")
@click.option("--port", default=8080, show_default=True, type=int, help="TCP port.")
@click.option("--parallel", "-np", default=4, show_default=True, type=int,
              help="Request slots decoded together in one batched pass per step.")
@click.option("--queue", "queue_size", default=32, show_default=True, type=int,
              help="Requests that may wait for a slot; more get HTTP 429.")
@click.option("--ctx-size", "-c", default=None, type=int,
              help="KV positions shared by the slots (default: the plan's KV cache when streaming, else "
                   "--parallel x min(model context, 4096)).")
@click.option("--max-context", default=None, type=int,
              help="With --memory-budget: KV positions the plan reserves (all slots together).")
@click.option("--kv-dtype", default=None, type=click.Choice(["f16", "f32", "q8_0"]), help="KV cache format.")
@click.option("--threads", "n_threads", default=None, type=int, help="C block kernel threads (default: all cores).")
@click.option("--max-body", default="1MiB", show_default=True, help="Largest request body (413 past it).")
@click.option("--plan", "show_plan", is_flag=True, help="Print the memory plan and the slots before serving.")
def serve_cmd(bundle: str, memory_budget: str | None, host: str, port: int, parallel: int, queue_size: int,
              ctx_size: int | None, max_context: int | None, kv_dtype: str | None, n_threads: int | None,
              max_body: str, show_plan: bool) -> None:
    """Serve a decoder bundle over HTTP: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics, and
    a chat page at /."""
    from ..errors import OptionError
    from ..runtime.bundle.reader import Bundle
    from ..units import fmt_bytes, parse_bytes

    try:
        import uvicorn

        from ..runtime.serving.app import create_app
    except ImportError as e:
        raise OptionError(f"edgespool serve needs the serve extra ({e.name} is missing): pip install "
                          "'edgespool[serve]'") from None
    b = Bundle(bundle)  # a bad path / manifest fails now, before binding the port
    if b.kind != "decoder":
        raise OptionError(f"{bundle}: a {b.kind} bundle; serve needs a decoder bundle")
    if max_context is not None and memory_budget is None:
        raise OptionError("--max-context only applies with --memory-budget")
    if not 0 < port < 65536:
        raise OptionError(f"--port {port}: must be in 1..65535")
    body_limit = parse_bytes(max_body, "--max-body")

    def load_model():
        from ..runtime.api import load

        opts = {k: v for k, v in (("max_context", max_context), ("kv_dtype", kv_dtype)) if v is not None}
        opts["logits_rows"] = max(1, parallel)  # a batched step computes the logits of every slot's last token
        model = load(bundle, memory_budget=memory_budget, n_threads=n_threads,
                     **(opts if memory_budget is not None else {}))
        if kv_dtype is not None and memory_budget is None:
            from ..runtime.decoder.kvcache import check_kv_dtype

            model.engine.kv_dtype = check_kv_dtype(kv_dtype, b.config.head_dim)
        preload = getattr(model.source, "load_all", None)
        if preload is not None:  # resident: read every weight before /health turns 200
            preload()
        return model

    def on_ready(sched) -> None:
        if show_plan:
            plan = getattr(sched.model.source, "plan", None)
            click.echo(plan.summary() if plan is not None else
                       f"resident mode: every weight is loaded once ({fmt_bytes(b.weights_nbytes)})", err=True)
            click.echo(f"slots: {sched.describe()}", err=True)
        click.echo(f"edgespool serve: {sched.model.name} ready on http://{host}:{port}/ ({sched.parallel} slots, "
                   f"{sched.model.kernels.description})", err=True)

    app = create_app(load_model, parallel=parallel, queue_size=queue_size, context=ctx_size, page=PAGE,
                     max_body=body_limit, on_ready=on_ready)
    click.echo(f"edgespool serve: loading {bundle} (GET /health answers 503 until ready)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)


COMMANDS = [serve_cmd]
