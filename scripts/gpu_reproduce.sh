#!/usr/bin/env bash
# The blog's experiments on a GPU machine with no internet, in one command, within a time budget (issue 5).
# Beforehand, on a machine with MNIST cached and PyPI (data/ and .whl/ are git-ignored; carry both):
#
#   mkdir -p data/mnist; for f in ~/.cache/jaxmnist/mnist/*-ubyte; do gzip -c "$f" > data/mnist/$(basename $f).gz; done
#   python -m pip download --no-deps --only-binary=:all: -d .whl tensorboardX==2.6.5   # absent from the GPU image
#   bash scripts/gpu_reproduce.sh
#
# Every preset at the blog's epochs, both frameworks (torch: the blog's DataLoader loop, 4 workers), results in
# OUT (default results/gpu: the CPU table stays apart). Round 1 runs seed 0 of every preset (SMALL, then LARGE);
# round 2 seeds 1 and 2 of SMALL; JAX's seeds of a preset train together in one process there, vmapped
# (reproduce.py --jax-seeds auto), and torch's one after another. Budget: at the blog's epochs the torch loop alone needs far more than BUDGET_S
# (the blog's own epoch times add up to ~50 min for one seed of each preset), so one call covers what fits;
# runs past the deadline are killed or skipped and recorded, and calling the script again (same OUT) keeps every
# finished seed and goes on with the rest. Extra arguments go to reproduce.py (e.g. --epochs 5: a shorter table,
# into an OUT that holds no results of other settings: reproduce.py refuses to mix them unless --rerun replaces them).
# Environment: PYTHON (python3), DATA_DIR (data/mnist), OUT (results/gpu), BUDGET_S (540, whole seconds),
# SMALL (fast,sprint,cnn_tb,resnet,cnn_gpu,cnn_cpu,cnn_deep,best: fast and sprint first, their times to 99.5 % on
# a GPU are issues 12 and 23's), LARGE (resnet18,resnet101).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # a bare checkout: jaxmnist and torch_ref from here
PYTHON=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-data/mnist}
OUT=${OUT:-results/gpu}
BUDGET_S=${BUDGET_S:-540}
SMALL=${SMALL:-fast,sprint,cnn_tb,resnet,cnn_gpu,cnn_cpu,cnn_deep,best}
LARGE=${LARGE:-resnet18,resnet101}

if ! [[ $BUDGET_S =~ ^[0-9]+$ ]]; then
    echo "error: BUDGET_S must be a whole number of seconds, got '$BUDGET_S'" >&2
    exit 2
fi
if [ ! -d "$DATA_DIR" ]; then
    echo "error: $DATA_DIR is missing: put the four MNIST IDX files there (see the top of this script)" >&2
    exit 2
fi
source scripts/carried_wheels.sh || exit 2  # tensorboardX, carried in .whl/
"$PYTHON" -c 'import jax, torch, sys; b = jax.default_backend(); print(f"jax {jax.__version__}: {b} {jax.devices()[0].device_kind}; torch {torch.__version__}, cuda {torch.cuda.is_available()}")
if b == "cpu" or not torch.cuda.is_available(): print("warning: no GPU for both frameworks; these will be CPU numbers", file=sys.stderr)' || exit 2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true

common=(--data-dir "$DATA_DIR" --num-workers 4 --out "$OUT")
status=0
round() {  # PRESETS SEEDS [extra args]: reproduce.py with what is left of the budget
    local left=$((BUDGET_S - SECONDS))
    if [ "$left" -lt 30 ]; then
        echo "note: --presets $1 --seeds $2 not started: the budget is spent" >&2
        return
    fi
    "$PYTHON" scripts/reproduce.py --presets "$1" --seeds "$2" --budget-s "$left" "${common[@]}" "${@:3}" || status=$?
}
round "$SMALL,$LARGE" 1 "$@"
round "$SMALL" 3 "$@"
exit "$status"
