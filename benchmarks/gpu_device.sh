#!/bin/bash
# CPU/GPU split on the lent GPU machine (issue 17): GPU tests, the fused-kernel bench, and gpu_split_bench against
# llama.cpp built there with CUDA (sm_90) on the same SIMULATED GGUF.
#
# The real GGUF cannot travel there (64 MiB a call), so the model is SIMULATED: random Q8_0 weights with the real
# Qwen2.5-Coder-1.5B's shapes, metadata and tokenizer (benchmarks/random_gguf.py); edgespool runs its int8 export.
# Prepare here, in the repo root (ignored folder .devcarry):
#   .devcarry/llama-cuda.tgz  vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist without models/docs/tests/
#                             examples and the non-CPU, non-CUDA backends
#   .devcarry/meta/           `python benchmarks/random_gguf.py meta QWEN1.5B.gguf` output
#   .devcarry/gguf-py/        the gguf package
# then there (device tool, carry [".devcarry"]):
#   bash benchmarks/gpu_device.sh quick     GPU tests + kernel bench + edgespool rows of a synthetic export
#   bash benchmarks/gpu_device.sh peer      llama.cpp CUDA build + the same GGUF for both + the full table
#   (peer: AB= drops the unfused A/B rows; extra arguments go to gpu_split_bench, e.g. --llama-accounting)
#   MOE=1 bash benchmarks/gpu_device.sh peer --moe   the same on a SIMULATED Mixtral-style MoE with Qwen's real
#                             vocabulary (.devcarry/moe-meta/: `python benchmarks/random_gguf.py moe-meta
#                             QWEN1.5B.gguf .devcarry/moe-meta 16 1024 1408 8 2`), llama.cpp also with --n-cpu-moe
#                             (TESTS=0 skips the GPU tests; PREFILL=1 adds benchmarks/gpu_prefill_bench.py, the
#                             tensor-core prefill A/B, while llama.cpp builds)
set -u
MODE=${1:-quick}
shift || true
C=$PWD/.devcarry
W=${W:-/tmp/gd}
OUTD=${OUT:-$W/out}
PY=${PY:-python3}
mkdir -p "$W/pk" "$OUTD"
ln -sfn "$PWD" "$W/pk/edgespool"
export PYTHONPATH=$W/pk:$C/gguf-py PYTHONUNBUFFERED=1
REPO=$PWD
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUTD/gpu.txt" 2>&1
lscpu > "$OUTD/lscpu.txt"
if [ "$MODE" = peer ]; then
  if [ -x "$W/llama.cpp/build/bin/llama-bench" ]; then echo 0 > "$W/build.rc"  # a warm machine's earlier build
  else tar xzf "$C/llama-cuda.tgz" -C "$W" || exit 1
  ( cd "$W/llama.cpp" && cmake -S . -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF \
      -DLLAMA_CURL=OFF > "$OUTD/cmake.log" 2>&1 \
    && cmake --build build -j"$(nproc)" --target llama-bench llama-quantize > "$OUTD/build.log" 2>&1; echo $? > "$W/build.rc" ) &
  fi
  if [ "${MOE:-0}" = 1 ]; then G=$W/mixtral-style-simulated.Q8_0.gguf; META=$C/moe-meta
  else G=$W/qwen2.5-coder-1.5b-simulated.Q8_0.gguf; META=$C/meta; fi
  "$PY" "$REPO/benchmarks/random_gguf.py" write "$META" "$C/gguf-py" "$G" 0.0002 || exit 1
  echo "gguf written after $(( $(date +%s) - t0 )) s"
  if [ "${TESTS:-1}" = 1 ]; then
    ( cd /tmp && timeout "${T_TESTS:-240}" "$PY" -m pytest -q -p no:cacheprovider -rf --tb=short \
        "$REPO/tests/test_gpu_fused.py" "$REPO/tests/test_gpu_split.py" > "$OUTD/tests.log" 2>&1
      echo "tests rc=$?" >> "$OUTD/tests.log" )
    echo "tests after $(( $(date +%s) - t0 )) s:"; grep -E "^(FAILED|ERROR)|^E  " "$OUTD/tests.log" | cut -c1-300 | head -30
    tail -2 "$OUTD/tests.log"
  fi
  if [ "${PREFILL:-0}" = 1 ]; then  # the prefill A/B (split-f16 tensor cores vs f32 SGEMM) while llama.cpp builds;
    # it exports the bundle the split bench below reuses ($W/g/bundle); the build loads the CPU, so its absolute
    # figures are the A/B's, the clean prefill rows are the split bench's
    timeout "${T_PREFILL:-200}" "$PY" -m edgespool.benchmarks.gpu_prefill_bench --out "$W/g${MOE:-}" --gguf "$G" \
      --tokens 64,256,512 --reps 3 --json-out "$OUTD/prefill.json" > "$OUTD/prefill.log" 2>&1
    echo "prefill bench rc=$? after $(( $(date +%s) - t0 )) s"
    grep '"tokens"' "$OUTD/prefill.log" | grep -v product | cut -c1-600
    grep -A14 "cProfile, one 64-token prefill, graphs" "$OUTD/prefill.log" | tail -10 | cut -c1-160
  fi
  wait
  if [ "$(cat "$W/build.rc")" != 0 ]; then tail -30 "$OUTD/build.log" "$OUTD/cmake.log"; exit 1; fi
  echo "llama-bench built after $(( $(date +%s) - t0 )) s"
  "$PY" -m edgespool.benchmarks.gpu_split_bench --out "$W/g${MOE:-}" --gguf "$G" \
    --llama-bench "$W/llama.cpp/build/bin/llama-bench" --reps 2 -n 16 --kernels ${AB---fused-ab} \
    --json-out "$OUTD/split.json" "$@" > "$OUTD/split.log" 2>&1
  echo "split bench rc=$? after $(( $(date +%s) - t0 )) s"
  tail -12 "$OUTD/split.log"
else
  ( cd /tmp && "$PY" -m pytest -q -p no:cacheprovider "$REPO/tests/test_gpu_fused.py" "$REPO/tests/test_gpu_split.py" \
      > "$OUTD/tests.log" 2>&1; echo "tests rc=$?" >> "$OUTD/tests.log" )
  tail -3 "$OUTD/tests.log"
  echo "tests done after $(( $(date +%s) - t0 )) s"
  "$PY" -m edgespool.benchmarks.gpu_kernel_bench --json-out "$OUTD/kernels.json" > "$OUTD/kernels.log" 2>&1
  echo "kernel bench rc=$? after $(( $(date +%s) - t0 )) s"
  cat "$OUTD/kernels.log" | cut -c1-1500
  "$PY" -m edgespool.benchmarks.gpu_split_bench --out "$W/g" --reps 2 -n 16 --kernels --fused-ab --caps 1.0,0.5 \
    --json-out "$OUTD/split.json" "$@" > "$OUTD/split.log" 2>&1
  echo "split bench rc=$? after $(( $(date +%s) - t0 )) s"
  tail -8 "$OUTD/split.log"
fi
echo "done after $(( $(date +%s) - t0 )) s"
