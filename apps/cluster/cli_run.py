"""`edgespool run BUNDLE --cluster SPEC -p TEXT`: one generation split across boards, pipeline parallel over MPI.

SPEC ``emulated:N``: N EMULATED boards on this machine (network namespaces + rig cgroups, one core each; needs
root, iproute2, mpirun). SPEC ``host1,host2,...``: real hosts through mpirun's ssh launch (same Python
environment and bundle path on each) -- UNTESTED here (this machine has no second host). Layers are split so each
board holds about the same bytes, except on emulated boards with ``--memory-budget`` (a size or a fraction such as
1/4: each board's own streaming budget), where the solver cuts them (:func:`.solve.solver_ranges`: each board's
compute rate measured on one core here, this machine's storage rate; ``edgespool cluster plan`` plans real boards
from their target profiles)."""
from __future__ import annotations

import re

import click

from ...errors import OptionError


def parse_cluster(spec: str) -> tuple[str, int | list[str]]:
    """``emulated:N`` -> ("emulated", N); ``a,b,c`` -> ("ssh", [a, b, c])."""
    s = spec.strip()
    m = re.fullmatch(r"emulated:(\d+)", s)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise OptionError(f"--cluster {spec!r}: at least 1 board")
        return "emulated", n
    if s.startswith("emulated"):
        raise OptionError(f"--cluster {spec!r}: expected emulated:N (e.g. emulated:2)")
    hosts = [h.strip() for h in s.split(",")]
    if not s or any(not h or not re.fullmatch(r"[A-Za-z0-9_.@:\[\]-]+", h) for h in hosts):
        raise OptionError(f"--cluster {spec!r}: expected emulated:N or a comma-separated list of host names")
    return "ssh", hosts


def even_bytes_ranges(layer_bytes: list[int], head: int, k: int) -> list[tuple[int, int]]:
    """Contiguous ranges of ``layer_bytes`` into ``k`` stages of about equal bytes (the head counts on the last)."""
    L = len(layer_bytes)
    if not 1 <= k <= L:
        raise OptionError(f"--cluster: {k} boards for a model of {L} layers (at most one board a layer)")
    total = sum(layer_bytes) + head
    cuts, acc, j = [0], 0, 1
    for i, nb in enumerate(layer_bytes):
        acc += nb
        while j < k and acc >= total * j / k and i + 1 < L and (L - (i + 1)) >= k - j:
            cuts.append(i + 1)
            j += 1
    while len(cuts) < k:  # too few cuts (the head dominates): one layer each for the last stages
        cuts.append(L - (k - len(cuts)))
    cuts.append(L)
    return list(zip(cuts, cuts[1:]))


