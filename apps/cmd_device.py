"""`edgespool device add | check | ls | rm`: the boards `edgespool deploy` ships to (see docs/DEPLOY.md)."""
from __future__ import annotations

import json

import click

from ..units import fmt_bytes


def _print_facts(f: dict) -> None:
    es = f.get("edgespool") or {}
    st = f.get("storage")
    th = f.get("thermal") or {}
    rows = [
        ("arch", f"{f.get('arch')} ({f.get('cpu_model') or '?'}), {f.get('cores')} cores"),
        ("cpu features", " ".join(x for x in (f.get("cpu_features") or []) if x in
                                  ("asimd", "asimddp", "fphp", "i8mm", "sve", "avx2", "fma", "avx512f",
                                   "avx512_vnni", "avx_vnni")) or "-"),
        ("glibc / kernel", f"{f.get('glibc')} / {f.get('kernel')}"),
        ("python", f"{f.get('python')} ({f.get('python_executable')})"),
        ("edgespool there", es.get("version") or f"none ({es.get('error', '?')})"),
        ("memory", f"{fmt_bytes(f.get('memory_usable') or 0)} usable (RAM {fmt_bytes(f.get('ram_total') or 0)}"
                   + (f", cgroup limit {fmt_bytes(f['cgroup_memory_limit'])}" if f.get("cgroup_memory_limit") else "")
                   + ")"),
        ("disk free", f"{fmt_bytes(f.get('disk_free') or 0)} under {f.get('device_root')}"),
        ("cold read", f"{st['bandwidth'] / 1e6:.1f} MB/s"
         + (f", second half {st['sustained_bandwidth'] / 1e6:.1f} MB/s" if st.get("sustained_bandwidth") else "")
         + f" ({fmt_bytes(st['bytes'])}, {st['fs_type']})" if st else "-"),
        ("governor / temp", f"{th.get('governor') or '-'} / {th.get('temperatures_c') or '-'}"
                            + (f", throttled {th['throttled']}" if th.get("throttled") else "")),
        ("current release", (f.get("current_release") or "none")[:12]),
    ]
    for k, v in rows:
        click.echo(f"  {k:18s} {v}")


@click.group("device")
def device_group() -> None:
    """Named boards reachable over ssh (registry in $EDGESPOOL_CONFIG_DIR or ~/.config/edgespool)."""


@device_group.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--identity", default=None, help="Private key file for ssh (default: ssh-agent / ssh's defaults).")
@click.option("--accept-new", is_flag=True, help="Trust the board's host key on this first connection (TOFU). "
                                                 "Without it an unknown host is refused.")
@click.option("--root", default="~/edgespool", show_default=True, help="Device root on the board (all files "
                                                                       "edgespool writes stay under it).")
@click.option("--python", "python", default="python3", show_default=True, help="Python interpreter on the board.")
def add_cmd(name: str, url: str, identity: str | None, accept_new: bool, root: str, python: str) -> None:
    """Register board NAME at ssh://user@host[:port] (connects once to check it and record its host key)."""
    from .deploy.deploy import board_facts, connect
    from .deploy.registry import Device, Registry, parse_url

    user, host, port = parse_url(url)
    reg = Registry()
    dev = Device(name, user, host, port, identity, root, python)
    with connect(dev, reg, accept_new=accept_new) as s:
        f = board_facts(s, read_test_bytes=0)
        s.request("bye")
    reg.add(dev)
    click.echo(f"added {name}: {dev.url}, {f['arch']}, Python {f['python']}, root {f['device_root']}")


@device_group.command("check")
@click.argument("name")
@click.option("--bundle", default=None, type=click.Path(), help="Also check that this bundle fits the board.")
@click.option("--memory-budget", default=None, help="With --bundle: the budget it would run under.")
@click.option("--read-test-size", default="32MiB", show_default=True, help="Bytes written then read cold on "
                                                                           "the board (0 = skip).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def check_cmd(name: str, bundle: str | None, memory_budget: str | None, read_test_size: str, as_json: bool) -> None:
    """Preflight a board over ssh: arch, CPU features, glibc, Python, edgespool there, memory, disk, storage speed."""
    from ..units import parse_bytes
    from .deploy.deploy import read_test_bytes
    from .deploy.deploy import board_facts, connect
    from .deploy.registry import Registry

    reg = Registry()
    dev = reg.get(name)
    with connect(dev, reg) as s:
        f = board_facts(s, read_test_bytes(read_test_size))
        s.request("bye")
    out = {"device": name, "url": dev.url, "facts": f}
    if bundle:
        from ..runtime.bundle.reader import Bundle
        from .deploy.chunk_plan import plan_bundle
        from .deploy.preflight import check_fit

        b = Bundle(bundle)
        plan = plan_bundle(b.path)
        fit = check_fit(b, f, name, bytes_to_send=plan.nbytes, bundle_bytes=plan.nbytes,
                        memory_budget=parse_bytes(memory_budget, "--memory-budget") if memory_budget else None)
        out["fit"] = fit.to_dict()
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"{name} ({dev.url})")
    _print_facts(f)
    if bundle:
        click.echo(f"  {'fits':18s} yes: {bundle} needs {fmt_bytes(out['fit']['needed_memory'])} memory, "
                   f"{fmt_bytes(out['fit']['needed_disk'])} disk")
        for n in out["fit"]["notes"]:
            click.echo(f"  note: {n}")


@device_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def ls_cmd(as_json: bool) -> None:
    """List registered boards (no connection is made)."""
    from dataclasses import asdict

    from .deploy.registry import Registry

    devs = Registry().load()
    if as_json:
        click.echo(json.dumps([asdict(d) for d in devs.values()], indent=1))
        return
    for d in devs.values():
        click.echo(f"{d.name:16s} {d.url:40s} root {d.root}" + (f"  identity {d.identity}" if d.identity else ""))


@device_group.command("rm")
@click.argument("name")
def rm_cmd(name: str) -> None:
    """Forget board NAME (its host key line stays in known_hosts)."""
    from .deploy.registry import Registry

    d = Registry().remove(name)
    click.echo(f"removed {d.name} ({d.url})")


COMMANDS = [device_group]
