#!/bin/bash
# CPU-only thread scaling on the lent GPU machine's 16 cores (issue 12 item 1): edgespool `--quant keep` vs
# llama.cpp's llama-bench on the same GGUF (edgespool through benchmarks/resident_vs_llamacpp.py --real, medians).
#
# The real 1.1 GB GGUF cannot travel there (64 MiB a call), so the model is SIMULATED: random Q8_0 weights with the
# real Qwen2.5-Coder-1.5B's shapes, metadata and tokenizer (benchmarks/random_gguf.py; speed depends on shapes, not
# values; greedy tokens of random weights say nothing). llama.cpp is built there from the llama-cpp-python 0.3.36
# sdist's vendor/llama.cpp (GGML_NATIVE; CMAKE_EXTRA adds options, e.g. -DGGML_AMX=OFF) and measured with its own
# llama-bench (-p 512 -n 64 -r RUNS): the sdist's llama_cpp Python binding on a libllama built there segfaulted
# while loading the model (2026-12-03), so the two systems are timed by their own tools, one block after the other
# (not interleaved): llama-bench's tg64 runs from an empty context, edgespool's decode after a short prompt.
#
# Prepare here, in the repo root (ignored folder .devcarry, see docs/BENCHMARKS.md issue 12 "16 cores"):
#   .devcarry/llama-cpu.tgz   vendor/llama.cpp without models/docs/tests/examples and the non-CPU backends
#   .devcarry/meta/           `python benchmarks/random_gguf.py meta QWEN1.5B.gguf` output (meta.gguf, tensors.json)
# then run there (device tool, carry [".devcarry"]):  [ROUNDS=N] bash benchmarks/cpu_scaling_device.sh [THREADS] [RUNS]
# MODEL=smollm2-135m (a real model of `edgespool fetch`, joined there first by benchmarks/gpu_real_device.sh stash +
# join over two calls to one warm machine) runs that file instead of the SIMULATED 1.5B (no .devcarry/meta needed).
# FORM_AB=1 also runs edgespool with EDGESPOOL_DECODE_FORM=1 each round (one-stream decode tiles forced vs the
# host's choice, kernels/decode_form.py), and the log lists the forms chosen.
# FUSED_AB=1 also runs edgespool with EDGESPOOL_FUSED_DECODE=0 each round (decode with / without the C layer call).
# SPLIT=1 adds `edgespool bench` at each thread count (its per-op split of a decode step) and
# benchmarks/prefill_profile.py (a cProfile of one prefill at each thread count).
# NOREPACK=1 adds one diagnostic llama-bench run with --repack 0 (no extra buffer types: no CPU repack, no AMX).
# AMX_AB=1 runs tests/test_blockpack_amx.py first (AMX q8_0 / int8 prefill tiles bit-identical to the AVX-512 ones)
# and each round edgespool once more with EDGESPOOL_AMX=1 (the AMX tiles are opt-in: prefill with / without them).
# KERNEL_AB=1 adds the kernel-level A/B of the decode tile forms (benchmarks/block_kernel_scaling.py --packed, 1.5B
# shapes): the pre-2026-12-07 interleaved row-group streams + 2 KiB prefetch vs today's one stream + 6 KiB, which
# was measured on Zen 4 only.
set -u
THREADS=${1:-4,8,16}
RUNS=${2:-2}
PY=${PY:-python3}  # dry runs elsewhere: PY=/path/python DECODE=8 PROMPT=64 W=/tmp/x
DECODE=${DECODE:-64}
PROMPT=${PROMPT:-512}
C=$PWD/.devcarry
W=${W:-/tmp/cs}
OUTD=${OUT:-$W/out}
NAME=${MODEL:-qwen2.5-coder-1.5b-simulated}
mkdir -p "$W/pk" "$OUTD" "$HOME/.cache/edgespool/assets/$NAME"
ln -sfn "$PWD" "$W/pk/edgespool"
tar xzf "$C/llama-cpu.tgz" -C "$W" || exit 1
t0=$(date +%s)
export PYTHONPATH=$W/pk:$W/llama.cpp/gguf-py PYTHONUNBUFFERED=1 EDGESPOOL_LLAMACPP_EXTRA_BUFTS=0
if [ -n "${MODEL:-}" ]; then  # a REAL model of `edgespool fetch`, joined on this machine first
  # (bash benchmarks/gpu_real_device.sh stash, then join: the file is over one call's 64 MiB)
  REL=$("$PY" -c "from edgespool.apps.assets import get_asset; a = get_asset('$MODEL'); print(a.name + '/' + a.filename)") || exit 1
  mkdir -p "$(dirname "$HOME/.cache/edgespool/assets/$REL")"
  cp /tmp/real-gguf/model.gguf "$HOME/.cache/edgespool/assets/$REL" || exit 1
