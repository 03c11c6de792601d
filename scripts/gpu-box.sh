#!/usr/bin/env bash
# Run a tier's compute jobs on a GPU machine with no network and no pip index, then pack the
# per-job files (not the model weights) so the database and report can be built elsewhere.
#   scripts/gpu-box.sh "TIER_CONFIG [OVERLAY...]" OUT_DIR [snakemake target...]
# Needs beside the repository: .whl/ (wheels of what the machine lacks: snakemake, lm-eval,
# datasets; built with ../shared/tools/wheelhouse.sh) and .data/ (the local data the config names).
# Environment:
#   GPU_BOX_LIMIT_S  stop snakemake after this many seconds and pack what finished
#   GPU_BOX_GPU      pin this run to one GPU (an index): several tiers can then run side by side
#                    on one machine, each on its own card, its share of the cores and its own
#                    GPU-slot locks.
set -euo pipefail
read -r -a configs <<< "$1"
out=$2; shift 2
targets=("${@:-compute}")
if [ -d .whl ] && ! python3 -c "import snakemake" 2>/dev/null; then
  mkdir -p /tmp/site.lock && exec 9>/tmp/site.lock/lock && flock 9   # two runs side by side install once
  python3 -c "import sys; sys.path.insert(0, '/tmp/site'); import snakemake" 2>/dev/null \
    || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  flock -u 9
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
cores=$(nproc)
extra=()
if [ -n "${GPU_BOX_GPU:-}" ]; then
  n_gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
  export CUDA_VISIBLE_DEVICES=$GPU_BOX_GPU GDN_GPU_SLOT_DIR=/tmp/gdn-gpu-slots-gpu$GPU_BOX_GPU
  cores=$(( cores / n_gpus ))
  extra=(--nolock)   # tiers side by side write disjoint files
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ${GPU_BOX_GPU:+--id=$GPU_BOX_GPU} \
  | tee "$out/gpu.txt"
start=$(date +%s)
status=0
# A time limit of our own (GPU_BOX_LIMIT_S) leaves time to pack whatever finished.
timeout -k 20 "${GPU_BOX_LIMIT_S:-100000}" python3 -m snakemake "${targets[@]}" --cores "$cores" \
  --configfile "${configs[@]}" --keep-going "${extra[@]}" > "$out/snakemake.log" 2>&1 || status=$?
echo "snakemake exit $status after $(( $(date +%s) - start )) s" | tee -a "$out/gpu.txt"
tier=$(python3 -c "
import sys, yaml
tier = None
for path in sys.argv[1:]:
    tier = (yaml.safe_load(open(path)) or {}).get('tier', tier)
print(tier)" "${configs[@]}")
# Per-job files only: metrics, logs, evaluations, coordinate checks, benchmarks, data manifests.
find results resources -path '*/model' -prune -o -path '*/checkpoint' -prune -o -type f \
  \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' \) -print \
  | grep -E "/$tier/|/$tier\.|logs/$tier" | grep -v '/text/.*\.jsonl$' \
  | tar czf "$out/results-$tier.tgz" -T -
ls -la "$out"
exit 0
