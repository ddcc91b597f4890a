"""`edgespool chat BUNDLE`: a terminal chat through the bundle's chat template, streaming, multi-turn (the KV cache
of the conversation is kept and reused). Ctrl-C stops a reply without quitting; /reset, /stats, /quit (or Ctrl-D)."""
from __future__ import annotations

import sys

import click

HELP = "commands: /reset (new conversation), /stats (last reply's figures), /quit; Ctrl-C stops a reply"


def _stats_line(model) -> str:
    from ..units import fmt_bytes

    st = model.stats
    return (f"[prompt {st.prompt_tokens} tok ({st.cached_tokens} reused) {st.prefill_tok_s:.1f} tok/s | reply "
            f"{st.generated_tokens} tok {st.decode_tok_s:.1f} tok/s | {st.finish_reason} | peak RSS "
            f"{fmt_bytes(st.peak_rss_bytes)}]")


@click.command("chat")
@click.argument("bundle", type=click.Path())
@click.option("--memory-budget", default=None, help="Stream weights under this budget, e.g. 512MiB.")
@click.option("--system", default=None, help="A system message.")
@click.option("-n", "--max-tokens", "n", default=512, show_default=True, type=int, help="Longest reply (tokens).")
@click.option("--temperature", "-t", default=0.7, show_default=True, type=float, help="0 = greedy.")
@click.option("--top-k", default=40, show_default=True, type=int)
@click.option("--top-p", default=0.95, show_default=True, type=float)
@click.option("--repeat-penalty", default=1.0, show_default=True, type=float)
@click.option("--seed", default=None, type=int)
@click.option("--threads", "n_threads", default=None, type=int, help="C block kernel threads.")
def chat_cmd(bundle: str, memory_budget: str | None, system: str | None, n: int, temperature: float, top_k: int,
             top_p: float, repeat_penalty: float, seed: int | None, n_threads: int | None) -> None:
    """Chat with a decoder bundle in the terminal (streaming, multi-turn)."""
    from ..errors import EdgespoolError
    from ..runtime.api import load, prompt_text

    model = load(bundle, memory_budget=memory_budget, n_threads=n_threads)
    model.chat_template  # noqa: B018 - a bundle without a chat template fails now, not at the first message
    base = [{"role": "system", "content": prompt_text(system, "--system")}] if system else []
    messages = list(base)
    opts = dict(temperature=temperature, top_k=top_k, top_p=top_p, repeat_penalty=repeat_penalty, seed=seed)
    click.echo(f"edgespool chat: {model.name} ({model.kernels.description}); {HELP}", err=True)
    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                click.echo("")
                return
            except KeyboardInterrupt:
                click.echo("\n(Ctrl-D or /quit to quit)")
                continue
            cmd = line.strip()
            if not cmd:
                continue
            if cmd in ("/quit", "/exit"):
                return
            if cmd == "/reset":
                messages = list(base)
                model.reset()
                click.echo("[conversation reset]")
                continue
            if cmd == "/stats":
                click.echo(_stats_line(model))
                continue
            if cmd.startswith("/") and cmd.split()[0] in ("/help", "/?"):
                click.echo(HELP)
                continue
            messages.append({"role": "user", "content": line})
            reply: list[str] = []
            try:
                for chunk in model.create_chat_completion(messages, max_tokens=n, stream=True, **opts):
                    piece = chunk["choices"][0]["delta"].get("content")
                    if piece:
                        reply.append(piece)
                        sys.stdout.write(piece)
                        sys.stdout.flush()
                click.echo("")
            except KeyboardInterrupt:
                click.echo(" [stopped]")
            except EdgespoolError as e:  # e.g. the conversation outgrew the context: say so, keep chatting
                messages.pop()
                click.echo(f"error: {e}", err=True)
                continue
            messages.append({"role": "assistant", "content": "".join(reply)})
    finally:
        model.close()


COMMANDS = [chat_cmd]
