#!/usr/bin/env bash
# MLPerf Llama 3.1 405B the reference's way:   source config.sh && bash run_llama31.sh
#
# Reads the config.sh variables (see config.sh.example) and submits the same plan as
# `python -m orchestrator submit --from-env`. DRY_RUN=1 renders, validates and prints without submitting.
# A plan that fails validation exits non-zero and writes nothing.
set -euo pipefail
exec "${PYTHON:-python3}" -m orchestrator submit --from-env "$@"
