"""The two ends of a benchmark measured in child processes: run ``python -m MODULE ARGS`` and read the JSON object
it prints last (a failure becomes ``{"error": its last stderr line}``), and write a result as JSON (to a file when
asked, always to stdout)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_child(module: str, args: list[str]) -> dict:
    """Run ``python -m module *args`` and return the JSON object on its last stdout line."""
    p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def emit(result: dict, json_out: str | None) -> None:
    """Print ``result`` as indented JSON, and write it to ``json_out`` too when given."""
    text = json.dumps(result, indent=1)
    if json_out:
        Path(json_out).write_text(text)
    print(text)
