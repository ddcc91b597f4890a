"""Tensor-parallel runs and plans from the CLI (issue 19): ``edgespool run b/ --cluster emulated:2 --cluster-mode
tensor --memory-budget 1/4 -p ...`` and ``edgespool cluster plan b/ --mode tensor ...``.

Each board's share is a shard bundle (:mod:`edgespool.exporters.tensor_shard`) written once into a cache folder
beside the bundle (``<bundle>.tp-shards/``, or ``--work DIR``) and reused while it matches the bundle's manifest;
each board streams ITS shard bundle under its own ``--memory-budget`` (a fraction is of the WHOLE model, as in
pipeline mode) and the engine's ``reduce_partial`` hook does the allreduce (ring)."""
from __future__ import annotations

from pathlib import Path


from ...errors import OptionError
from ...runtime.bundle.reader import Bundle
from ...schedulers.cluster_plan import LinkSpec, TensorPlan, plan_tensor


def shard_cache(bundle: Bundle, n: int, work: str | None) -> list[Path]:
    """The ``n`` shard bundles of ``bundle`` (written on first use; OptionError, one line, for a model that does
    not split ``n`` ways or a cache folder that cannot be written)."""
    from ...exporters.tensor_shard import shard_bundles
    from ...runtime.cluster.tensor import check_tensor_parallel

    check_tensor_parallel(bundle.config, n)  # before any folder is made (write_shard_bundle checks the rest)
    base = Path(work) if work else bundle.path.resolve().with_name(bundle.path.resolve().name + ".tp-shards")
    try:
        return shard_bundles(bundle, n, base)
    except PermissionError as e:
        raise OptionError(f"--work: cannot write the shard bundles into {base} ({e.strerror}); pass --work DIR") \
            from None


def tensor_plan(shards: list[Path], budgets: list[int], storage_bps: list[float], compute_bps: float,
                max_context: int, link: LinkSpec, names: list[str] | None = None, algo: str = "ring") -> TensorPlan:
    """The predicted decode token over the boards holding ``shards`` (their weight budgets from each shard
    bundle's own memory plan at its budget)."""
    from .solve import board_specs, head_bytes, layer_bytes

    boards, nbytes = [], []
    for i, (p, bud, st) in enumerate(zip(shards, budgets, storage_bps)):
        sb = Bundle(p)
        boards += board_specs([names[i] if names else f"board{i}"], [bud], [st], [compute_bps], sb, max_context)
        nbytes.append(sum(layer_bytes(sb)) + head_bytes(sb))
    hidden = 4 * Bundle(shards[0]).config.hidden_size
    return plan_tensor(boards, nbytes, Bundle(shards[0]).config.num_layers, hidden, link, algo)


def tp_worker_command(bundle: str, shards: list[Path], prompt_ids: list[int], max_tokens: int, *, max_context: int,
                      budget: int = 0, prefill_chunk: int = 16, timeout_s: float = 30.0, algo: str = "ring",
                      python: str | None = None) -> list[str]:
    """The program each rank runs (:mod:`edgespool.apps.cluster.tp_worker`) over shard bundles."""
    import sys

    cmd = [python or sys.executable, "-m", "edgespool.apps.cluster.tp_worker", str(bundle), "--allreduce", algo,
           "--prompt-ids", ",".join(map(str, prompt_ids)), "-n", str(max_tokens), "--max-context", str(max_context),
           "--timeout", str(timeout_s), "--shards", ",".join(str(p.resolve()) for p in shards)]
    if budget:
        cmd += ["--budget", str(int(budget)), "--prefill-chunk", str(prefill_chunk)]
    return cmd


def run_tensor_cli(bundle: Bundle, kind: str, what, prompt_ids: list[int], n: int, budget: int, ctx: int, link,
                   work: str | None):
    """Launch the tensor-parallel run (emulated boards or ssh hosts) and return its ClusterRun."""
    from .cli_run import run_on_boards

    k = what if isinstance(what, int) else len(what)
    shards = shard_cache(bundle, int(k), work)
    worker = tp_worker_command(str(bundle.path.resolve()), shards, prompt_ids, n, max_context=ctx, budget=budget)
    return run_on_boards(kind, what, worker, budget, link,
                         mode_note=f", TENSOR parallel, each streaming its shard bundle from {shards[0].parent}",
                         host_note="; each host needs its shard bundle at the same path")
