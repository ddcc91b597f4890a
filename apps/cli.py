"""The `edgespool` command line: a click group whose subcommands live in ``apps/cmd_*.py``.

Exit codes: 0 ok, 1 error (one line on stderr: ``error: ...``; a traceback only with ``--debug``), 2 usage.
Commands only parse options and call the library.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from ..errors import EdgespoolError

# Subcommand modules, each exposing ``COMMANDS`` (a list of click commands). Order = help order.
COMMAND_MODULES = [
    "cmd_targets",
    "cmd_export",
    "cmd_inspect",
    "cmd_run",
    "cmd_demo",
    "cmd_plan",
    "cmd_rig",
    "cmd_bench",
    "cmd_perplexity",
    "cmd_device",
    "cmd_deploy",
    "cmd_serve",
    "cmd_chat",
    "cmd_cluster",
]


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # noqa: D401 - click API
        try:
            return super().invoke(ctx)
        except EdgespoolError as e:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:  # `edgespool ... | head`: the reader left; exit quietly as cat or grep would
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit must not raise again
            except (OSError, ValueError):
                pass
            ctx.exit(141)
        except Exception as e:  # an unexpected bug: still one line unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)",
                       err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="edgespool")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """edgespool: export, compress and run models too big for the board."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


for _mod in COMMAND_MODULES:
    for _cmd in importlib.import_module(f"{__package__}.{_mod}").COMMANDS:
        cli.add_command(_cmd)


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="edgespool", standalone_mode=True)
    except SystemExit as e:
        sys.exit(e.code)
