"""`edgespool bench`: measure a decoder bundle streamed under a memory budget (or resident), optionally inside the
emulated board rig (memory cgroup incl. page cache, blkio throttle, cores)."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click

from ..errors import OptionError


def _fmt(n, unit="", scale=1.0, digits=2):
    return "-" if n is None else f"{n / scale:.{digits}f}{unit}"


def _print_human(res: dict) -> None:
    from ..units import fmt_bytes

    if res.get("plan_text"):
        click.echo(res["plan_text"])
    click.echo(f"{res['arch']} {res['mode']} ({fmt_bytes(res['model_bytes'])} of weights)"
               + (f", budget {fmt_bytes(res['memory_budget'])}" if res.get("memory_budget") else ""))
    rows = [
        ("load", _fmt(res["load_s"], " s")),
        ("time to first token", _fmt(res["ttft_s"], " s", digits=3) + f" ({res['prompt_tokens']} prompt tokens)"),
        ("prefill", _fmt(res["prefill_tok_s"], " tok/s")),
        ("decode", _fmt(res["decode_tok_s"], " tok/s")),
        ("bytes read / token", fmt_bytes(res["bytes_read_per_token"]) if res["bytes_read_per_token"] is not None
         else "-"),
        ("achieved read bandwidth", _fmt(res["achieved_read_bandwidth"], " MB/s", 1e6, 1)),
    ]
    if res.get("storage"):
        rows.append(("cold read bandwidth", _fmt(res["storage"]["bandwidth"], " MB/s", 1e6, 1)))
    sb = res.get("storage_bound")
    if sb:
        rows.append(("storage bound", f"{_fmt(sb['tok_s'], ' tok/s')} ({fmt_bytes(sb['bytes_per_token'])}/token);"
                                      f" reached {_fmt(sb['fraction_reached'], '', 0.01, 0)}%"))
    if res.get("cache_hit_rate") is not None:
        rows.append(("expert cache hit rate", f"{100 * res['cache_hit_rate']:.1f}%"))
    if res.get("prediction_accuracy") is not None:
        rows.append(("expert prediction accuracy", f"{100 * res['prediction_accuracy']:.1f}% (top-k recall)"))
    nw = res.get("neuron_window")
    if nw:
        rows.append(("neuron windows", f"{nw['layers']} layers x {nw['capacity']} neurons, window {nw['window']}; "
                                       f"active {100 * (nw['active_fraction'] or 0):.1f}%, reused "
                                       f"{100 * (nw['reuse'] or 0):.1f}%, {nw['reads']} reads; {nw['predictor']}"))
    pm, base = res["peak_memory"], res["baseline"]
    rows.append(("peak process RSS", f"{fmt_bytes(pm['process_rss'])} (baseline {fmt_bytes(base['process_rss'])})"))
    if pm.get("cgroup") is not None:
        rows.append(("peak cgroup memory", fmt_bytes(pm["cgroup"])))
    kern = res.get("kernels") or {}
    if kern:
        rows.append(("kernels", kern["description"] + (f"; fallbacks {kern['fallbacks']}" if kern.get("fallbacks")
                                                      else "")))
    split = res.get("op_split")
    if split:
        rows.append(("decode step split", f"{split['ms_per_step']:.1f} ms/step over {split['steps']} extra steps:"))
        for op, v in split["ops"].items():
            rows.append((f"  {op}", f"{v['ms_per_step']:.2f} ms ({100 * v['share']:.0f}%)"))
    rig = res.get("rig")
    if rig:
        rows.append(("rig", f"{rig.get('profile')} {rig.get('storage') or ''}: peak {fmt_bytes(rig['peak_memory'] or 0)}"
                            f" ({rig['peak_memory_source']}), OOM kills {rig['oom_kills']}, "
                            f"device reads {fmt_bytes(rig['device_read_bytes'] or 0)}"))
        for lim in rig["limits"]:
            rows.append((f"  {lim['name']}", f"{lim['display']} [{lim['mode']}: {lim['mechanism']}]"))
    for k, v in rows:
        click.echo(f"  {k:28s} {v}")


def _in_rig(argv: list[str], rig: str, storage: str | None, rig_memory: str | None, budget: str | None,
            bundle: str) -> dict:
    """Re-run this bench inside the rig; returns the child's result with the rig report under ``rig``."""
    from ..targets import get_target
    from ..runtime.bench import process_rss
    from ..units import parse_bytes
    from .rig.limits import resolve_limits
    from .rig.runner import run_in_rig

    profile = get_target(rig)
    baseline = process_rss()
    mem = rig_memory
    if mem is None and budget is not None:
        mem = str(parse_bytes(budget) + baseline)  # the budget + this process's baseline (imports, interpreter)
    limits = resolve_limits(profile, storage, memory=mem)
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "bench.json"
        cmd = [sys.executable, "-m", "edgespool", "bench", *argv, "--json-out", str(out), "--quiet"]
        report = run_in_rig(cmd, limits, evict_paths=[bundle])
        if not out.exists():
            raise OptionError(f"the benchmark inside the rig produced no result (exit code {report.exit_code}"
                              f"{', OOM-killed' if report.oom_kills else ''}); rerun without --rig to debug")
        res = json.loads(out.read_text())
    res["rig"] = report.to_dict()
    res["rig"]["baseline_rss_parent"] = baseline
    return res


