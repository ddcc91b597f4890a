"""`edgespool run BUNDLE --prompt TEXT -n 32`: generate text (decoder bundles) or classify an image (CNN bundles)."""
from __future__ import annotations

import json
import sys

import click

from ..units import fmt_bytes


def print_generation(model, prompt: str, n: int, as_json: bool, stream: bool = True,
                     prompt_ids: list[int] | None = None, **sampling) -> dict:
    """Generate from ``model`` and print it (streamed text, or JSON); returns the JSON-ready result. ``prompt_ids``: the
    prompt as token ids (e.g. a rendered chat) instead of the encoding of ``prompt``."""
    ids: list[int] = []
    pieces: list[str] = []

    def tracked():
        for t in model.generate_ids(prompt if prompt_ids is None else prompt_ids, n, **sampling):
            ids.append(t)
            yield t

    for piece in model.tokenizer.stream(tracked()):
        pieces.append(piece)
        if stream and not as_json:
            click.echo(piece, nl=False)
            sys.stdout.flush()
    st = model.stats
    res = {"prompt": prompt, "text": "".join(pieces), "tokens": ids, "stats": st.to_dict(),
           "kernels": model.kernels.description}
    if as_json:
        click.echo(json.dumps(res, indent=1))
    else:
        if not stream:
            click.echo(res["text"], nl=False)
        click.echo("")
        click.echo(f"[prefill {st.prompt_tokens} tok {st.prefill_tok_s:.1f} tok/s | decode {st.generated_tokens} tok "
                   f"{st.decode_tok_s:.1f} tok/s | peak RSS {fmt_bytes(st.peak_rss_bytes)} | {model.kernels.description}]",
                   err=True)
        sp = getattr(st, "speculative", None)
        if sp:
            click.echo(f"[speculative ({model.speculative.drafter.name}): acceptance {sp['acceptance_rate']:.0%} of "
                       f"{sp['drafted']} drafted | {sp['tokens_per_pass']:.2f} tokens per target pass | "
                       f"{sp['passes']} passes, mean k {sp['mean_k']:.1f}]", err=True)
    return res


def check_run_options(context: int, n: int, seed: int | None, max_context: int | None, prompt: str,
                      system: str | None) -> None:
    """Refuse what the manifest alone shows cannot run, before any weight is read: -n beyond the model's context
    or the planned --max-context, a negative --seed, --prompt / --system that are not valid UTF-8."""
    from ..errors import OptionError
    from ..runtime.api import prompt_text

    if n < 0:
        raise OptionError(f"-n {n}: the number of tokens to generate must be >= 0")
    if n > context:
        raise OptionError(f"-n {n}: more new tokens than the model's context of {context} tokens (prompt + -n "
                          "must fit it); lower -n")
    if max_context is not None and max_context < 1:
        raise OptionError(f"--max-context {max_context}: must be >= 1 token")
    if max_context is not None and n > max_context:
        raise OptionError(f"-n {n}: more new tokens than --max-context {max_context} positions of KV cache (prompt "
                          "+ -n must fit it); lower -n or raise --max-context")
    if seed is not None and seed < 0:
        raise OptionError(f"--seed {seed}: a seed must be an integer >= 0")
    prompt_text(prompt, "--prompt")
    if system is not None:
        prompt_text(system, "--system")


@click.command("run")
@click.argument("bundle", type=click.Path())
@click.option("--prompt", "-p", default="Once upon a time", show_default=True, help="Prompt text.")
@click.option("-n", "--max-tokens", "n", default=32, show_default=True, type=int, help="Tokens to generate.")
@click.option("--temperature", "-t", default=0.0, show_default=True, type=float, help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, type=int, help="Keep the k most likely tokens (0 = off).")
@click.option("--top-p", default=1.0, show_default=True, type=float, help="Nucleus sampling mass (1 = off).")
@click.option("--seed", default=None, type=int, help="Sampling seed (same seed, same text).")
@click.option("--memory-budget", default=None, help="Stream weights under this budget, e.g. 512MiB.")
@click.option("--plan", "show_plan", is_flag=True, help="Print the memory plan (with --memory-budget).")
@click.option("--max-context", default=None, type=int,
              help="With --memory-budget: tokens of KV cache to plan for (default: what the budget allows, up to the "
                   "model's context).")
@click.option("--kv-dtype", default=None, type=click.Choice(["f16", "f32", "q8_0"]),
              help="KV cache format (streaming default f16; resident default f32).")
