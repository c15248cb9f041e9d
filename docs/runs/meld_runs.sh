#!/usr/bin/env bash
# The recorded MELD runs: the main model, then the EACL ablation at an equal, smaller budget.
# Usage: bash docs/runs/meld_runs.sh [main|ablation|all]   (logs and manifests under var/runs/)
set -uo pipefail
cd "$(dirname "$0")/../.."
export ERC_DATA_DIR=${ERC_DATA_DIR:-$(realpath ../shared/datasets)} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ERC_TRAIN=.venv/bin/erc-train
mkdir -p var/runs
what=${1:-all}
run() {  # name, args...
  local name=$1; shift
  echo "== $name: erc-train fit $*" | tee -a var/runs/commands.txt
  local t0=$(date +%s)
  $ERC_TRAIN fit --dataset meld --store var/runs/store --version "$name" --no-make-current "$@" > "var/runs/$name.log" 2>&1
  echo "   rc=$? wall_s=$(( $(date +%s) - t0 ))" | tee -a var/runs/commands.txt
}
if [[ $what == main || $what == all ]]; then
  run meld-main --epochs 1
fi
if [[ $what == ablation || $what == all ]]; then
  B=(--epochs 1 --max-train-conversations 120)
  run abl-ce-only "${B[@]}" --lambda1 0 --no-stage2
  run abl-full "${B[@]}"
  run abl-plain-anchors "${B[@]}" --anchors plain
  run abl-no-angle "${B[@]}" --lambda2 0
  run abl-no-ce "${B[@]}" --lambda1 1.0
fi
