#!/usr/bin/env bash
# Consolidate C4 en 3.0.1 shards into MLPerf's files, like MLPerf's utils/consolidate_data.sh, with checks.
#
#   C4_PATH=/data/c4/en MERGED_C4_PATH=/data/c4-merged bash consolidate_data.sh
#
# Environment (MLPerf's names):
#   C4_PATH               folder with c4-train.NNNNN-of-01024.json.gz and c4-validation.NNNNN-of-00008.json.gz
#   MERGED_C4_PATH        output folder: c4-train.en_{0..7}.json.gz, c4-validation.en.json.gz,
#                         c4-validation-${N_VALIDATION_SAMPLES}-samples.en.json.gz
#   TRAIN_OUTPUTS         number of train files (default 8); the train shards, a contiguous run from 00000, are
#                         split in order into that many equal groups
#   N_VALIDATION_SAMPLES  documents in the validation subset (default 91205; 0 writes no subset)
#   PYTHON                interpreter with this package's data dependencies (default python3)
# Extra arguments go to the Python module, e.g. --task-index 3 (one output), --list, --force.
# A rerun skips complete outputs; a missing, damaged or truncated shard is reported by name and exits non-zero.
set -euo pipefail

: "${C4_PATH:?set C4_PATH to the folder with the C4 en 3.0.1 shards (c4-train.NNNNN-of-01024.json.gz ...)}"
: "${MERGED_C4_PATH:?set MERGED_C4_PATH to the folder for the consolidated files}"
TRAIN_OUTPUTS="${TRAIN_OUTPUTS:-8}"
N_VALIDATION_SAMPLES="${N_VALIDATION_SAMPLES:-91205}"
PYTHON="${PYTHON:-python3}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"

exec "${PYTHON}" -m orchestrator.data.consolidate \
    --c4-path "${C4_PATH}" \
    --merged-c4-path "${MERGED_C4_PATH}" \
    --train-outputs "${TRAIN_OUTPUTS}" \
    --n-validation-samples "${N_VALIDATION_SAMPLES}" \
    "$@"