@click.option("--image", default=None, type=click.Path(), help="CNN bundles: the image to classify.")
@click.option("--top", default=5, show_default=True, type=int, help="CNN bundles: classes to print.")
@click.option("--ignore-eos", is_flag=True, help="Do not stop at the model's end-of-sequence tokens.")
@click.option("--chat", "as_chat", is_flag=True,
              help="Send --prompt as a user message through the bundle's chat template (instruct models).")
@click.option("--system", default=None, help="With --chat: a system message.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--threads", "n_threads", default=None, type=int,
              help="Worker threads of the bundle's C block kernels (default $EDGESPOOL_THREADS, else all cores).")
@click.option("--draft", default=None,
              help="Speculative decoding: a draft bundle with the same tokenizer, 'ngram' (prompt lookup) or "
                   "'self[:N]' (the first N layers + head); docs/SPECULATIVE.md.")
@click.option("--draft-tokens", default=None, type=int,
              help="With --draft: most tokens drafted per verification pass (adaptive below it; default 12 when "
                   "streamed under --memory-budget, else 4).")
@click.option("--draft-budget", default=None,
              help="With --draft MODEL and --memory-budget: the draft model's share of the budget (default: all "
                   "the target can spare).")
@click.option("--draft-gpu-budget", default=None,
              help="With --draft MODEL: run the draft on the GPU under this GPU budget, verify on the CPU "
                   "(Dovetail mode; docs/SPECULATIVE.md); no GPU: the draft runs on the CPU, said in one line.")
@click.option("--gpu-budget", default=None,
              help="CPU/GPU split under this GPU memory budget, e.g. 3GiB (docs/GPU.md); --plan prints the placement.")
@click.option("--gpu-zero-copy/--gpu-copy", "gpu_zero_copy", default=None,
              help="With --gpu-budget: GPU-resident weights placed once in host memory the GPU reads in place "
                   "(for unified-memory boards such as Jetson; on a discrete GPU it reads them over the bus; "
                   "experimental, off by default).")
@click.option("--cnn-engine", type=click.Choice(["numpy", "onnxruntime"]), default="numpy", show_default=True,
              help="CNN bundles: the reference numpy executor (measures the memory it holds) or the fast "
                   "onnxruntime path (same outputs; docs/CNN.md).")
@click.option("--cluster", default=None,
              help="Split the model across boards, pipeline parallel over MPI: emulated:N (emulated boards on this "
                   "machine) or host1,host2 (ssh; untested); --memory-budget is then each board's (docs/CLUSTER.md).")
@click.option("--cluster-link", default="ethernet", show_default=True,
              help="With --cluster emulated:N: ethernet, wifi or MBIT:RTT_MS (tc tbf + simulated latency).")
@click.option("--cluster-mode", type=click.Choice(["pipeline", "tensor"]), default="pipeline", show_default=True,
              help="With --cluster: layer ranges per board (pipeline) or every layer's heads / FFN columns split "
                   "(tensor: each board streams its own shard bundle; fast wired links).")
@click.option("--work", default=None,
              help="With --cluster-mode tensor: where the shard bundles are cached (default: BUNDLE.tp-shards/).")
