"""`edgespool rig`: run a command with the RAM, storage speed and cores of a Pi/Jetson (``rig run``), and build the
arm64 qemu root (``rig arm64 setup``). The work is done in :mod:`edgespool.apps.rig`."""
from __future__ import annotations

import json
import os
import sys

import click

from ..errors import OptionError
from ..targets import get_target


@click.group("rig")
def rig_group() -> None:
    """Emulated Raspberry Pi / Jetson: real memory, storage-bandwidth and CPU limits, and arm64 under qemu."""


@rig_group.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--profile", "profile_name", help="Target profile whose RAM, cores and storage speed to apply "
              "(rpi4, rpi5, jetson-nano, jetson-orin-nano).")
@click.option("--storage", help="Storage medium of the profile (e.g. nvme, microsd); default: its first.")
@click.option("--memory", help="Memory limit including page cache, e.g. 1GiB (default: the profile's RAM).")
@click.option("--read-bandwidth", help="Read bandwidth of the storage, e.g. 90MB/s (default: the medium's).")
@click.option("--read-iops", help="Read operations per second (default: the medium's).")
@click.option("--cores", help="Number of CPUs (default: the profile's, capped at the host's).")
@click.option("--device-path", "device_paths", multiple=True, type=click.Path(exists=True),
              help="Throttle the block device backing this path (repeatable; default: cwd and path arguments).")
@click.option("--evict", "evict_paths", multiple=True, type=click.Path(exists=True),
              help="Drop this file/directory from the page cache before running (repeatable).")
@click.option("--emulate", is_flag=True, help="Use no cgroups: affinity, RLIMIT_AS and EDGESPOOL_IO_BANDWIDTH.")
@click.option("--arch", type=click.Choice(["host", "arm64"]), default="host", show_default=True,
              help="arm64: run inside the qemu arm64 root (`edgespool rig arm64 setup` first).")
@click.option("--cpu", help="Emulated core for --arch arm64: cortex-a72 (Pi 4), cortex-a76 (Pi 5), ... "
              "(default: the profile's CPU, else cortex-a76).")
@click.option("--bind", "binds", multiple=True, type=click.Path(exists=True),
              help="--arch arm64: also make this host path visible inside (cwd and path arguments always are).")
@click.option("--timeout", type=float, help="Seconds before the command is sent SIGTERM (then SIGKILL).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (table goes nowhere).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the JSON report here.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run_cmd(ctx: click.Context, profile_name, storage, memory, read_bandwidth, read_iops, cores, device_paths,
            evict_paths, emulate, arch, cpu, binds, timeout, as_json, report_path, cmd) -> None:
    """Run CMD under the limits; print wall time, peak memory, device reads, OOM kills; exit with CMD's code.

    Example: edgespool rig run --profile rpi5 --storage microsd -- edgespool run bundle/ -n 32
    """
    from .rig import arm64
    from .rig.limits import resolve_limits
    from .rig.runner import run_in_rig

    profile = get_target(profile_name) if profile_name else None
    limits = resolve_limits(profile, storage=storage, memory=memory, read_bandwidth=read_bandwidth,
                            read_iops=read_iops, cores=cores)
    cmd = list(cmd[1:] if cmd[:1] == ("--",) else cmd)
    launcher, arch_label = None, ""
    if arch == "arm64":
        if not arm64.is_ready():
            raise OptionError("--arch arm64: the arm64 root is not set up; run `edgespool rig arm64 setup`")
        qcpu, note = arm64.qemu_cpu(cpu or (profile.cpu if profile and profile.isa == "aarch64" else "cortex-a76"))
        arm64.sync_package(arm64.root_dir())
        extra = [os.path.abspath(a) for a in cmd[1:] if a and not a.startswith("-") and os.path.exists(a)]
        extra += [os.path.abspath(b) for b in (*binds, *device_paths)]
        launcher = arm64.launcher_argv(qcpu, extra, {})
        arch_label = f"arm64 under qemu-user ({qcpu})" + (f"; {note}" if note else "")
    elif cpu:
        raise OptionError("--cpu only applies with --arch arm64")
    report = run_in_rig(cmd, limits, device_paths=list(device_paths), emulate=emulate, evict_paths=list(evict_paths),
                        timeout=timeout, launcher=launcher, arch=arch_label)
    data = report.to_dict()
    if report_path:
        with open(report_path, "w") as f:
            json.dump(data, f, indent=1)
    if as_json:
        sys.stdout.flush()
        click.echo(json.dumps(data, indent=1))
    else:
        click.echo("--- edgespool rig ---", err=True)
        click.echo(report.format_table(), err=True)
    ctx.exit(report.exit_code)


@rig_group.command("evict")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
def evict_cmd(paths) -> None:
    """Drop files (or directories) from the page cache so the next read comes from storage."""
    from .rig.pagecache import cached_fraction, evict

    for p in paths:
        n = evict(p)
        click.echo(f"{p}: evicted {n} bytes, {cached_fraction(p):.1%} still cached")


@rig_group.command("cached")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
def cached_cmd(paths) -> None:
    """Show how much of each file (or directory) is in the page cache (reads of cached bytes are not throttled)."""
    from .rig.pagecache import cached_fraction

    for p in paths:
        click.echo(f"{cached_fraction(p):7.1%}  {p}")


@rig_group.group("arm64")
def arm64_group() -> None:
    """The arm64 Debian root run under qemu-user with a private binfmt_misc."""


@arm64_group.command("setup")
@click.option("--force", is_flag=True, help="Rebuild even when the cached root is current.")
@click.option("--mirror", default=None, help="Debian mirror for debootstrap (default: deb.debian.org).")
@click.option("--extra", "extras", multiple=True, help="Also install this package's aarch64 wheel (pinned to the "
              "host's version), e.g. --extra apache-tvm to load compiled kernels. Repeatable.")
def arm64_setup_cmd(force: bool, mirror: str | None, extras: tuple[str, ...]) -> None:
    """Build (once; cached in ~/.cache/edgespool/arm64) an arm64 Debian root with Python and edgespool's runtime."""
    from .rig import arm64

    res = arm64.setup(force=force, mirror=mirror or arm64.MIRROR, log=lambda m: click.echo(f"  {m}", err=True),
                      extras=extras)
    if res.cached:
        click.echo(f"arm64 root is current: {res.root} (checked in {res.seconds:.2f} s)")
    elif set(res.steps) == {"extras"}:
        click.echo(f"added {', '.join(extras)} to the arm64 root in {res.seconds:.0f} s: {res.root}")
    else:
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in res.steps.items())
        click.echo(f"arm64 root built in {res.seconds:.0f} s ({steps}), {res.size_bytes / 1e6:.0f} MB: {res.root}")


@arm64_group.command("path")
def arm64_path_cmd() -> None:
    """Print the arm64 root directory (exit 1 when it is not set up)."""
    from .rig import arm64

    if not arm64.is_ready():
        raise OptionError("the arm64 root is not set up; run `edgespool rig arm64 setup`")
    click.echo(str(arm64.root_dir()))


COMMANDS = [rig_group]
