#!/usr/bin/env bash
# The MLPerf rules in NeMo's own trainer on a lent GPU machine (issue 12): nemo_mlperf_run.py around the wheel
# bundle (gpu_wheels.sh) and the Mixtral tokenizer of gpu_seeds.sh prepare. Writes $OUT/mlperf-PART/ (driver.log,
# summary.json, the compliance logs, every job's output).
#
#   bash benchmarks/gpu_mlperf.sh small|405b [nemo_mlperf_run.py arguments...]
set -uo pipefail
root=$(pwd)
part=${1:?usage: $0 small|405b [arguments]}
shift
out=${OUT:?set OUT to a results folder}/mlperf-$part
mkdir -p "$out"
source "$root/benchmarks/gpu_env.sh"
gpu_env "$root" || exit 3
work=/tmp/mlperf-work/$part
timeout "${BUDGET:-560}" python3 "$root/benchmarks/nemo_mlperf_run.py" --work "$work" --part "$part" \
    --tokenizer "$data/tokenizer.model.v1" --out "$out" "$@" 2>&1 | tee "$out/driver.log"
status=${PIPESTATUS[0]}
find "$work" \( -name checkpoints -o -name npy \) -prune -o \( -name '*.log' -o -name '*.out' \) -print |
    tar czf "$out/jobs.tgz" -T - 2>/dev/null
rm -rf "$work"/*/run/checkpoints "$work"/*/checkpoints  # the 405B checkpoint is most of the disk
exit "$status"
