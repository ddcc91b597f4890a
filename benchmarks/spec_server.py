"""llama.cpp's llama-server as spec_bench's peer (issue 16): its speculation flags per system, the child that runs
it inside the rig, and the draft GGUF with a Q4_0 output head (llama-quantize), llama.cpp's counterpart of
edgespool's ``--head-bits 4`` draft."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path


def server_spec_args(kind: str, k: int, draft: str) -> list[str]:
    """llama-server's speculation flags for system ``kind``: ``-plain``: none (its plain decode); ``-draft`` /
    ``-draft-head4``: the draft model (``-md``, draft-simple, at most k tokens; the caller passes the draft GGUF of
    the variant); ``-ngram``: ngram-simple at its defaults (12-token lookup, 48-token drafts: k does not apply);
    ``-ngramk``: ngram-simple shaped as edgespool's lookup (3-token lookup, k-token drafts); ``-ngram-map-k``:
    ngram-map-k at its defaults."""
    base = kind.removesuffix("-norepack")
    if base == "llama-server-plain":
        return []
    if base in ("llama-server-draft", "llama-server-draft-head4"):
        return ["-md", draft, "--spec-type", "draft-simple", "--spec-draft-n-max", str(k)]
    if base == "llama-server-ngram":
        return ["--spec-type", "ngram-simple"]
    if base == "llama-server-ngramk":
        return ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3", "--spec-ngram-simple-size-m",
                str(k)]
    if base == "llama-server-ngram-map-k":
        return ["--spec-type", "ngram-map-k"]
    raise SystemExit(f"unknown llama-server system {kind!r} (llama-server-plain|draft|draft-head4|ngram|ngramk|"
                     "ngram-map-k[-norepack])")


def head4_gguf(gguf: Path, work: Path, quantize_bin: Path) -> Path:
    """``gguf`` with its output head re-quantized to Q4_0 (int4, 32-weight groups, an f16 scale each: the GGUF
    counterpart of edgespool's ``--head-bits 4``), every other tensor copied as stored: ``llama-quantize
    --allow-requantize --output-tensor-type q4_0 --tensor-type ^NAME$=TYPE ... IN OUT Q4_K_M`` with every other
    quantized tensor pinned to its stored type (llama.cpp's Q4_K_M recipe would place the Q6_K / Q8_0 layers
    differently from the shipped file; a tensor kept at its type is copied, not re-quantized). Checked with
    gguf-py: only ``output.weight`` differs, and it is Q4_0. Reused when there."""
    from gguf import GGUFReader

    out = work / f"{gguf.stem}-head-q4_0.gguf"
    if out.exists():
        return out
    tmp = out.with_suffix(".tmp")
    log = work / f"{out.name}.log"
    orig = {t.name: t.tensor_type.name for t in GGUFReader(str(gguf)).tensors}
    pins = [a for n, ty in sorted(orig.items()) if n != "output.weight" and ty not in ("F32", "F16", "BF16")
            for a in ("--tensor-type", "^" + n.replace(".", "\\.") + f"$={ty.lower()}")]
    with open(log, "w") as f:
        subprocess.run([str(quantize_bin), "--allow-requantize", "--output-tensor-type", "q4_0", *pins, str(gguf),
                        str(tmp), "Q4_K_M"], check=True, stdout=f, stderr=subprocess.STDOUT)
    new = {t.name: t.tensor_type.name for t in GGUFReader(str(tmp)).tensors}
    changed = {n: (orig[n], new.get(n)) for n in orig if orig[n] != new.get(n) and n != "output.weight"}
    if changed or new.get("output.weight") != "Q4_0":
        raise SystemExit(f"{tmp}: llama-quantize changed more than the head: {changed} (log {log})")
    tmp.rename(out)
    return out


def server_child(kind: str, gguf: str, out: str, N: int, ids: list[int], k: int, draft: str, res: dict) -> None:
    """llama.cpp's llama-server (binary from $LLAMA_SERVER) started by this child, so inside the same rig cgroup,
    with its defaults plus ``-md DRAFT --spec-type draft-simple --spec-draft-n-max k`` (without --spec-type the draft is loaded but never used) (llama-server-draft) or ``--spec-type ngram-simple``
    (llama-server-ngram); one streamed greedy /completion of the prompt ids; tok/s from the client's chunk times
    (as the other rows) and the server's own ``timings`` (predicted tok/s, draft_n, draft_n_accepted)."""
    import http.client

    from edgespool.benchmarks.serve_bench import free_port, get
    from edgespool.benchmarks.spec_bench import _timed_stream, save_json
    from edgespool.benchmarks.stream_bench import _io_read_bytes

    port = free_port()
    cmd = [os.environ["LLAMA_SERVER"], "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-c",
           str(len(ids) + N + 16), "-t", str(len(os.sched_getaffinity(0))), "--no-webui"]
    cmd += server_spec_args(kind, k, draft)
    if kind.endswith("-norepack"):  # weights stay in the mmap (x86 repacks them into anonymous buffers by default)
        cmd.append("--no-repack")
    res["llamacpp_config"] = " ".join(Path(c).name if "/" in c else c for c in cmd)
    log = open(out + ".server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        t_ready = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"llama-server exited with {proc.returncode} (log {out}.server.log)")
            try:
                if get(port, "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        res["server_ready_s"] = time.perf_counter() - t_ready
        body = json.dumps({"prompt": ids, "n_predict": N, "temperature": 0.0, "top_k": 1, "stream": True,
                           "cache_prompt": False})
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
        c.request("POST", "/completion", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        final: dict = {}

        def server_read() -> int:  # the server's own storage reads (/proc/PID/io), not this client's
            with open(f"/proc/{proc.pid}/io") as f:
                return next(int(x.split()[1]) for x in f if x.startswith("read_bytes:"))

        rb: list[int] = []

        def chunks():  # one item per streamed content chunk (a chunk may carry several accepted tokens)
            nonlocal final
            for line in r:
                if not rb:
                    rb.append(server_read())
                line = line.strip()
                if not line.startswith(b"data: "):
                    continue
                d = json.loads(line[6:])
                if d.get("stop"):
                    final = d
                    return
                # the server's reads so far: a run cut by its time limit still reports its bytes per token
                res["server_decode_read_bytes"] = server_read() - rb[0]
                yield d

        r0 = _io_read_bytes()
        _timed_stream(chunks(), res, out, r0)
        if rb:
            res["decode_read_bytes"] = server_read() - rb[0]
        tm = final.get("timings") or {}
        res["server_timings"] = tm
        n = int(tm.get("predicted_n") or final.get("tokens_predicted") or 0)
        if n:  # tokens generated after the first (the others' decode_tokens), timed client-side from chunk 1
            res["decode_tokens"] = n - 1
        drafted, acc = int(tm.get("draft_n") or 0), int(tm.get("draft_n_accepted") or 0)
        res["speculative"] = {"drafted": drafted, "accepted": acc,
                              "acceptance_rate": acc / drafted if drafted else 0.0,
                              "source": "llama-server timings"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    from edgespool.units import peak_rss_bytes

    res["decode_tok_s"] = res["decode_tokens"] / res["decode_s"] if res.get("decode_s") else 0.0
    res["bytes_read_per_token"] = res["decode_read_bytes"] / max(1, res["decode_tokens"])
    res["vm_hwm"] = peak_rss_bytes()
    save_json(out, res)
