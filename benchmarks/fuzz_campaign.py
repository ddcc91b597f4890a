"""The long mutation-fuzz campaign of issue 13: N inputs per target (GGUF reader, GGUF model import, bundle
manifest, HF config/safetensors import, CLI options), each in a forked child with 2 GiB more address space and a
time limit, outcome classes counted (see tests/fuzz_targets.py for the targets and their judges).

    cd tests && nice -n 10 ../../venv/bin/python ../benchmarks/fuzz_campaign.py --per-target 1000 --json-out /tmp/f.json

Exit status 1 when any input lands in a class other than clean / accepted-identical / accepted-reference /
accepted-ran. Totals go to docs/RELIABILITY.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from fuzz_harness import CLASSES
from fuzz_targets import TARGETS, Campaign, Tally


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-target", type=int, default=1000, help="inputs per target (5 targets)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ", ".join(TARGETS))
    ap.add_argument("--start", type=int, default=0, help="first input number (inputs are numbered, reproducible)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per input before it counts as a hang")
    ap.add_argument("--json-out", type=Path, default=None)
    a = ap.parse_args()
    targets = [t for t in a.targets.split(",") if t]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown targets {unknown}; valid: {', '.join(TARGETS)}")
    if a.json_out is not None and not a.json_out.parent.is_dir():
        ap.error(f"--json-out {a.json_out}: folder {a.json_out.parent} does not exist")
    results = {}
    t_all = time.time()
    with tempfile.TemporaryDirectory(prefix="edgespool-fuzz-") as work:
        camp = Campaign(Path(work), timeout_s=a.timeout)
        for t in targets:
            tally = Tally()
            t0 = time.time()
            for i in range(a.start, a.start + a.per_target):
                camp.one(t, i, tally)
            results[t] = {"inputs": a.per_target, "seconds": round(time.time() - t0, 1), "counts": tally.counts,
                          "caught_by_checksum": tally.caught_by_checksum, "examples": tally.examples}
            print(f"{t:12s} {a.per_target:6d} inputs {time.time() - t0:7.1f} s  " +
                  "  ".join(f"{k} {v}" for k, v in sorted(tally.counts.items())), flush=True)
            for k, ex in tally.examples.items():
                for e in ex:
                    print(f"    {k}: {e}", flush=True)
    total = {c: sum(r["counts"].get(c, 0) for r in results.values()) for c in CLASSES + ("accepted-reference",
                                                                                          "accepted-ran")}
    bad = sum(v for k, v in total.items() if k not in ("clean", "accepted-identical", "accepted-reference",
                                                       "accepted-ran"))
    summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
               "python": platform.python_version(), "per_target": a.per_target, "start": a.start,
               "seconds": round(time.time() - t_all, 1), "totals": total, "bad": bad, "targets": results}
    print(json.dumps({k: v for k, v in summary.items() if k != "targets"}, indent=1))
    if a.json_out is not None:
        a.json_out.write_text(json.dumps(summary, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