def run_cmd(bundle: str, prompt: str, n: int, temperature: float, top_k: int, top_p: float, seed: int | None,
            memory_budget: str | None, show_plan: bool, max_context: int | None, kv_dtype: str | None, image: str | None,
            top: int, ignore_eos: bool,
            as_chat: bool, system: str | None, as_json: bool, gpu_budget: str | None = None,
            draft: str | None = None, draft_tokens: int | None = None, draft_budget: str | None = None,
            n_threads: int | None = None, draft_gpu_budget: str | None = None,
            cnn_engine: str = "numpy", cluster: str | None = None, cluster_link: str = "ethernet",
            cluster_mode: str = "pipeline", work: str | None = None, gpu_zero_copy: bool | None = None) -> None:
    """Run a bundle: generate text from a decoder bundle, or classify --image with a CNN bundle."""
    from ..runtime.bundle.reader import Bundle

    b = Bundle(bundle)
    if b.kind != "decoder":
        from ..runtime.cnn.api import print_classification

        print_classification(b, image, top, as_json, engine=cnn_engine)
        return
    from ..runtime import api

    if image is not None:
        from ..errors import OptionError

        raise OptionError(f"--image {image}: {bundle} is a decoder bundle; --image applies to CNN bundles")
    if cluster_link != "ethernet" and cluster is None:
        from ..errors import OptionError

        raise OptionError("--cluster-link only applies with --cluster")
    if (cluster_mode != "pipeline" or work is not None) and cluster is None:
        from ..errors import OptionError

        raise OptionError("--cluster-mode / --work only apply with --cluster")
    if max_context is not None and memory_budget is None and cluster is None:
        from ..errors import OptionError

        raise OptionError("--max-context only applies with --memory-budget (resident mode sizes the KV cache "
                          "per generation)")
    check_run_options(b.config.max_position_embeddings, n, seed, max_context, prompt, system)
    if cluster is not None:  # issue 19: a split run (apps/cluster/cli_run.py); greedy, text prompts only
        from ..errors import OptionError
        from .cluster.cli_run import run_cluster_cli

        other = [o for o, v in (("--temperature", temperature), ("--top-k", top_k), ("--chat", as_chat),
                                ("--draft", draft), ("--gpu-budget", gpu_budget), ("--plan", show_plan),
                                ("--kv-dtype", kv_dtype)) if v] + (["--top-p"] if top_p != 1.0 else [])
        if other:
            raise OptionError(f"{other[0]} is not supported with --cluster (greedy text generation only)")
        run_cluster_cli(b, cluster, prompt, n, memory_budget, max_context, ignore_eos, as_json, cluster_link,
                        cluster_mode, work)
        return
    opts = {} if memory_budget is None else {k: v for k, v in (("max_context", max_context), ("kv_dtype", kv_dtype))
                                              if v is not None}
    if gpu_budget is not None:
        from ..units import parse_bytes

        parse_bytes(gpu_budget, "--gpu-budget")
    if draft is None and (draft_budget is not None or draft_tokens is not None or draft_gpu_budget is not None):
        from ..errors import OptionError

        raise OptionError("--draft-tokens / --draft-budget / --draft-gpu-budget only apply with --draft")
    if draft is not None:
        opts.update(draft=draft, draft_tokens=draft_tokens,
                    **({} if draft_budget is None else {"draft_budget": draft_budget}),
                    **({} if draft_gpu_budget is None else {"draft_gpu_memory": draft_gpu_budget}))
    model = api.load(bundle, memory_budget=memory_budget, n_threads=n_threads, **opts,
                     **({} if gpu_budget is None else {"gpu_memory": gpu_budget}),
                     **({} if gpu_zero_copy is None else {"gpu_zero_copy": gpu_zero_copy}))
    if draft_gpu_budget is not None and model.draft is not None:  # Dovetail: where the draft runs
        if model.draft.gpu_fallback:
            click.echo(f"[gpu] {model.draft.gpu_fallback}", err=True)
        elif show_plan and model.draft.placement is not None:
            click.echo("draft model on the GPU:\n" + model.draft.placement.summary(), err=True)
    if gpu_budget is not None:  # the GPU placement and why (or why the run is CPU-only)
        if model.gpu_fallback:
            click.echo(f"[gpu] running on the CPU only: {model.gpu_fallback}", err=True)
        elif show_plan:
            click.echo(model.source.placement.summary(), err=True)
    if kv_dtype is not None and memory_budget is None:  # resident: the engine's own cache format
        from ..runtime.decoder.kvcache import check_kv_dtype

        model.engine.kv_dtype = check_kv_dtype(kv_dtype, b.config.head_dim)
    try:
        if show_plan:
            plan = getattr(model.source, "plan", None)
            if plan is None:
                click.echo("resident mode: every weight is loaded once "
                           f"({fmt_bytes(b.weights_nbytes)}); pass --memory-budget to stream", err=True)
            else:
                click.echo(plan.summary(), err=True)
            dplan = getattr(model.draft, "plan", None)
            if dplan is not None:
                click.echo(f"draft model ({model.draft.drafter.name}), inside the same budget:", err=True)
                click.echo(dplan.summary(), err=True)
        if as_chat:
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            ids = model.chat_ids(msgs)
        elif system:
            from ..errors import OptionError

            raise OptionError("--system needs --chat")
        else:
            ids = model.encode(prompt)
        model.check_request(len(ids), n)  # before the resident weights are read
        preload = getattr(model.source, "load_all", None)
        if preload is not None:  # resident: read (and verify) every group now, so the stats time compute only
            preload()
        if model.draft is not None:
            model.draft.preload()
        print_generation(model, prompt, n, as_json, prompt_ids=ids, temperature=temperature, top_k=top_k, top_p=top_p,
                         seed=seed, stop=[] if ignore_eos else None)
    finally:
        model.close()


COMMANDS = [run_cmd]
