#!/usr/bin/env bash
# The MLPerf rules in NeMo's own trainer on a lent GPU machine (issues 12, 17): nemo_mlperf_run.py around the wheel
# bundle (gpu_wheels.sh) and the tokenizers and data of gpu_seeds.sh prepare (Mixtral's for small and 405b; for 8b
# Llama 3.1's folder and the sample corpus tokenized with it). Writes $OUT/mlperf-PART/ (driver.log, summary.json,
# the compliance logs, every job's output).
#
#   bash benchmarks/gpu_mlperf.sh small|target|405b|8b [nemo_mlperf_run.py arguments...]
set -uo pipefail
root=$(pwd)
part=${1:?usage: $0 small|target|405b|8b [arguments]}
shift
out=${OUT:?set OUT to a results folder}/mlperf-$part
mkdir -p "$out"
source "$root/benchmarks/gpu_env.sh"
gpu_env "$root" || exit 3
work=/tmp/mlperf-work/$part
if [[ $part == 8b ]]; then
    inputs=(--llama-tokenizer "$data/llama3.1" --llama-data "$data/c4-train-llama3.en_0_text_document")
else
    inputs=(--tokenizer "$data/tokenizer.model.v1")
fi
timeout "${BUDGET:-560}" python3 "$root/benchmarks/nemo_mlperf_run.py" --work "$work" --part "$part" \
    "${inputs[@]}" --out "$out" "$@" 2>&1 | tee "$out/driver.log"
status=${PIPESTATUS[0]}
find "$work" \( -name checkpoints -o -name npy \) -prune -o \( -name '*.log' -o -name '*.out' \) -print |
    tar czf "$out/jobs.tgz" -T - 2>/dev/null
rm -rf "$work"/*/run/checkpoints "$work"/*/checkpoints  # the 405B checkpoint is most of the disk
exit "$status"
