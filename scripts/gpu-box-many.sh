#!/usr/bin/env bash
# Run several tiers (or several targets of one tier) side by side on one machine with several
# GPUs, each pinned to its own GPU through scripts/gpu-box.sh, and pack everything into
# $OUT/all.tgz.
#   OUT=DIR scripts/gpu-box-many.sh LIMIT_S "GPU:CONFIGS:TARGETS[;GPU:CONFIGS:TARGETS…]" …
# Each argument is a chain run on its own; specs inside a chain (joined by ';') run one after
# another. CONFIGS and TARGETS are space-separated lists. The first spec's tier prepares its data
# once before any chain starts (overlays share it through `data_tier`). Every snakemake stops
# LIMIT_S seconds after this script started.
set -u
start=$(date +%s); limit=$1; shift
: "${OUT:?set OUT to the directory that receives all.tgz}"
work=$(mktemp -d); mkdir -p "$OUT" "$work/data"
first_configs=$(echo "$1" | cut -d';' -f1 | cut -d: -f2)
bash scripts/gpu-box.sh "$first_configs" "$work/data" data_all > "$work/data/run.txt" 2>&1
echo "data ready after $(( $(date +%s) - start )) s"
for chain in "$@"; do
  (IFS=';' read -r -a specs <<< "$chain"
   for spec in "${specs[@]}"; do
     IFS=: read -r gpu configs targets <<< "$spec"
     name=$(basename "${configs##* }" .yaml)-$(echo "$targets" | tr ' /' '+_' | tail -c 40)
     mkdir -p "$work/$name"
     left=$(( limit - $(date +%s) + start )); [ "$left" -lt 20 ] && break
     # shellcheck disable=SC2086  # TARGETS is a list
     GPU_BOX_GPU=$gpu GPU_BOX_LIMIT_S=$left bash scripts/gpu-box.sh "$configs" "$work/$name" $targets \
       > "$work/$name/run.txt" 2>&1
     echo "$name done after $(( $(date +%s) - start )) s"
   done) &
  sleep 1
done
wait
tar czf "$OUT/all.tgz" -C "$work" .
echo "total $(( $(date +%s) - start )) s"
