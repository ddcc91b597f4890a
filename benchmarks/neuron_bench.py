"""Neuron windowing (LLM in a flash) measured on a synthetic FFN: what it reads, how exact it is, what it costs.

    python benchmarks/neuron_bench.py [--hidden 1024 --inter 4096 --layers 4 --tokens 32 --storage rpi5] [--rig rpi5]
    python benchmarks/neuron_bench.py --e2e WORKDIR [--budget 136MiB --rig rpi5 -n 12]   # end to end, see e2e()

A random-weight FFN of the given size (int8 row-column bundles, O_DIRECT reads) runs a sequence of slowly drifting
inputs (x_t = 0.95 x_{t-1} + 0.31 noise: consecutive tokens share most active neurons; real ReLU models' token-to-
token overlap is a property of the model and the text, not of this script). Reported per configuration: active
fraction, predictor recall / precision, bytes and reads per token (measured), the I/O time those would take on the
profile's storage (max of bytes/bandwidth and reads/IOPS: a model), the measured wall time per token of the
windowed FFN (reads + compute; with ``--rig`` the run happens inside the board rig, so the reads go through its
blkio bandwidth and IOPS throttle), the same for a dense FFN that reads every neuron every token, and the relative
L2 error of the output against the dense FFN computed with numpy from the same bundled weights.

* ReGLU with a negative pre-activation bias (about 10 % of neurons active, like ReLU LLMs after ReLU-fication):
  the exact predictor (gate pinned in float32) with row-column bundles and with the split (matrix) layout, and
  low-rank SVD predictors of the gate whose margin is calibrated on 8 separate inputs for a target recall.
* SwiGLU (the same weights, SiLU, no bias): no neuron is exactly zero; keeping the top fraction of neurons by the
  low-rank predicted |silu(gate x)| is an approximation, and its error is reported next to the oracle's (true
  top |silu(g) * u|, the best any predictor could do).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import sys
from pathlib import Path

import numpy as np

from edgespool.benchmarks.neuron_window import (ExactPredictor, LowRankPredictor, NeuronWindow, unpack_bundles,
                                              write_neuron_file)
from edgespool.targets import get_target


def _silu(x):
    return x / (1 + np.exp(-x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--inter", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--storage", default="rpi5")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--rig", default=None, help="run inside the board rig of this profile (needs root cgroups)")
    ap.add_argument("--dir", default=None, help="where the neuron files go (default: a temporary directory)")
    ap.add_argument("--rig-note", default="", help=argparse.SUPPRESS)
    ap.add_argument("--e2e", default=None, help="end to end: synthesise a sparse ReLU Llama into this directory, "
                                                "export matrix + bundled int8 bundles, `edgespool bench` both")
    ap.add_argument("--budget", default=None, help="--e2e: memory budget (default: 10%% above the neuron plan's "
                                                   "minimum)")
    ap.add_argument("--neuron-capacity", default="0.15", help="--e2e: neurons per layer window")
    ap.add_argument("-n", type=int, default=12, help="--e2e: tokens to generate")
    ap.add_argument("--active", type=float, default=0.10, help="--e2e: target active fraction of FFN neurons")
    a = ap.parse_args()
    if a.e2e:
        e2e(a)
        return
    if a.rig:
        from edgespool.apps.rig.limits import resolve_limits
        from edgespool.apps.rig.runner import run_in_rig

        d = Path(a.dir or tempfile.mkdtemp(prefix="es-neuron-"))
        d.mkdir(parents=True, exist_ok=True)
        argv = [x for x in sys.argv[1:]]
        i = argv.index("--rig")
        del argv[i: i + 2]
        if "--dir" not in argv:
            argv += ["--dir", str(d)]
        argv += ["--rig-note", f"{a.rig} rig"]
        rep = run_in_rig([sys.executable, str(Path(__file__).resolve()), *argv],
                         resolve_limits(get_target(a.rig)), device_paths=[str(d)])
        print(f"rig: exit {rep.exit_code}, limits: "
              + ", ".join(f"{l.name} {l.display} ({l.mode})" for l in rep.limits))
        return
    H, I, L = a.hidden, a.inter, a.layers
    st = get_target(a.storage).storage_medium(None)
    bw, iops = st.read_bandwidth, st.read_iops
    rng = np.random.default_rng(0)
    layers = [{"gate": rng.standard_normal((I, H), dtype=np.float32) / np.sqrt(H),
               "up": rng.standard_normal((I, H), dtype=np.float32) / np.sqrt(H),
               "down": rng.standard_normal((H, I), dtype=np.float32) / np.sqrt(I)} for _ in range(L)]
    bias = [np.full(I, -1.28, np.float32) for _ in range(L)]  # P(N(0,1) > 1.28) = 10 %
    xs, x = [], rng.standard_normal(H).astype(np.float32)
    for _ in range(a.tokens):
        x = (0.95 * x + 0.31 * rng.standard_normal(H)).astype(np.float32)
        xs.append(x.copy())
    rows = []
    with (tempfile.TemporaryDirectory(dir=a.dir) if a.dir else tempfile.TemporaryDirectory()) as td:
        path = Path(td) / "ffn.bin"
        spec = write_neuron_file(path, "reglu", layers, "int8")
        split_path = Path(td) / "ffn-split.bin"
        write_neuron_file(split_path, "reglu", layers, "int8", layout="split")
        # the weights exactly as bundled (int8 per vector), for the dense references and the exact predictor
        deq = []
        for li in range(L):
            nw = NeuronWindow(path, capacity=I, window=1)
            v = unpack_bundles(spec, nw.slots[li, nw.load(li, np.arange(I))])
            nw.close()
            deq.append(v)
        dense_bytes = I * spec.bundle_bytes  # a dense streamed FFN layer reads every neuron (same int8 bytes)

        def dense_ms() -> float:
            """Measured ms/token of a dense ReGLU FFN streamed from the same file: every neuron read every token."""
            nw = NeuronWindow(path, capacity=I, window=1, bias=bias)
            t0 = time.perf_counter()
            try:
                for x in xs:
                    for li in range(L):
                        nw.where[li].clear()
                        nw.last[li].clear()
                        nw.free[li] = list(range(I - 1, -1, -1))
                        nw.ffn(li, x, np.arange(I))
            finally:
                nw.close()
            return 1e3 * (time.perf_counter() - t0) / len(xs)

        dense_measured = dense_ms()

        def run(name, pred_fn, act, pinned_bytes, file=path):
            nw = NeuronWindow(file, capacity=I, window=a.window, bias=bias if act == "relu" else None)
            err, rec, prec, frac, t_c = [], [], [], [], 0.0
            try:
                for x in xs:
                    for li in range(L):
                        v = deq[li]
                        g, u = v["gate"] @ x, v["up"] @ x
                        if act == "relu":
                            true_h = np.maximum(g + bias[li], 0) * u
                        else:
                            true_h = _silu(g) * u
                        ref = v["down"].T @ true_h
                        sel = pred_fn(li, x)
                        t0 = time.perf_counter()
                        if act == "relu":
                            y = nw.ffn(li, x, sel)
                        else:  # SwiGLU on the selected neurons only (same bundles, SiLU instead of ReLU)
                            vv = unpack_bundles(spec, nw.slots[li, nw.load(li, sel)])
                            y = vv["down"].T @ (_silu(vv["gate"] @ x) * (vv["up"] @ x))
                        t_c += time.perf_counter() - t0
                        err.append(float(np.linalg.norm(y - ref) / np.linalg.norm(ref)))
                        t = set(np.nonzero(true_h != 0)[0]) if act == "relu" else None
                        if t is not None:
                            s = set(int(j) for j in sel)
                            rec.append(len(t & s) / max(1, len(t)))
                            prec.append(len(t & s) / max(1, len(s)))
                        frac.append(len(sel) / I)
                    nw.end_token()
                s = nw.stats()
            finally:
                nw.close()
            n = a.tokens
            bpt, rpt = s["bytes_read"] / n, s["reads"] / n
            io_s = max(bpt / bw, rpt / iops)
            rows.append(dict(name=name, act=act, frac=np.mean(frac), recall=np.mean(rec) if rec else None,
                             precision=np.mean(prec) if prec else None, bytes=bpt, reads=rpt, io_ms=1e3 * io_s,
                             dense_io_ms=1e3 * L * dense_bytes / bw, err=np.mean(err), max_err=np.max(err),
                             pinned=pinned_bytes, window_bytes=nw.resident_bytes, wall_ms=1e3 * t_c / n,
                             dense_wall_ms=dense_measured))
            r = rows[-1]
            print(f"{name:40s} active {r['frac']:.1%} read {bpt / 2**20:6.2f} MiB/token in {rpt:5.0f} reads "
                  f"-> {r['io_ms']:6.1f} ms vs dense {r['dense_io_ms']:.1f} ms (measured {r['wall_ms']:.1f} vs "
                  f"{dense_measured:.1f} ms); err {r['err']:.2e}", flush=True)

        gates = [v["gate"] for v in deq]
        exact = ExactPredictor(gates, bias)
        run("ReGLU, exact predictor (gate pinned f32)", exact.active, "relu", exact.nbytes)
        run("ReGLU, exact predictor, split layout (no bundling)", exact.active, "relu", exact.nbytes, split_path)
        calib = []
        for _ in range(8):  # calibration inputs, distinct from the measured sequence
            calib.append(rng.standard_normal(H).astype(np.float32))
        for rank in (128, 256):
            for target in (0.9, 0.99):
                lr = LowRankPredictor(gates, rank, 0.0, bias)
                m = lr.calibrate(calib, exact, target)
                run(f"ReGLU, rank-{rank} predictor, margin {m:.2f} (calibrated recall {target})", lr.active, "relu",
                    lr.nbytes)
        lr = LowRankPredictor(gates, 128, 0.0)
        for keep in (0.1, 0.25, 0.5):
            k = int(keep * I)

            def top_pred(li, x, k=k):
                return np.sort(np.argsort(-np.abs(_silu(lr.scores(li, x))))[:k])

            def top_oracle(li, x, k=k):
                v = deq[li]
                return np.sort(np.argsort(-np.abs(_silu(v["gate"] @ x) * (v["up"] @ x)))[:k])

            run(f"SwiGLU, top {keep:.0%} by rank-128 |silu(g)|", top_pred, "silu", lr.nbytes)
            run(f"SwiGLU, top {keep:.0%} oracle |silu(g)*u|", top_oracle, "silu", 0)
    where = a.rig_note or "in-process (no rig: page-cache-free O_DIRECT reads at this machine's disk speed)"
    md = [f"Synthetic FFN H={H}, I={I}, {L} layers, int8 row-column bundles of {spec.bundle_bytes} B, "
          f"window {a.window} tokens, {a.tokens} drifting tokens; I/O time modelled for {a.storage} "
          f"{st.medium} ({bw / 1e6:.0f} MB/s, {iops} IOPS); wall time measured {where}.", "",
          "| configuration | active | recall | precision | read/token | reads/token | modelled I/O ms/token "
          "(dense) | measured ms/token (dense) | rel. error (max) | predictor memory |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['name']} | {r['frac']:.1%} | "
                  + (f"{r['recall']:.3f} | {r['precision']:.3f}" if r["recall"] is not None else "- | -")
                  + f" | {r['bytes'] / 2**20:.2f} MiB | {r['reads']:.0f} | {r['io_ms']:.1f} ({r['dense_io_ms']:.1f}) | "
                  f"{r['wall_ms']:.1f} ({r['dense_wall_ms']:.1f}) | "
                  f"{r['err']:.1e} ({r['max_err']:.1e}) | {r['pinned'] / 2**20:.1f} MiB |")
    text = "\n".join(md) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


# -- end to end ---------------------------------------------------------------------------------------------------
E2E = dict(hidden=1024, layers=20, inter=2816, heads=16, kv_heads=4, vocab=512)  # stream_bench's dense Llama


def write_sparse_relu_llama(out: Path, active: float, seed: int = 0) -> Path:
    """A random-weight ReLU Llama (``hidden_act: relu``, ReGLU FFN, f16 safetensors + SentencePiece tokenizer) whose
    FFN activations are sparse like a ReLU-fied LLM's: Llama has no FFN bias, so hidden dimension 0 carries a
    constant (embedding column 0 = c, o_proj / down_proj rows 0 = 0: no layer writes it) and gate column 0 turns
    it into a per-layer negative bias. The bias of layer i is calibrated on the model itself (edgespool resident
    engine over 32 random tokens): the ``1 - active`` quantile of that layer's gate pre-activations."""
    from safetensors.numpy import load_file, save_file

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from stream_bench import write_hf

    if (out / "config.json").exists() and json.loads((out / "config.json").read_text())["hidden_act"] == "relu":
        return out
    write_hf(out, dict(arch="llama", **E2E), seed=seed)
    st = load_file(str(out / "model.safetensors"))
    L = E2E["layers"]
    c = 4.0
    st["model.embed_tokens.weight"][:, 0] = c
    for i in range(L):
        p = f"model.layers.{i}."
        st[p + "self_attn.o_proj.weight"][0, :] = 0
        st[p + "mlp.down_proj.weight"][0, :] = 0
        st[p + "mlp.gate_proj.weight"][:, 0] = 0
    cfg = json.loads((out / "config.json").read_text())
    cfg["hidden_act"] = "relu"
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    save_file(st, str(out / "model.safetensors"), metadata={"format": "pt"})
    # calibrate layer by layer in one forward pass: each layer's FFN input h is seen before its FFN runs, its bias
    # is set in the loaded (f16) gate weight, and later layers see the calibrated model's hidden states
    import edgespool.runtime.decoder.engine as engine_mod
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.runtime.decoder.weights import ResidentWeights

    ids = np.random.default_rng(seed + 1).integers(3, E2E["vocab"], 32)
    with tempfile.TemporaryDirectory() as td:
        export_model(open_source(out), Path(td) / "b", policy=QuantPolicy(quant="f16"), onnx=False, kernels=False,
                     progress=False)
        orig = engine_mod.swiglu
        layer = [0]

        def spy(h, gate, up, down, act="silu"):
            i = layer[0]
            layer[0] += 1
            gate.data[:, 0] = 0
            pre = h @ gate.dequantize().T
            h0 = float(np.mean(h[:, 0]))
            col = np.float16(-float(np.quantile(pre, 1 - active)) / h0)
            gate.data[:, 0] = col
            st[f"model.layers.{i}.mlp.gate_proj.weight"][:, 0] = col
            print(f"layer {i}: h0 {h0:.2f} +- {np.std(h[:, 0]):.3f}, bias {float(col) * h0:.3f}", flush=True)
            return orig(h, gate, up, down, act)

        engine_mod.swiglu = spy
        try:
            eng = engine_mod.Engine(ResidentWeights(Bundle(Path(td) / "b"), verify=False))
            eng.forward(ids, eng.new_cache(len(ids)))
        finally:
            engine_mod.swiglu = orig
    save_file(st, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def e2e(a) -> None:
    """Sparse ReLU Llama -> int8 bundles (matrix and bundled FFN layout) -> ``edgespool bench`` of both under one
    budget (``--rig`` profile): bytes read per token, decode tok/s, neuron window statistics."""
    import subprocess

    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model, open_source
    from edgespool.runtime.bundle.reader import Bundle
    from edgespool.schedulers.memory_plan import minimum_budget
    from edgespool.units import fmt_bytes

    work = Path(a.e2e)
    work.mkdir(parents=True, exist_ok=True)
    hf = write_sparse_relu_llama(work / "hf-relu", a.active)
    bundles = {}
    for layout in ("matrix", "bundled"):
        b = work / f"relu-int8-{layout}.bundle"
        if not (b / "manifest.json").exists():
            export_model(open_source(hf), b, policy=QuantPolicy(quant="int8"), overwrite=True, onnx=False,
                         kernels=False, progress=False, ffn_layout=layout)
        bundles[layout] = b
    cap = float(a.neuron_capacity)
    cap = int(cap) if cap > 1 else cap
    P = 16
    budget = a.budget or str(int(1.1 * minimum_budget(Bundle(bundles["bundled"]), None, neuron_capacity=cap,
                                                      max_context=P + a.n, max_batch_tokens=P)))
    rows = []
    for layout, b in bundles.items():
        cmd = [sys.executable, "-m", "edgespool", "bench", str(b), "--memory-budget", budget, "-n", str(a.n),
               "--prompt-tokens", str(P), "--json", "--neuron-capacity", str(a.neuron_capacity)]
        if a.rig:
            cmd += ["--rig", a.rig]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(r.stdout[-2000:], r.stderr[-4000:])
            raise SystemExit(f"bench of {layout} failed")
        res = json.loads(r.stdout)
        rows.append((layout, Bundle(b).weights_nbytes, res))
        (work / f"bench-{layout}.json").write_text(json.dumps(res, indent=1, default=str))
        print(f"{layout}: {res['decode_tok_s']:.2f} tok/s, {res['bytes_read_per_token'] / 2**20:.1f} MiB/token",
              flush=True)
    md = [f"Sparse ReLU Llama (hidden {E2E['hidden']}, {E2E['layers']} layers, FFN {E2E['inter']}, int8, target "
          f"{a.active:.0%} active), budget {fmt_bytes(int(budget))}, {a.n} tokens after a {P}-token prompt"
          + (f", rig {a.rig}" if a.rig else "") + ":", "",
          "| FFN layout | weights | decode tok/s | TTFT s | read/token | bound tok/s | of bound | active | "
          "reused | neuron reads/token | pinned layers | distinct tokens | peak cgroup (limit) | OOM |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for layout, nbytes, r in rows:
        nw = (r.get("neuron_window") or {}).get("decode") or {}
        sb = r.get("storage_bound") or {}
        plan = r.get("plan") or {}
        npin = sum(1 for g in plan.get("pinned_groups", []) if g.startswith("layers."))
        rig = r.get("rig") or {}
        reads = (f"{nw['reads'] / (a.n - 1):.0f}" if nw else "-")
        lim = next((x["display"] for x in rig.get("limits", []) if x["name"].startswith("mem")), "?")
        md.append(f"| {layout} | {fmt_bytes(nbytes)} | {r['decode_tok_s']:.2f} | {r['ttft_s']:.2f} | "
                  f"{fmt_bytes(r['bytes_read_per_token'])} | {sb.get('tok_s') or 0:.2f} | "
                  f"{100 * (sb.get('fraction_reached') or 0):.0f}% | "
                  + (f"{100 * nw['active_fraction']:.1f}% | {100 * nw['reuse']:.1f}% | " if nw else "- | - | ")
                  + f"{reads} | {npin} | {len(set(r['tokens']))} of {len(r['tokens'])} | "
                  f"{fmt_bytes(rig.get('peak_memory') or 0)} ({lim}) | {rig.get('oom_kills', '-')} |")
    text = "\n".join(md) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
