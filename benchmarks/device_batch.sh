#!/bin/bash
# One device call that covers the most (for a session whose device time allows a single call): on the lent GPU
# machine (device tool, carry [".devcarry"], prepared as benchmarks/gpu_device.sh and cpu_scaling_device.sh say):
#   1. the MoE / zero-copy GPU tests (tests/test_gpu_split.py -k "moe or zero_copy or experts")
#   2. edgespool alone on the SIMULATED Mixtral-style MoE GGUF under GPU caps (gpu_split_bench --moe, no llama.cpp
#      peer: its CUDA build alone takes ~250 s; `MOE=1 bash benchmarks/gpu_device.sh peer --moe` is the full table)
#   3. CPU-only thread scaling vs llama-bench with the per-op split and the prefill profile, the AMX tests and
#      A/B, the decode-tile A/B (`SPLIT=1 NOREPACK=1 AMX_AB=1 KERNEL_AB=1 bash benchmarks/cpu_scaling_device.sh THREADS 1`)
# Each step has its own time limit, so a slow step leaves the others their share; logs go to $OUT.
set -u
THREADS=${1:-16,4,1}
R=$PWD
OUTD=${OUT:-/tmp/db/out}
W=/tmp/db
mkdir -p "$W/pk" "$OUTD"
ln -sfn "$R" "$W/pk/edgespool"
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUTD/gpu.txt" 2>&1
( cd /tmp && PYTHONPATH=$W/pk timeout "${T_TESTS:-150}" python3 -m pytest -q -p no:cacheprovider -rf \
    -k "moe or zero_copy or experts" "$R/tests/test_gpu_split.py" > "$OUTD/gputests.log" 2>&1 )
echo "1. GPU tests: $(tail -1 "$OUTD/gputests.log") after $(( $(date +%s) - t0 )) s"
PYTHONPATH=$W/pk:$R/.devcarry/gguf-py python3 "$R/benchmarks/random_gguf.py" write "$R/.devcarry/moe-meta" \
  "$R/.devcarry/gguf-py" "$W/mixtral-style-simulated.Q8_0.gguf" 0.0002 > /dev/null \
  && PYTHONPATH=$W/pk:$R/.devcarry/gguf-py PYTHONUNBUFFERED=1 timeout "${T_MOE:-170}" python3 -m \
    edgespool.benchmarks.gpu_split_bench --out "$W/gm" --gguf "$W/mixtral-style-simulated.Q8_0.gguf" --reps 2 -n 16 \
    --kernels --moe --zero-copy --caps 1.0,0.5,0.25 --json-out "$OUTD/moe_split.json" > "$OUTD/moe_split.log" 2>&1
echo "2. MoE split bench rc=$? after $(( $(date +%s) - t0 )) s"
tail -12 "$OUTD/moe_split.log"
ROUNDS=1 SPLIT=1 NOREPACK=1 AMX_AB=1 KERNEL_AB=1 OUT=$OUTD/scaling timeout "${T_CPU:-330}" bash "$R/benchmarks/cpu_scaling_device.sh" \
  "$THREADS" 1 > "$OUTD/scaling.log" 2>&1
echo "3. CPU scaling rc=$? after $(( $(date +%s) - t0 )) s"
tail -30 "$OUTD/scaling.log"
