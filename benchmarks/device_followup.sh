#!/bin/bash
# A short follow-up device call (prepared as benchmarks/device_batch.sh says; carry [".devcarry"]) after a first
# call found something to check: (1) the GPU tests of the tensor-core prefill products with their failure lines,
# (2) the CPU-only rows vs llama-bench at THREADS, ROUNDS interleaved rounds (benchmarks/cpu_scaling_device.sh),
# (3) the GPU prefill A/B (benchmarks/gpu_prefill_bench.py) on the same SIMULATED 1.5B GGUF. Only console.log and
# two JSON files go to $OUT (the device tool returns a limited number of files); the rest stays in $W.
set -u
THREADS=${1:-16,8,4,1}
R=$PWD
W=/tmp/fu
OUTD=${OUT:-$W/out}
mkdir -p "$W/pk" "$OUTD"
ln -sfn "$R" "$W/pk/edgespool"
t0=$(date +%s)
( cd /tmp && PYTHONPATH=$W/pk:$R/.devcarry/gguf-py timeout "${T_TESTS:-120}" python3 -m pytest -q -p no:cacheprovider \
    -rf --tb=short -k "tensor_core or split16 or query_blocks or gpu_linear or split_run" "$R/tests/test_gpu_split.py" \
    > "$W/tests.log" 2>&1 )
echo "1. GPU tests after $(( $(date +%s) - t0 )) s:"; grep -E "^(FAILED|E  )|passed|failed" "$W/tests.log" | head -40
ROUNDS=${ROUNDS:-2} OUT=$W/cs timeout "${T_CPU:-300}" bash "$R/benchmarks/cpu_scaling_device.sh" "$THREADS" 1 \
  > "$W/scaling.log" 2>&1
echo "2. CPU rows rc=$? after $(( $(date +%s) - t0 )) s"; grep -E "^cpu:|^\||interleaved|^threads" "$W/scaling.log"
cp "$W/cs/edgespool.1.json" "$OUTD/edgespool.1.json" 2>/dev/null
G=$HOME/.cache/edgespool/assets/qwen2.5-coder-1.5b-simulated/qwen2.5-coder-1.5b-simulated.Q8_0.gguf
PYTHONPATH=$W/pk:$R/.devcarry/gguf-py PYTHONUNBUFFERED=1 timeout "${T_PREFILL:-150}" python3 -m \
  edgespool.benchmarks.gpu_prefill_bench --out "$W/g" --gguf "$G" --tokens 64,512 --reps 3 \
  --json-out "$OUTD/prefill.json" > "$W/prefill.log" 2>&1
echo "3. prefill bench rc=$? after $(( $(date +%s) - t0 )) s"
grep -E '^\{"tokens"|"product"' "$W/prefill.log" | cut -c1-260
grep -A12 "cProfile, one 64-token prefill, split_f16" "$W/prefill.log" | tail -9
