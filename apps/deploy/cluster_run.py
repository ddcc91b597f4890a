"""`edgespool run BUNDLE --cluster dev1,dev2 -p ...` over shares put on the boards by ``deploy --cluster``
(:mod:`.cluster_deploy`): mpirun reaches each registered device through an rsh agent script that runs edgespool's
own ssh command line for it (its user, port, identity and edgespool's known_hosts: host keys checked), one MPI
app context a board (``-np 1 --host ADDRESS  [env PYTHONPATH=..] PYTHON -m edgespool.apps.cluster.worker ...``:
each board its own interpreter), and every rank opens ITS deployed share by its path on its board.

``EDGESPOOL_MPIRUN_ARGS`` (shell words) adds mpirun options, e.g. ``--mca btl_tcp_if_include 10.0.0.0/24`` on a
host with several networks."""
from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

from ...errors import OptionError
from ...runtime.bundle.reader import Bundle
from .cluster_deploy import load_record, record_key
from .registry import Device, Registry
from .ssh_session import ssh_argv


def deployed(bundle: Bundle, names: list[str], mode: str, registry: Registry | None = None
             ) -> tuple[dict[str, Any], list[Device]] | None:
    """The deploy record of ``bundle`` in ``mode`` on the devices ``names`` (in that order) and the devices; None
    when the names are not all registered devices (plain host names: mpirun's own ssh launch). OptionError (one
    line) when they are devices but hold no share of this bundle in this mode."""
    reg = registry or Registry()
    devs = reg.load()
    if not all(n in devs for n in names):
        return None
    rec = load_record(reg, record_key(bundle, mode, names))
    if rec is None:
        raise OptionError(f"--cluster {','.join(names)}: these devices hold no {mode} share of {bundle.path.name}; "
                          f"run `edgespool deploy {bundle.path} --cluster {','.join(names)}"
                          + (" --cluster-mode tensor" if mode == "tensor" else "") + "` first")
    devices = [devs[n] for n in names]
    hosts = [d.host for d in devices]
    dup = next((h for i, h in enumerate(hosts) if h in hosts[:i]), None)
    if dup:
        raise OptionError(f"--cluster {','.join(names)}: two boards at address {dup}; mpirun needs one address a "
                          "board")
    return rec, devices


def rsh_agent(devices: list[Device], registry: Registry, folder: Path) -> Path:
    """A script mpirun runs as ``AGENT ADDRESS COMMAND...``: ssh to the device at ADDRESS the way edgespool's
    deploy does (BatchMode, edgespool's known_hosts, the device's port and identity)."""
    cases = "\n".join(f"  {shlex.quote(d.host)}) exec {shlex.join(ssh_argv(d, registry.known_hosts))} \"$*\" ;;"
                      for d in devices)
    agent = folder / "rsh-agent.sh"
    agent.write_text(f'#!/bin/sh\nhost="$1"; shift\ncase "$host" in\n{cases}\n'
                     '  *) echo "edgespool rsh agent: no registered device at $host" >&2; exit 1 ;;\nesac\n')
    agent.chmod(0o700)
    return agent


def _rank_command(board: dict[str, Any], program: str) -> list[str]:
    cmd = [board["python"] or "python3", "-m", program]
    return (["env", f"PYTHONPATH={board['pythonpath']}"] + cmd) if board.get("pythonpath") else cmd


def run_deployed(bundle: Bundle, names: list[str], mode: str, prompt_ids: list[int], n: int, budget: int,
                 ctx: int, timeout_s: float = 30.0, registry: Registry | None = None):
    """Run the generation over the deployed shares (see the module docstring); None when ``names`` are not all
    registered devices. Returns the :class:`~edgespool.apps.cluster.launch.ClusterRun`."""
    from ..cluster.launch import run_cluster

    reg = registry or Registry()
    got = deployed(bundle, names, mode, reg)
    if got is None:
        return None
    rec, devices = got
    boards = rec["boards"]
    import click

    click.echo(f"[cluster] {len(boards)} boards over ssh, each running its deployed {mode} share: "
               + "; ".join(f"{b['device']} ({d.host}): {b['holds']}" for b, d in zip(boards, devices)), err=True)
    paths = ",".join(b["path"] for b in boards)
    common = ["-", "--prompt-ids", ",".join(map(str, prompt_ids)), "-n", str(n), "--max-context", str(ctx),
              "--timeout", str(timeout_s)]
    if mode == "tensor":
        program = "edgespool.apps.cluster.tp_worker"
        extra = ["--allreduce", "ring", "--shards", paths]
        if budget:
            extra += ["--budget", str(int(budget)), "--prefill-chunk", "16"]
    else:
        program = "edgespool.apps.cluster.worker"
        extra = ["--ranges", ",".join(f"{a}:{b}" for a, b in rec["ranges"]), "--shares", paths]
        if budget:
            extra += ["--budgets", ",".join([str(int(budget))] * len(boards)), "--prefill-chunk", "16"]
    apps: list[str] = []
    for i, (b, d) in enumerate(zip(boards, devices)):
        apps += ([":"] if i else []) + ["-np", "1", "--host", d.host, *_rank_command(b, program), *common, *extra]
    with tempfile.TemporaryDirectory(prefix="edgespool-cluster-ssh-") as tmp:
        agent = rsh_agent(devices, reg, Path(tmp))
        mpirun = ["mpirun", *(["--allow-run-as-root"] if os.geteuid() == 0 else []),
                  "--host", ",".join(d.host for d in devices), "--mca", "plm_rsh_agent", str(agent),
                  *shlex.split(os.environ.get("EDGESPOOL_MPIRUN_ARGS", ""))]
        return run_cluster(mpirun, apps)
