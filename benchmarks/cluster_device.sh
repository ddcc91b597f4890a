#!/bin/bash
# 1, 2 and 4 EMULATED boards on the lent GPU machine's 16 CPU cores (issue 19 item 5; CPU only, one core a board):
# benchmarks/cluster_bench.py there, on a SIMULATED Qwen2.5-Coder-1.5B (random Q8_0 weights with the real model's
# shapes, metadata and tokenizer, exported to int8: the real GGUF cannot travel there, 64 MiB a call; speed depends
# on shapes, not values). Each board: network namespace + rig cgroup (memory = budget + 600 MiB incl. page cache,
# io.max read throttle, one core), links tc tbf + SIMULATED latency, exactly as on the dev VM.
#
# That machine is root with cgroup v2 (cpuset, io, memory) and network namespaces, but has no iproute2 and no
# network: the dev VM's `ip`/`tc` binaries and their libraries travel in the ignored folder .devcarry:
#   .devcarry/iproute/{ip,tc,lib/}  cp /usr/sbin/ip /usr/sbin/tc + the non-libc libraries ldd lists
#   .devcarry/gguf-py/gguf          the venv's gguf package (pure Python; random_gguf.py writes with it)
#   .devcarry/meta/                 `python benchmarks/random_gguf.py meta QWEN1.5B.gguf .devcarry/meta`
# then (device tool, carry [".devcarry"]):  bash benchmarks/cluster_device.sh [BENCH ARGS...]
# Default bench args: --boards 2,4 --modes pipeline,tensor --links ethernet,wifi --repeats 1 -n 8.
set -u
C=$PWD/.devcarry
W=${W:-/tmp/cl}
OUTD=${OUT:-$W/out}
PY=${PY:-python3}
mkdir -p "$W/pk" "$W/bin" "$OUTD"
ln -sfn "$PWD" "$W/pk/edgespool"
# ip/tc wrappers: the carried libraries for the tools only; `ip netns exec` drops them again for what it starts
cat > "$W/bin/ip" <<EOF
#!/bin/sh
if [ "\$1" = netns ] && [ "\$2" = exec ]; then ns=\$3; shift 3
  LD_LIBRARY_PATH=$C/iproute/lib exec $C/iproute/ip netns exec "\$ns" env -u LD_LIBRARY_PATH "\$@"; fi
LD_LIBRARY_PATH=$C/iproute/lib exec $C/iproute/ip "\$@"
EOF
printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/iproute/lib exec %s/iproute/tc "$@"\n' "$C" "$C" > "$W/bin/tc"
chmod +x "$W/bin/ip" "$W/bin/tc"
# the runner there puts us in a shared cgroup (/process_api/<id>) with other processes, where cgroup v2 refuses to
# enable controllers for children ("Device or resource busy"): move this shell to the root cgroup, as on the VM
grep -qx '0::/' /proc/self/cgroup || echo $$ > /sys/fs/cgroup/cgroup.procs || exit 1
# its environment pins Open MPI's launcher to "isolated" (one node, no rsh agent): the boards need rsh (ip netns exec)
unset OMPI_MCA_plm
export PATH=$W/bin:$PATH PYTHONPATH=$W/pk:$C/gguf-py PYTHONUNBUFFERED=1
t0=$(date +%s)
G=/var/tmp/qwen2.5-coder-1.5b-simulated.Q8_0.gguf
B=/var/tmp/qwen2.5-coder-1.5b-simulated-int8
[ -f "$G" ] || "$PY" "$PWD/benchmarks/random_gguf.py" write "$C/meta" "$C/gguf-py" "$G" 0.0002 || exit 1
if [ ! -f "$B/manifest.json" ]; then
  "$PY" - "$G" "$B" <<'PYEOF' || exit 1
import sys
from pathlib import Path
from edgespool.exporters.compress import QuantPolicy
from edgespool.exporters.export import export_model, open_source
src = open_source(sys.argv[1])
try:
    export_model(src, Path(sys.argv[2]), policy=QuantPolicy(quant="int8"), onnx=False, progress=False)
finally:
    src.close()
PYEOF
fi
echo "gguf + int8 bundle ready after $(( $(date +%s) - t0 )) s"
lscpu > "$OUTD/lscpu.txt"
[ $# -gt 0 ] || set -- --boards 2,4 --modes pipeline,tensor --links ethernet,wifi --repeats 1 -n 8
"$PY" "$PWD/benchmarks/cluster_bench.py" --bundle "$B" --dir /var/tmp \
  --label "qwen2.5-coder-1.5b SIMULATED (random weights, real shapes)" --json "$OUTD/cluster.json" "$@" \
  2> >(tee "$OUTD/cluster.err" >&2) | tee "$OUTD/cluster.md"
echo "done after $(( $(date +%s) - t0 )) s"
