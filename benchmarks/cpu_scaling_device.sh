#!/bin/bash
# CPU-only thread scaling on the lent GPU machine's 16 cores (issue 12 item 1): edgespool `--quant keep` vs
# llama.cpp on the same GGUF, through benchmarks/resident_vs_llamacpp.py --real (interleaved rounds, medians).
#
# The real 1.1 GB GGUF cannot travel there (64 MiB a call), so the model is SIMULATED: random Q8_0 weights with the
# real Qwen2.5-Coder-1.5B's shapes, metadata and tokenizer (benchmarks/random_gguf.py; speed depends on shapes, not
# values; greedy tokens of random weights say nothing). llama.cpp is built there from the llama-cpp-python 0.3.36
# sdist's vendor/llama.cpp as a shared libllama (its defaults: GGML_NATIVE, repack, AMX where the CPU has it) and
# driven by that sdist's own llama_cpp Python package (LLAMA_CPP_LIB_PATH), exactly as on the dev machine.
#
# Prepare here, in the repo root (ignored folder .devcarry, see docs/BENCHMARKS.md issue 12 "16 cores"):
#   .devcarry/llama-cpu.tgz   vendor/llama.cpp without models/docs/tests/examples and the non-CPU backends
#   .devcarry/meta/           `python benchmarks/random_gguf.py meta QWEN1.5B.gguf` output (meta.gguf, tensors.json)
#   .devcarry/py/             the sdist's llama_cpp package and diskcache (pure Python)
# then run there (device tool, carry [".devcarry"]):  bash benchmarks/cpu_scaling_device.sh [THREADS] [RUNS]
set -u
THREADS=${1:-4,8,16}
RUNS=${2:-2}
PY=${PY:-python3}  # dry runs elsewhere: PY=/path/python LLAMA_LIB=prebuilt-libllama-dir DECODE=8 PROMPT=64 W=/tmp/x
DECODE=${DECODE:-64}
PROMPT=${PROMPT:-512}
C=$PWD/.devcarry
W=${W:-/tmp/cs}
OUTD=${OUT:-$W/out}
NAME=qwen2.5-coder-1.5b-simulated
mkdir -p "$W/pk" "$OUTD" "$HOME/.cache/edgespool/assets/$NAME"
ln -sfn "$PWD" "$W/pk/edgespool"
tar xzf "$C/llama-cpu.tgz" -C "$W" || exit 1
t0=$(date +%s)
[ -n "${LLAMA_LIB:-}" ] && echo 0 > "$W/build.rc" || ( cd "$W/llama.cpp" && cmake -S . -B build -G Ninja -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF \
    > "$OUTD/cmake.log" 2>&1 && cmake --build build -j"$(nproc)" --target llama > "$OUTD/build.log" 2>&1
  echo $? > "$W/build.rc" ) &
export PYTHONPATH=$W/pk:$C/py:$W/llama.cpp/gguf-py PYTHONUNBUFFERED=1
G=$HOME/.cache/edgespool/assets/$NAME/$NAME.Q8_0.gguf
"$PY" "$PWD/benchmarks/random_gguf.py" write "$C/meta" "$W/llama.cpp/gguf-py" "$G" 0.0002 || exit 1
echo "gguf written after $(( $(date +%s) - t0 )) s"
wait
if [ "$(cat "$W/build.rc")" != 0 ]; then tail -30 "$OUTD/build.log" "$OUTD/cmake.log"; exit 1; fi
echo "libllama built after $(( $(date +%s) - t0 )) s"
L=${LLAMA_LIB:-$W/llama.cpp/build/bin}
export LLAMA_CPP_LIB_PATH=$L LD_LIBRARY_PATH=$L:${LD_LIBRARY_PATH:-}
lscpu | grep -E "Model name|^CPU\(s\)|L2|L3|Flags" | cut -c1-400 > "$OUTD/lscpu.txt"
"$PY" -m edgespool.benchmarks.resident_vs_llamacpp --real "$NAME" --systems "llama.cpp file,edgespool keep" \
  --threads "$THREADS" --runs "$RUNS" --decode "$DECODE" --prompt "$PROMPT" --kernel-iters 0 --work "$W/rvl" \
  --json "$OUTD/cpu_scaling.json"
echo "done after $(( $(date +%s) - t0 )) s"