def _check_out_file(option: str, path: str | None) -> None:
    """An output file's folder must exist and the path must not be a folder (checked before the benchmark runs,
    not after it)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise OptionError(f"{option} {path}: is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise OptionError(f"{option} {path}: the folder {parent} does not exist (missing); create it first")
    if not parent.is_dir():
        raise OptionError(f"{option} {path}: {parent} is not a directory")


def check_bench_options(bundle: str, prompt_tokens: int, n: int, seed: int, json_out: str | None,
                        plot: str | None, *, io_threads: int = 2, neuron_window: int = 5,
                        neuron_capacity: float | None = None, threads: int | None = None) -> None:
    """Refuse options that cannot run before any measurement starts: lengths below 1 or beyond the model's
    context (from the manifest), a negative seed, thread counts / windows below 1, a neuron capacity that is not
    a positive number, output files in missing folders."""
    import math

    from ..runtime.bundle.reader import Bundle

    if io_threads < 1:
        raise OptionError(f"--io-threads {io_threads}: must be >= 1")
    if threads is not None and threads < 1:
        raise OptionError(f"--threads {threads}: must be >= 1")
    if neuron_window < 1:
        raise OptionError(f"--neuron-window {neuron_window}: must be >= 1 forward pass")
    if neuron_capacity is not None and not (math.isfinite(neuron_capacity) and neuron_capacity > 0):
        raise OptionError(f"--neuron-capacity {neuron_capacity}: must be a fraction in (0, 1] or a neuron count")

    if prompt_tokens < 1:
        raise OptionError(f"--prompt-tokens {prompt_tokens}: must be >= 1")
    if n < 1:
        raise OptionError(f"-n {n}: must be >= 1")
    if seed < 0:
        raise OptionError(f"--seed {seed}: a seed must be an integer >= 0")
    _check_out_file("--json-out", json_out)
    _check_out_file("--plot", plot)
    cfg = Bundle(bundle).config
    if cfg is not None and prompt_tokens + n > cfg.max_position_embeddings:
        raise OptionError(f"--prompt-tokens {prompt_tokens} + -n {n} = {prompt_tokens + n} positions exceed the "
                          f"model's context of {cfg.max_position_embeddings} tokens; lower them")


@click.command("bench")
@click.argument("bundle", type=click.Path())
@click.option("--memory-budget", default=None, help="Stream weights under this budget (e.g. 512MiB); none = resident.")
@click.option("--target", default=None, help="Target profile the plan is made for (default host).")
@click.option("--rig", "rig", default=None, help="Run inside the emulated board rig of this profile (e.g. rpi5).")
@click.option("--storage", default=None, help="With --rig: the profile's storage medium (e.g. microsd).")
@click.option("--rig-memory", default=None, help="With --rig: memory cgroup limit (default budget + baseline).")
@click.option("--prompt-tokens", default=32, show_default=True, type=int, help="Prompt length (random ids).")
@click.option("-n", "--max-tokens", "n", default=32, show_default=True, type=int, help="Tokens to generate.")
@click.option("--io-threads", default=2, show_default=True, type=int, help="Background read threads.")
@click.option("--threads", "n_threads", default=None, type=int,
              help="Worker threads of the bundle's C block kernels (default $EDGESPOOL_THREADS, else all cores).")
@click.option("--cache-policy", type=click.Choice(["lrfu", "lru"]), default="lrfu", show_default=True)
@click.option("--no-predict", is_flag=True, help="Disable next-layer expert prediction.")
@click.option("--no-lookahead", is_flag=True, help="Do not read a layer's routed experts before the engine asks.")
@click.option("--io-bandwidth", default=None, help="Emulated read bandwidth (rate limiter), e.g. 440MB/s.")
@click.option("--neuron-capacity", default=None, type=float,
              help="Bundled FFNs: neurons per layer window, a fraction (<= 1) or a count (default 0.25).")
@click.option("--neuron-window", default=5, show_default=True, type=int,
              help="Bundled FFNs: drop neurons unused for this many forward passes.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--json-out", default=None, type=click.Path(), help="Also write the JSON result to this file.")
@click.option("--plot", default=None, type=click.Path(), help="Draw memory and I/O over time (PNG).")
@click.option("--quiet", is_flag=True, hidden=True)
@click.option("--gpu-budget", default=None,
              help="Measure a CPU/GPU split run under this GPU memory budget, e.g. 3GiB (docs/GPU.md).")
def bench_cmd(bundle: str, memory_budget: str | None, target: str | None, rig: str | None, storage: str | None,
              rig_memory: str | None, prompt_tokens: int, n: int, io_threads: int, cache_policy: str,
              no_predict: bool, no_lookahead: bool, io_bandwidth: str | None, neuron_capacity: float | None,
              neuron_window: int, seed: int, as_json: bool,
              json_out: str | None, plot: str | None, quiet: bool, gpu_budget: str | None = None,
              n_threads: int | None = None) -> None:
    """Measure decode/prefill tokens/s, TTFT, bytes read per token, read bandwidth vs the storage bound, cache
    hit rate, prediction accuracy and peak memory of BUNDLE."""
    check_bench_options(bundle, prompt_tokens, n, seed, json_out, plot, io_threads=io_threads,
                        neuron_window=neuron_window, neuron_capacity=neuron_capacity, threads=n_threads)
    if gpu_budget is not None:  # the CPU/GPU split bench (resident CPU side)
        from ..runtime.gpu_bench import bench_split
        from ..units import parse_bytes

        if memory_budget is not None or rig is not None:
            raise OptionError("--gpu-budget is measured with a resident CPU side: drop --memory-budget / --rig")
        r = bench_split(bundle, parse_bytes(gpu_budget, "--gpu-budget"), prompt_tokens=prompt_tokens, max_tokens=n,
                        seed=seed, threads=n_threads)
        if json_out:
            Path(json_out).write_text(json.dumps(r, default=str))
        if as_json:
            click.echo(json.dumps(r, indent=1, default=str))
        else:
            click.echo(r.get("placement_text") or f"[gpu] running on the CPU only: {r['gpu_fallback']}")
            click.echo(f"prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s")
        return
    if io_bandwidth:
        os.environ["EDGESPOOL_IO_BANDWIDTH"] = io_bandwidth
    if rig:
        argv = [bundle, "--prompt-tokens", str(prompt_tokens), "-n", str(n), "--io-threads", str(io_threads),
                "--cache-policy", cache_policy, "--seed", str(seed), "--neuron-window", str(neuron_window)]
        argv += ["--neuron-capacity", str(neuron_capacity)] if neuron_capacity is not None else []
        argv += ["--threads", str(n_threads)] if n_threads is not None else []
        for flag, val in (("--memory-budget", memory_budget), ("--target", target or rig),
                          ("--io-bandwidth", io_bandwidth)):
            if val:
                argv += [flag, val]
        argv += ["--no-predict"] if no_predict else []
        argv += ["--no-lookahead"] if no_lookahead else []
        res = _in_rig(argv, rig, storage, rig_memory, memory_budget, bundle)
    else:
        from ..runtime.bench import bench_bundle

        opts = {}
        if memory_budget is not None:
            opts = dict(io_threads=io_threads, cache_policy=cache_policy, predict=not no_predict,
                        lookahead=not no_lookahead, neuron_window=neuron_window)
            if neuron_capacity is not None:
                opts["neuron_capacity"] = int(neuron_capacity) if neuron_capacity > 1 else float(neuron_capacity)
        res = bench_bundle(bundle, memory_budget=memory_budget, target=target, prompt_tokens=prompt_tokens,
                           max_tokens=n, seed=seed, threads=n_threads, **opts)
        if res.get("plan"):
            from ..schedulers.memory_plan import MemoryPlan

            d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in res["plan"].items()
                 if k in MemoryPlan.__dataclass_fields__}
            res["plan_text"] = MemoryPlan(**d).summary()
    if plot:
        if "_timeline" not in res:
            raise OptionError("--plot: no timeline recorded")
        from ..runtime.bench import plot_timeline

        plot_timeline(res, plot)
    out = {k: v for k, v in res.items() if k != "_timeline" or json_out}
    write_error = None
    if json_out:
        try:
            Path(json_out).write_text(json.dumps(out, default=str))
        except OSError as e:  # disk full, permissions: printed after the figures, which are not lost
            write_error = OptionError(f"--json-out {json_out}: cannot write the result ({e.strerror})")
    if write_error is not None and quiet:
        raise write_error
    if quiet:
        return
    out.pop("_timeline", None)
    if as_json:
        click.echo(json.dumps(out, indent=1, default=str))
    else:
        _print_human(out)
    if write_error is not None:
        raise write_error


COMMANDS = [bench_cmd]