fi
( cd "$W/llama.cpp" && cmake -S . -B build -G Ninja -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF ${CMAKE_EXTRA:-} > "$OUTD/cmake.log" 2>&1 \
  && cmake --build build -j"$(nproc)" --target llama-bench > "$OUTD/build.log" 2>&1; echo $? > "$W/build.rc" ) &
if [ -n "${MODEL:-}" ]; then G=$HOME/.cache/edgespool/assets/$REL
else G=$HOME/.cache/edgespool/assets/$NAME/$NAME.Q8_0.gguf
  "$PY" "$PWD/benchmarks/random_gguf.py" write "$C/meta" "$W/llama.cpp/gguf-py" "$G" 0.0002 || exit 1
fi
wait
if [ "$(cat "$W/build.rc")" != 0 ]; then tail -30 "$OUTD/build.log" "$OUTD/cmake.log"; exit 1; fi
echo "gguf written, llama-bench built after $(( $(date +%s) - t0 )) s"
lscpu > "$OUTD/lscpu.txt"
# the CPU in the log itself (the device tool returns only a few files of $OUT): model, and the int8 matrix units
# llama.cpp may use there (AMX tiles explain its prefill on the H100 host, docs/BENCHMARKS.md issue 12)
echo "cpu: $(grep -m1 'Model name' "$OUTD/lscpu.txt" | sed 's/.*: *//'); $(grep -o -w -E 'amx_int8|amx_tile|avx512_vnni|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')"
# ROUNDS rounds, interleaved: llama-bench (RUNS repetitions) then edgespool (RUNS runs), again and again; the table
# takes medians over the rounds of each system's per-round figure (llama-bench's avg, edgespool's median)
ROUNDS=${ROUNDS:-1}
if [ "${AMX_AB:-0}" = 1 ]; then
  R=$PWD; ( cd /tmp && timeout 300 "$PY" -m pytest -q -p no:cacheprovider -rs "$R/tests/test_blockpack_amx.py" \
      > "$OUTD/amx_tests.log" 2>&1 )
  echo "AMX tests: $(tail -1 "$OUTD/amx_tests.log")"; grep -E "^E |SKIPPED|Error" "$OUTD/amx_tests.log" | head -8
