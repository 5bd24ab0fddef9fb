#!/usr/bin/env bash
# One proxy measurement on a lent GPU machine (issue 6): install the wheel bundle once, run gpu_proxy.py, pack logs.
#
#   bash benchmarks/gpu_run.sh NAME [gpu_proxy.py arguments...]
#
# Run from the repository root with the bundle in .whl/ (benchmarks/gpu_wheels.sh) and the data in $DATA (default
# .gpu/data: c4-train.en_0_text_document.{bin,idx} and tokenizer.model.v1). Results go to $OUT/NAME/ (summary.json,
# driver.log, runs.tgz with every job's log, plan.json and rendered script; checkpoints left out); $SRC (default
# the repository root) is where the orchestrator package is imported from. BUDGET caps the run in seconds.
set -uo pipefail
name=$1
shift
root=$(pwd)
src=${SRC:-$root}
data=${DATA:-$root/.gpu/data}
out=${OUT:?set OUT to a results folder}/$name
mkdir -p "$out"
if [[ ! -d /tmp/site/nemo ]]; then
    start=$(date +%s)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$root"/.whl/*.whl >"$out/pip.txt" 2>&1 || { tail -20 "$out/pip.txt"; exit 3; }
    rm -f "$out/pip.txt"
    echo "wheel bundle installed into /tmp/site in $(($(date +%s) - start)) s"
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
fi
export PYTHONPATH=$src:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
work=/tmp/proxy/$name
mkdir -p "$work"
cd "$work" || exit 3
timeout "${BUDGET:-540}" python3 "$src/benchmarks/gpu_proxy.py" --data "$data/c4-train.en_0_text_document" \
    --tokenizer "$data/tokenizer.model.v1" --work "$work" --out "$out" "$@" 2>&1 | tee "$out/driver.log"
status=${PIPESTATUS[0]}
tar czf "$out/runs.tgz" --exclude=checkpoints --exclude=index-cache -C "$work" runs 2>/dev/null
exit "$status"
