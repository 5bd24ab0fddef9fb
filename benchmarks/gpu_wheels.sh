#!/usr/bin/env bash
# The NeMo 2.5.3 stack as wheels for a GPU machine that has PyTorch but no NeMo and no network (issue 6).
#
#   bash benchmarks/gpu_wheels.sh [DEST]      # default .whl/ (git-ignored); about 46 MB
#
# Target: CPython 3.12 on manylinux x86_64 with PyTorch 2.11 (CUDA 13), numpy 2, transformers 5, Lightning 2.6 and
# pyyaml/jinja2/rich/sentencepiece already installed (the lent GPU machines' image). Installed there with
#
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#
# so these shadow the image's own copies where NeMo needs other versions: lightning 2.4.0 (NeMo's pin; 2.6 breaks
# nv_one_logger's trainer patch), transformers 4.53.3 with tokenizers 0.21 and huggingface_hub 0.36 (transformers 4.53
# refuses the image's newer ones at import). Only what `from nemo.collections import llm`, the llama3_8b recipe,
# the orchestrator package and a training run import is here: each wheel below was seen to be needed (leaving it
# out breaks that import); most are NeMo's undeclared or nemo_run's import-time needs (leptonai and its web stack,
# paramiko, modelopt and pulp). Transformer Engine is not: its PyTorch extension has no binary wheel (source only,
# a CUDA build) and transformer_engine_cu13 2.9 alone is 186 MB, over the 64 MiB a lent machine can be sent.
#
# Two changes to what PyPI serves, both to fit that limit: pulp keeps only its linux x86-64 CBC solver binary (the
# wheel carries six platforms' binaries, 16 MB; modelopt imports pulp and nothing here solves an LP), and the two
# sdist-only pure-Python packages (antlr4 4.9.3, omegaconf's pin; wget) are built into wheels here.
set -euo pipefail

dest=${1:-.whl}
python=${PYTHON:-python3}
mkdir -p "$dest"

packages=(
    # NeMo and what its llm collection imports
    nemo_toolkit==2.5.3 megatron-core==0.14.0 nemo_run==0.5.0 nvidia-modelopt==0.35.1 lightning==2.4.0
    transformers==4.53.3 tokenizers==0.21.4 huggingface_hub==0.36.2 datasets==3.6.0 dill==0.3.8 multiprocess==0.70.16
    fiddle==0.3.1 libcst==1.9.0 graphviz==0.21 omegaconf==2.3.0 hydra-core==1.3.2 wcwidth==0.9.4
    nv-one-logger-core==2.3.1 nv-one-logger-training-telemetry==2.3.1 nv-one-logger-pytorch-lightning-integration==2.3.1
    StrEnum==0.4.15 overrides==7.7.0 toml==0.10.2 torchprofile==0.1.0 decorator==5.3.1 pulp==3.3.2
    # NeMo's logger checks every checkpoint callback against NVRx's local-checkpoint class when training starts
    nvidia-resiliency-ext==0.4.1 defusedxml==0.7.1
    # imported by NeMo at import time (lazy_importer, importlib_metadata); the last four were in the bundle of the
    # measured runs (docs/benchmarks.md) although the imports and the recipe build pass without them
    lazy_importer==0.1.0 importlib_metadata==10.2.0 deprecated==1.3.1 InquirerPy==0.3.4 pfzy==0.3.4 prompt_toolkit==3.0.53
    # nemo_run's imports: its executors (lepton, ssh tunnels), its CLI, torchx
    catalogue==2.0.10 torchx==0.7.0 docstring_parser==0.18.0 paramiko==5.1.0 bcrypt==5.0.0 cryptography==42.0.8
    cffi==2.1.1 pycparser==3.12 pynacl==1.6.2 invoke==2.2.1 fabric==3.2.3 leptonai==0.25.0 ledoc-ui==0.1.0
    loguru==0.7.3 fastapi==0.163.2 starlette==0.52.1 opentelemetry-api==1.45.2 contextlib2==21.6.0
    prometheus-fastapi-instrumentator==7.0.0 uvicorn==0.54.0 exceptiongroup==1.3.1
    # mlperf-logging's compliance checker, run on the 8b proxy's log there (pure Python, 0.4 MB; the image has its
    # pandas, scipy, numpy and pyyaml)
    mlperf-logging==4.1.68
    # the orchestrator package itself (the image has no pydantic)
    pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
    pydantic-settings==2.16.3 python-dotenv==1.2.4
    # the data stage's JSON parser, imported by orchestrator.plan through orchestrator.data
    orjson==3.13.0
)
platforms=()
for tag in manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dest" "${packages[@]}"
"$python" -m pip wheel --quiet --no-deps -w "$dest" antlr4-python3-runtime==4.9.3 wget==3.2

# pulp: drop the CBC binaries of other platforms (osx, windows, linux arm64 and i32), and their RECORD lines.
"$python" - "$dest"/pulp-3.3.2-py3-none-any.whl <<'PY'
import os, sys, zipfile

path = sys.argv[1]
drop = tuple(f"pulp/solverdir/cbc/{d}/" for d in ("osx", "win", "linux/arm64", "linux/i32"))
with zipfile.ZipFile(path) as zin, zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename.startswith(drop):
            continue
        data = zin.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(line for line in data.splitlines(True) if not line.decode().startswith(drop))
        zout.writestr(item, data)  # the ZipInfo keeps the solver's executable bit
os.replace(path + ".tmp", path)
PY
du -ch "$dest"/*.whl | tail -1
