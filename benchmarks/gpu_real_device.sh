#!/bin/bash
# A REAL GGUF bigger than one device call's 64 MiB on the lent GPU machine (issue 17 part 5): the file travels in
# pieces over calls to the same warm machine (it stays warm 30 s after a call), is joined there and checked against
# its sha256, then gpu_split_bench runs edgespool's split on it against its own CPU-only run (greedy tokens).
# docs/BENCHMARKS.md issue 17 "Real trained weights on the GPU" (SmolLM2-135M-Instruct, 94 MiB, three pieces).
#
#   here:   bash benchmarks/gpu_real_device.sh split FILE.gguf     # .devcarry/realA, realB, realC (+ sha256)
#   there:  bash benchmarks/gpu_real_device.sh stash               # call 1, carry [".devcarry/realA", ".devcarry/realC"]
#   there:  bash benchmarks/gpu_real_device.sh run [BENCH ARGS]    # call 2 at once, carry [".devcarry/realB",
#                                                                  #   ".devcarry/gguf-py"]; default args below
#   there:  bash benchmarks/gpu_real_device.sh join                # instead of run: the joined file only
#                                                                  #   ($S/model.gguf, for cpu_scaling_device.sh)
# A call that finds a fresh machine has lost the stash: `run` says so and exits 1.
set -u
MODE=${1:-}
shift || true
C=$PWD/.devcarry
S=/tmp/real-gguf
case "$MODE" in
split)
  F=${1:?usage: split FILE.gguf}
  size=$(stat -c %s "$F")
  piece=46000000  # two pieces + the repo + the small carries stay under 64 MiB a call
  rm -rf "$C/realA" "$C/realB" "$C/realC" && mkdir -p "$C/realA" "$C/realB" "$C/realC" || exit 1
  head -c "$piece" "$F" > "$C/realA/part1"
  tail -c +$((piece + 1)) "$F" | head -c "$piece" > "$C/realB/part2"
  tail -c +$((2 * piece + 1)) "$F" > "$C/realC/part3"
  echo "$(sha256sum < "$F" | cut -d' ' -f1)  $S/model.gguf" > "$C/realC/sha256"
  echo "$(basename "$F")" > "$C/realC/name"
  echo "split $size bytes into $(du -b "$C"/real?/part? | awk '{print $1}' | tr '\n' ' ')"
  ;;
stash)
  mkdir -p "$S" && cp "$C/realA/part1" "$C/realC/part3" "$C/realC/sha256" "$C/realC/name" "$S/" || exit 1
  ls -la "$S"
  ;;
run|join)
  for f in part1 part3 sha256; do
    [ -f "$S/$f" ] || { echo "no $S/$f: this machine is not the one 'stash' ran on (it went back); stash again"; exit 1; }
  done
  cat "$S/part1" "$C/realB/part2" "$S/part3" > "$S/model.gguf" && sha256sum -c "$S/sha256" || exit 1
  if [ "$MODE" = join ]; then  # only the joined, checked file (benchmarks/cpu_scaling_device.sh MODEL=... uses it)
    exit 0
  fi
  W=/tmp/gr
  mkdir -p "$W/pk" && ln -sfn "$PWD" "$W/pk/edgespool"
  export PYTHONPATH=$W/pk:$C/gguf-py PYTHONUNBUFFERED=1
  OUTD=${OUT:-$W/out}
  mkdir -p "$OUTD"
  echo "model: $(cat "$S/name")"
  [ $# -gt 0 ] || set -- --reps 1 -n 32 --kernels --caps 1.0,0.6,0.4
  python3 -m edgespool.benchmarks.gpu_split_bench --out "$W/g" --gguf "$S/model.gguf" --json-out "$OUTD/real.json" \
    "$@" > "$OUTD/real.log" 2>&1
  echo "split bench rc=$?"
  grep -v '^ ' "$OUTD/real.log" | cut -c1-400 | tail -20
  ;;
*)
  sed -n 2,13p "$0"; exit 2
  ;;
esac
