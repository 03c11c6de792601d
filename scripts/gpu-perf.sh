#!/usr/bin/env bash
# The performance measurements (decode, training throughput, kernels), in stages that each fit
# one 10-minute call of a GPU machine without network, writing raw files under OUT. Commit them
# under docs/gpu-results/<date>/ and record the figures in docs/gpu-runs.md.
#   GDN_COMMIT=<sha> scripts/gpu-perf.sh STAGE OUT [CONFIG]
# STAGE:
#   checks           float64 and equivalence checks of every kernel on the card (Triton 3.6
#                    miscompiles some kernels on Hopper): run before any timing is trusted
#   inference        the inference suite (our models eager and graph, the peers), CONFIG's bench section
#   throughput:SHAPE the training-throughput suite at one of its shapes (e.g. throughput:125M)
#   kernels          kernels/benchmarks/bench_chunk.py with its launch sweep
# CONFIG defaults to config/study.yaml. The suites rewrite their JSON after every row, so a stage
# cut short keeps what it measured (status "running").
set -euo pipefail
stage=${1:?stage}; out=${2:?output directory}; config=${3:-config/study.yaml}
case "$stage" in
  checks|inference|throughput:?*|kernels) ;;
  *) echo "unknown stage '$stage': checks, inference, throughput:SHAPE or kernels" >&2; exit 2 ;;
esac
mkdir -p "$out"
export PYTHONPATH=$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
: "${GDN_COMMIT:=$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
export GDN_COMMIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt"
echo "commit $GDN_COMMIT" >> "$out/gpu.txt"
bench_json=$(python3 -c 'import json, sys, yaml; print(json.dumps({"bench": yaml.safe_load(open(sys.argv[1]))["bench"]}))' "$config")
case "$stage" in
  checks)
    python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_gdn.py tests/kernels/test_recompute_states.py \
      tests/kernels/test_short_conv.py tests/kernels/test_fused_decode.py tests/kernels/test_decode_ops.py \
      tests/kernels/test_decode_attention.py tests/test_generation.py -rA > "$out/checks-main.txt" 2>&1 || true
    # A launch that faults leaves the CUDA context unusable: the launch variants run in a process of their own.
    python3 -m pytest -q -p no:cacheprovider tests/kernels/test_launch_variants.py -rA > "$out/checks-launch.txt" 2>&1 || true
    tail -n 3 "$out"/checks-*.txt ;;
  inference)
    python3 -m gdn bench --suite inference --config-json "$bench_json" --out "$out/inference.json" 2>&1 \
      | tee "$out/inference.log" ;;
  throughput:*)
    shape=${stage#throughput:}
    python3 -m gdn bench --suite throughput --shape "$shape" --config-json "$bench_json" \
      --out "$out/throughput-$shape.json" 2>&1 | tee "$out/throughput-$shape.log" ;;
  kernels)
    python3 kernels/benchmarks/bench_chunk.py --out "$out/kernels.json" --sweep 2>&1 | tee "$out/kernels.log" ;;
esac