fi
for r in $(seq 1 "$ROUNDS"); do
  "$W/llama.cpp/build/bin/llama-bench" -m "$G" -t "$THREADS" -p "$PROMPT" -n "$DECODE" -r "$RUNS" -o json \
    > "$OUTD/llama_bench.$r.json" || exit 1
  # edgespool only (no llama.cpp child: its rows come from llama-bench above); the keep bundle is exported once
  "$PY" -m edgespool.benchmarks.resident_vs_llamacpp --real "$NAME" --systems "edgespool keep" \
    --threads "$THREADS" --runs "$RUNS" --decode "$DECODE" --prompt "$PROMPT" --kernel-iters 0 --work "$W/rvl" \
    --json "$OUTD/edgespool.$r.json" > /dev/null
  if [ "${AMX_AB:-0}" = 1 ]; then  # the same runs with the AMX prefill tiles on (opt-in; default: AVX-512 VNNI)
    EDGESPOOL_AMX=1 "$PY" -m edgespool.benchmarks.resident_vs_llamacpp --real "$NAME" --systems "edgespool keep" \
      --threads "$THREADS" --runs "$RUNS" --decode "$DECODE" --prompt "$PROMPT" --kernel-iters 0 --work "$W/rvl" \
      --json "$OUTD/edgespool_amx.$r.json" > /dev/null
  fi
  if [ "${FORM_AB:-0}" = 1 ]; then  # the A/B: the same runs with the one-stream decode tiles forced (the default
    # before kernels/decode_form.py chose the form per host; the runs above use the host's choice)
    EDGESPOOL_DECODE_FORM=1 "$PY" -m edgespool.benchmarks.resident_vs_llamacpp --real "$NAME" \
      --systems "edgespool keep" --threads "$THREADS" --runs "$RUNS" --decode "$DECODE" --prompt "$PROMPT" \
      --kernel-iters 0 --work "$W/rvl" --json "$OUTD/edgespool_form1.$r.json" > /dev/null
  fi
  if [ "${FUSED_AB:-0}" = 1 ]; then  # the A/B: the same runs with the per-layer C decode call switched off
    EDGESPOOL_FUSED_DECODE=0 "$PY" -m edgespool.benchmarks.resident_vs_llamacpp --real "$NAME" \
      --systems "edgespool keep" --threads "$THREADS" --runs "$RUNS" --decode "$DECODE" --prompt "$PROMPT" \
      --kernel-iters 0 --work "$W/rvl" --json "$OUTD/edgespool_unfused.$r.json" > /dev/null
  fi
done
if [ "${NOREPACK:-0}" = 1 ]; then  # a diagnostic row, not the peer's figure: llama.cpp without its extra buffer
  # types (CPU repacking, AMX tiles on a Sapphire Rapids host): says what of its prefill lead they make
  "$W/llama.cpp/build/bin/llama-bench" -m "$G" -t "$THREADS" -p "$PROMPT" -n "$DECODE" -r "$RUNS" --repack 0 -o json \
    > "$OUTD/llama_bench_norepack.json" && "$PY" -c "
import json,sys
for x in json.load(open(sys.argv[1])): print('llama-bench --repack 0 (diagnostic): threads', x['n_threads'], 'pp' if x['n_prompt'] else 'tg', round(x['avg_ts'], 1))
" "$OUTD/llama_bench_norepack.json"
  grep -o "AMX[A-Z_0-9]* = 1\|amx[a-z_0-9]*" "$OUTD/lscpu.txt" | sort -u | tr '\n' ' '; echo