def run_cluster_cli(bundle, spec: str, prompt: str, n: int, memory_budget: str | None, max_context: int | None,
                    ignore_eos: bool, as_json: bool, link_text: str = "ethernet", mode: str = "pipeline",
                    work: str | None = None) -> None:
    """The ``run --cluster`` path (greedy decoding); ``mode`` pipeline (layer ranges) or tensor (shard bundles,
    :mod:`.tensor_cli`)."""
    from ...runtime.decoder.tokenizer import BundleTokenizer
    from .launch import worker_command
    from .solve import head_bytes, layer_bytes, parse_budget, parse_link

    kind, what = parse_cluster(spec)
    link = parse_link(link_text, "--cluster-link")
    if ignore_eos:
        raise OptionError("--ignore-eos is not supported with --cluster (the boards stop at the model's EOS)")
    if mode not in ("pipeline", "tensor"):
        raise OptionError(f"--cluster-mode {mode!r}: pipeline or tensor")
    if work is not None and mode != "tensor":
        raise OptionError("--work only applies with --cluster-mode tensor (where the shard bundles are cached)")
    k = what if isinstance(what, int) else len(what)
    if mode == "tensor":
        from ...runtime.cluster.tensor import check_tensor_parallel

        check_tensor_parallel(bundle.config, int(k))
        ranges = [(0, bundle.config.num_layers)] * int(k)
    budget = parse_budget(memory_budget, bundle.weights_nbytes, "--memory-budget") if memory_budget else 0
    tok = BundleTokenizer.from_manifest(bundle.path, bundle.manifest["tokenizer"])
    ids = tok.encode(prompt)
    ctx = max_context or min(bundle.config.max_position_embeddings, len(ids) + n + 1)
    if len(ids) + n > ctx:
        raise OptionError(f"{len(ids)} prompt + {n} new tokens exceed --max-context {ctx}")
    if mode != "tensor":
        if budget and int(k) > 1 and kind == "emulated":  # the solver's cut for these (equal) boards' budgets
            from .solve import solver_ranges

            ranges, plan = solver_ranges(bundle, int(k), budget, ctx, link.spec)
            click.echo(f"[cluster] solver's cut for {k} boards of {memory_budget} each (compute rate of one core "
                       f"here, this machine's storage rate): {plan.summary().splitlines()[0]}", err=True)
        else:
            ranges = even_bytes_ranges(layer_bytes(bundle), head_bytes(bundle), int(k))
    if kind == "emulated":
        from .boards import netns_reason

        why = netns_reason()
        if why:
            raise OptionError(f"--cluster {spec}: {why}")
    if kind == "ssh":  # registered devices holding shares from `deploy --cluster` (apps/deploy/cluster_run.py)
        from ..deploy.cluster_run import run_deployed

        run = run_deployed(bundle, list(what), mode, ids, n, budget, ctx)
        if run is not None:
            _report(tok, run, prompt, as_json, f"{mode} parallel over the shares deployed on {','.join(what)}",
                    budget)
            return
    if mode == "tensor":
        from .tensor_cli import run_tensor_cli

        run = run_tensor_cli(bundle, kind, what, ids, n, budget, ctx, link, work)
        _report(tok, run, prompt, as_json, f"tensor parallel over {k} boards, every layer's heads / FFN columns "
                "split", budget)
        return
    worker = worker_command(str(bundle.path.resolve()), ranges, ids, n, max_context=ctx,
                            budgets=[budget] * int(k) if budget else None, prefill_chunk=16 if budget else 0)
    run = run_on_boards(kind, what, worker, budget, link)
    _report(tok, run, prompt, as_json, "layers " + ", ".join(f"{a}..{b - 1}" for a, b in ranges), budget,
            ranges=ranges)


def run_on_boards(kind: str, what, worker: list[str], budget: int, link, mode_note: str = "", host_note: str = ""):
    """Launch ``worker`` on the boards of a parsed ``--cluster`` (``kind``, ``what``): EMULATED boards (a rig
    cgroup of ``budget`` + 600 MiB and one core each, ``link`` shaped by tc tbf + a SIMULATED latency) or real
    hosts over ssh (untested here); says which on stderr and returns the ClusterRun."""
    import os

    from ...units import fmt_bytes
    from .launch import run_cluster, ssh_mpirun_args

    k = what if isinstance(what, int) else len(what)
    if kind == "emulated":
        from .boards import BoardLimits, EmulatedBoards

        worker = worker + ["--simulated-latency-ms", f"{link.rtt_ms / 2:g}"]
        limits = BoardLimits(memory=budget + (600 << 20) if budget else None,
                             cpus=tuple(range(len(os.sched_getaffinity(0)))))
        click.echo(f"[cluster] {k} EMULATED boards{mode_note} (network namespaces on this machine, one core each"
                   + (f", memory limit {fmt_bytes(budget + (600 << 20))} each" if budget else "")
                   + f"; link {link.name}: tc tbf {link.rate_mbit:g} Mbit + SIMULATED {link.rtt_ms:g} ms RTT)", err=True)
        with EmulatedBoards(int(k), rate_mbit=link.rate_mbit, limits=limits) as boards:
            return run_cluster(boards.mpirun_args(), worker)
    click.echo(f"[cluster] {k} real hosts over ssh ({', '.join(what)}){mode_note}: UNTESTED here (no second host "
               f"on this machine){host_note}", err=True)
    return run_cluster(ssh_mpirun_args(list(what)), worker)


def _report(tok, run, prompt: str, as_json: bool, split: str, budget: int, ranges=None) -> None:
    import json

    from ...units import fmt_bytes

    text = tok.decode(run.tokens)
    if as_json:
        click.echo(json.dumps({"prompt": prompt, "text": text, "tokens": run.tokens, "split": split,
                               **({"ranges": ranges} if ranges is not None else {}), "ttft_s": run.ttft_s,
                               "decode_tok_s": run.decode_tok_s, "ranks": run.ranks}, indent=1))
        return
    click.echo(text)
    click.echo(f"[cluster: {split} | TTFT {run.ttft_s:.2f} s | decode {run.decode_tok_s:.2f} tok/s | "
               f"budget {fmt_bytes(budget) + ' a board' if budget else 'resident'}]", err=True)
