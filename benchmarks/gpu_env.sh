# Sourced on a lent GPU machine by gpu_seeds.sh and gpu_mlperf.sh: the wheel bundle (gpu_wheels.sh) installed into
# /tmp/site once, the prepared data (gpu_seeds.sh prepare) unpacked into /tmp/seeds-data once, and the environment
# every run there needs. $OUT/nvidia-smi.txt records the machine.
gpu_env() {
    local root=$1
    if [[ ! -d /tmp/site/nemo ]]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$root"/.whl/*.whl >/tmp/pip.txt 2>&1 || { tail -20 /tmp/pip.txt; return 3; }
        nvidia-smi >"${OUT:?}/nvidia-smi.txt" 2>&1
    fi
    data=/tmp/seeds-data
    [[ -d $data/llama3.1 ]] || { mkdir -p "$data" && tar xzf "$root/.gpu/seeds/data.tgz" -C "$data"; } || return 3
    export PYTHONPATH=$root:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
}