fi
if [ "${SPLIT:-0}" = 1 ]; then  # where a step's time goes at each thread count: `edgespool bench`'s per-op split of
  # decode steps (Python layers, each kernel call timed) and its own prefill / decode figures
  for t in ${THREADS//,/ }; do
    EDGESPOOL_THREADS=$t "$PY" -m edgespool bench "$W/rvl/$NAME/bundle_keep" --prompt-tokens "$PROMPT" -n 16 \
      --json-out "$OUTD/bench_split.$t.json" > /dev/null 2>&1
    "$PY" -c "
import json,sys
d=json.load(open(sys.argv[1])); s=d.get('op_split') or {}
print('edgespool bench threads', sys.argv[2], 'prefill', round(d['prefill_tok_s'],1), 'decode', round(d['decode_tok_s'],1),
      'split ms/step:', {k: round(v['ms_per_step'],2) for k,v in (s.get('ops') or {}).items()})
" "$OUTD/bench_split.$t.json" "$t"
  done
  "$PY" "$PWD/benchmarks/prefill_profile.py" "$W/rvl/$NAME/bundle_keep" --threads "$THREADS" --prompt "$PROMPT" \
    --json-out "$OUTD/prefill_profile.json" > "$OUTD/prefill_profile.txt" 2>&1
  grep -A6 "^threads" "$OUTD/prefill_profile.txt"
fi
if [ "${KERNEL_AB:-0}" = 1 ]; then
  for cf in "-DES_PK_DG=4 -DES_Q6_DG=4 -DES_PF_BYTES=2048" ""; do
    echo "kernel A/B ${cf:-(the defaults)}:"
    "$PY" "$PWD/benchmarks/block_kernel_scaling.py" --model qwen2.5-coder-1.5b --threads "$THREADS" \
      --formats q8_0,q4_k,q6_k --packed --prompt 16 --cflags="$cf" 2>&1 | grep -o '"format": "[^"]*"\|"threads": [0-9]*\|"decode_GBps": [0-9.]*' | paste - - -
  done
fi
"$PY" - "$OUTD" "$ROUNDS" <<'PYEOF'
import json, statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
ll, es = {}, {}
for r in range(1, n + 1):
    for x in json.load(open(f"{d}/llama_bench.{r}.json")):
        ll.setdefault((x["n_threads"], "decode" if x["n_gen"] else "prefill"), []).append(x["avg_ts"])
    for x in json.load(open(f"{d}/edgespool.{r}.json"))["results"]:
        es.setdefault((x["threads"], "decode"), []).append(statistics.median(x["decode_tok_s"]))
        es.setdefault((x["threads"], "prefill"), []).append(statistics.median(x["prefill_tok_s"]))
med = {k: statistics.median(v) for k, v in ll.items()}
def ab_runs(name, key):
    """threads -> per-round medians of `key` from the A/B runs {name}.{round}.json (none: not asked for)"""
    got = {}
    for r in range(1, n + 1):
        try:
            rows = json.load(open(f"{d}/{name}.{r}.json"))["results"]
        except FileNotFoundError:
            break
        for x in rows:
            got.setdefault(x["threads"], []).append(statistics.median(x[key]))
    return got
off = ab_runs("edgespool_unfused", "decode_tok_s")  # FUSED_AB=1: the runs with EDGESPOOL_FUSED_DECODE=0
print(f"{n} interleaved round(s); per-round figures in brackets")
print("| threads | edgespool keep decode | llama.cpp tg | ratio | edgespool prefill | llama.cpp pp | ratio |")
print("|---|---|---|---|---|---|---|")
for t in sorted({k[0] for k in es}, reverse=True):
    row = [str(t)]
    for what in ("decode", "prefill"):
        e, l = statistics.median(es[(t, what)]), med[(t, what)]
        fmt = lambda v: "/".join(f"{x:.1f}" for x in v)
        row += [f"{e:.1f} ({fmt(es[(t, what)])})", f"{l:.1f} ({fmt(ll[(t, what)])})", f"{e / l:.2f}x"]
    print("| " + " | ".join(row) + " |")
amx = ab_runs("edgespool_amx", "prefill_tok_s")  # AMX_AB=1: the runs with EDGESPOOL_AMX=1
for t in sorted(amx, reverse=True):
    e, o = statistics.median(amx[t]), statistics.median(es[(t, "prefill")])
    print(f"threads {t}: prefill with the AMX tiles (EDGESPOOL_AMX=1) {e:.1f} tok/s, without {o:.1f}: {e / o:.2f}x")
one = ab_runs("edgespool_form1", "decode_tok_s")  # FORM_AB=1: the runs with EDGESPOOL_DECODE_FORM=1
for t in sorted(one, reverse=True):
    e, o = statistics.median(es[(t, "decode")]), statistics.median(one[t])
    print(f"threads {t}: decode with the host's decode forms {e:.1f} tok/s, one-stream forced {o:.1f} "
          f"({'/'.join(f'{x:.1f}' for x in one[t])}): {e / o:.2f}x")
for t in sorted(off, reverse=True):
    e, o = statistics.median(es[(t, "decode")]), statistics.median(off[t])
    print(f"threads {t}: decode with the C decoder layer {e:.1f} tok/s, without {o:.1f} "
          f"({'/'.join(f'{x:.1f}' for x in off[t])}): {e / o:.2f}x")
PYEOF
# the decode forms this host chose (kernels/decode_form.py; measured in the first run at each thread count)
"$PY" -c "
import json, pathlib
p = pathlib.Path.home() / '.cache/edgespool/kernels/decode-forms.json'
for k, v in sorted(json.loads(p.read_text()).items() if p.exists() else []):
    print('decode form', k.split('|', 3)[3], '->', v['form'], v['ms'])
"
echo "done after $(( $(date +%s) - t0 )) s"
