"""Deploy time and bytes on the wire: `edgespool deploy` vs `rsync -a` vs `scp -r`, fresh and after a one-tensor
change, over the same tc-shaped veth link (plus a userspace latency relay) to a real sshd in a network namespace.

    sudo python -m edgespool.benchmarks.deploy_bench [--bundle DIR] [--rate 100mbit] [--delay-ms 5] [--repeats 3]

Without --bundle a synthetic int8 demo bundle is exported. Bytes on the wire are the kernel's counters of the veth
pair (both directions: payload, ssh, TCP/IP headers, acks). The three tools run interleaved, round-robin, within
each repeat; medians are reported. ``edgespool deploy`` runs with ``--read-test-size 0`` (no storage probe) but
includes its preflight, the on-board CRC verification and the atomic switch; rsync/scp do neither.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .deploy_board import CutProxy, TestBoard, modify_one_tensor, skip_reason


def _ssh_opts(board: TestBoard, kh: Path) -> list[str]:
    return ["-i", str(board.client_key), "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={kh}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-F", "none"]


def _run(cmd: list[str], env: dict | None = None) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}): {r.stderr.strip()[-500:]}")


def _timed(board: TestBoard, fn) -> dict:
    w0, t0 = board.wire_bytes(), time.perf_counter()
    fn()
    return {"seconds": time.perf_counter() - t0, "wire_bytes": board.wire_bytes() - w0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="Bundle to ship (default: a synthetic int8 demo bundle).")
    ap.add_argument("--tensor", default=None, help="Tensor changed for the delta case (default: a layer-0 wq).")
    ap.add_argument("--rate", default="100mbit", help="tc tbf rate of the link, both directions.")
    ap.add_argument("--delay-ms", type=float, default=5.0, help="One-way latency added by the relay.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", dest="json_out", type=Path, help="Write the results here as JSON.")
    a = ap.parse_args(argv)
    why = skip_reason()
    if why or shutil.which("rsync") is None or shutil.which("scp") is None:
        print(f"cannot run: {why or 'rsync/scp not installed'}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="deploy-bench-"))
    board = TestBoard(work / "board", rate=a.rate)
    proxy = CutProxy((board.board_ip, board.port), delay_s=a.delay_ms / 1000)
    env = dict(os.environ, EDGESPOOL_CONFIG_DIR=str(work / "cfg"), EDGESPOOL_SSH_CONFIG="none")
    try:
        if a.bundle is None:
            from ..exporters.compress import QuantPolicy
            from ..exporters.export import export_model
            from ..exporters.synth import synth_demo_model

            a.bundle = work / "A"
            export_model(synth_demo_model(seed=0), a.bundle, policy=QuantPolicy(quant="int8"), onnx=False,
                         kernels=False, progress=False)
        from ..runtime.bundle.reader import Bundle

        bA = Bundle(a.bundle)
        tensor = a.tensor or next(n for n in bA.tensors if n.endswith("wq"))
        B = work / "B"
        modify_one_tensor(bA.path, B, tensor)
        later = time.time() + 5  # as a re-export would: rsync's quick check (size + mtime, 1 s) must see the change
        for f in ("weights.bin", "manifest.json"):
            os.utime(B / f, (later, later))
        es = [sys.executable, "-m", "edgespool"]
        url = f"ssh://root@127.0.0.1:{proxy.port}"
        subprocess.run(es + ["device", "add", "b", url, "--identity", str(board.client_key), "--root",
                             str(board.root), "--python", sys.executable, "--accept-new"], env=env, check=True,
                       capture_output=True)
        kh = work / "cfg" / "known_hosts"
        ssh = _ssh_opts(board, kh)
        dest = work / "plain"

        def wipe() -> None:
            shutil.rmtree(board.root, ignore_errors=True)
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()

        def ours(src: Path) -> None:
            _run(es + ["deploy", str(src), "b", "--read-test-size", "0"], env)

        def rsync(src: Path) -> None:
            _run(["rsync", "-a", "-e", " ".join(["ssh", "-p", str(proxy.port), *ssh]), f"{src}/",
                  f"root@127.0.0.1:{dest}/bundle/"])

        def scp(src: Path) -> None:
            _run(["ssh", "-p", str(proxy.port), *ssh, "root@127.0.0.1", f"rm -rf {dest}/bundle"])
            _run(["scp", "-q", "-r", "-P", str(proxy.port), *ssh, str(src), f"root@127.0.0.1:{dest}/bundle"])

        tools = {"edgespool deploy": ours, "rsync -a": rsync, "scp -r": scp}
        rows: dict[str, dict[str, list[dict]]] = {t: {"fresh": [], "one_tensor": []} for t in tools}
        names = list(tools)
        for rep in range(a.repeats):
            for k in range(len(names)):
                name = names[(rep + k) % len(names)]
                wipe()
                rows[name]["fresh"].append(_timed(board, lambda: tools[name](bA.path)))
                rows[name]["one_tensor"].append(_timed(board, lambda: tools[name](B)))
                if name == "edgespool deploy":  # check the board holds B (edgespool's reader, every CRC)
                    Bundle(board.root / "current").verify()
                elif not filecmp_same(B, dest / "bundle"):
                    raise SystemExit(f"{name} left a different copy")
        size = sum(p.stat().st_size for p in bA.path.rglob("*") if p.is_file())
        out = {"bundle": str(a.bundle), "bundle_bytes": size, "tensor": tensor,
               "tensor_bytes": bA.tensors[tensor]["nbytes"], "rate": a.rate, "delay_ms": a.delay_ms,
               "repeats": a.repeats, "results": {}}
        print(f"bundle {size / 1e6:.1f} MB ({a.bundle}); changed tensor {tensor} "
              f"({bA.tensors[tensor]['nbytes'] / 1e3:.1f} kB); link {a.rate}, +{a.delay_ms} ms one-way; "
              f"median of {a.repeats}")
        print(f"{'tool':18s} {'fresh s':>9s} {'fresh MB':>9s} {'1-tensor s':>11s} {'1-tensor MB':>12s}")
        for name in names:
            r = {case: {"seconds": statistics.median(x["seconds"] for x in v),
                        "wire_bytes": statistics.median(x["wire_bytes"] for x in v), "runs": v}
                 for case, v in rows[name].items()}
            out["results"][name] = r
            print(f"{name:18s} {r['fresh']['seconds']:9.2f} {r['fresh']['wire_bytes'] / 1e6:9.2f} "
                  f"{r['one_tensor']['seconds']:11.2f} {r['one_tensor']['wire_bytes'] / 1e6:12.3f}")
        if a.json_out:
            a.json_out.write_text(json.dumps(out, indent=1))
        return 0
    finally:
        proxy.close()
        board.close()
        shutil.rmtree(work, ignore_errors=True)


def filecmp_same(a: Path, b: Path) -> bool:
    """Every file under ``a`` exists under ``b`` with the same bytes."""
    import filecmp

    return all((b / p.relative_to(a)).is_file() and filecmp.cmp(p, b / p.relative_to(a), shallow=False)
               for p in a.rglob("*") if p.is_file())


if __name__ == "__main__":
    sys.exit(main())
