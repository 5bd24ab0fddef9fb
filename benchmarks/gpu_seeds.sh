#!/usr/bin/env bash
# The seed-model proxies and continual pretraining on a lent GPU machine (issue 15): seed_models.py around the
# wheel bundle and the data, which travel compressed to fit what a call may carry (64 MiB, the bundle being 46 MB).
#
#   bash benchmarks/gpu_seeds.sh prepare               # here: .gpu/seeds/ (sample corpus tokenized twice, tokenizers)
#   bash benchmarks/gpu_seeds.sh run NAME MODE [seed_models.py arguments...]   # there; MODE is seeds or cpt
#
# prepare makes, with this project's own steps: 5,000 sample-corpus documents tokenized with Mixtral's v1
# SentencePiece (what every seed proxy reads, as gpu_proxy.py) and with Llama 3's tokenizer (llama-models:llama3.1,
# for continual pretraining from a Llama 3.1), the two tokenizers, all gzipped (about 8 MB). run sets up the machine
# (gpu_env.sh: wheels into /tmp/site, data into /tmp/seeds-data, once), runs seed_models.py and writes $OUT/NAME/ (driver.log,
# summary.json, table.md, runs.tgz with every job's log, plan.json and rendered scripts). BUDGET caps it in seconds.
set -uo pipefail
root=$(pwd)
case ${1:-} in
prepare)
    set -e
    python=${PYTHON:-python3}
    dest=$root/.gpu/seeds
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$dest"
    "$python" -m orchestrator.data.sample --out "$tmp/c4" --train-shards 1 --validation-shards 1 --docs-per-shard 5000
    "$python" - "$tmp" <<'PY'
import sys
from pathlib import Path
from orchestrator.data.packaged_tokenizers import materialise
for reference in ("mistral-common:tokenizer.model.v1", "llama-models:llama3.1"):
    print(materialise(reference, Path(sys.argv[1]) / "tok"))
PY
    input=$tmp/c4/c4-train.00000-of-01024.json.gz
    "$python" -m orchestrator preprocess --input "$input" --output-prefix "$tmp/data/c4-train.en_0" --json-keys text \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model "$tmp/tok/tokenizer.model.v1" --workers 2
    "$python" -m orchestrator preprocess --input "$input" --output-prefix "$tmp/data/c4-train-llama3.en_0" \
        --json-keys text --tokenizer-type HuggingFaceTokenizer --tokenizer-model "$tmp/tok/llama3.1" \
        --tokenizer-hf-no-use-fast --tokenizer-hf-no-include-special-tokens --workers 2
    cp -r "$tmp/tok/tokenizer.model.v1" "$tmp/tok/llama3.1" "$tmp/data/"
    tar czf "$dest/data.tgz" -C "$tmp/data" --exclude='*.manifest.json' .
    du -h "$dest/data.tgz"
    ;;
run)
    name=$2 mode=$3
    shift 3
    out=${OUT:?set OUT to a results folder}/$name
    mkdir -p "$out"
    source "$root/benchmarks/gpu_env.sh"
    gpu_env "$root" || exit 3
    work=/tmp/seeds-work/$name
    rm -rf "$work" && mkdir -p "$work"
    args=(--work "$work" --out "$out")
    if [[ $mode == seeds ]]; then
        args+=(--data "$data/c4-train.en_0_text_document" --tokenizer "$data/tokenizer.model.v1")
    else
        args+=(--cpt-data "$data/c4-train-llama3.en_0_text_document" --cpt-tokenizer "$data/llama3.1")
    fi
    timeout "${BUDGET:-570}" python3 "$root/benchmarks/seed_models.py" "$mode" "${args[@]}" "$@" 2>&1 | tee "$out/driver.log"
    status=${PIPESTATUS[0]}
    tar czf "$out/runs.tgz" --exclude=checkpoints --exclude=index-cache --exclude='*.safetensors' \
        --exclude=imported -C "$work" . 2>/dev/null
    exit "$status"
    ;;
*)
    echo "usage: $0 prepare | run NAME seeds|cpt [seed_models.py arguments...]" >&2
    exit 2
    ;;
esac
