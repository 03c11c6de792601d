#!/usr/bin/env bash
# Run a tier's compute jobs on a GPU machine with no network and no pip index, then pack the
# per-job files (not the model weights) so the database and report can be built elsewhere.
#   scripts/gpu-box.sh TIER_CONFIG OUT_DIR [snakemake target...]
# Needs beside the repository: .whl/ (wheels of what the machine lacks: snakemake, lm-eval,
# datasets; built with ../shared/tools/wheelhouse.sh) and .data/ (the local data the config names).
set -euo pipefail
config=$1; out=$2; shift 2
targets=("${@:-compute}")
if [ -d .whl ] && ! python3 -c "import snakemake" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
start=$(date +%s)
status=0
# A time limit of our own (GPU_BOX_LIMIT_S) leaves time to pack whatever finished.
timeout -k 20 "${GPU_BOX_LIMIT_S:-100000}" python3 -m snakemake "${targets[@]}" --cores "$(nproc)" --configfile "$config" --keep-going \
  > "$out/snakemake.log" 2>&1 || status=$?
echo "snakemake exit $status after $(( $(date +%s) - start )) s" | tee -a "$out/gpu.txt"
tier=$(python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['tier'])" "$config")
# Per-job files only: metrics, logs, evaluations, coordinate checks, benchmarks, data manifests.
find results resources -path '*/model' -prune -o -path '*/checkpoint' -prune -o -type f \
  \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' \) -print \
  | grep -E "/$tier/|/$tier\.|logs/$tier" | grep -v '/text/.*\.jsonl$' \
  | tar czf "$out/results-$tier.tgz" -T -
ls -la "$out"
exit 0
