#!/usr/bin/env bash
# The blog's experiments on a GPU machine with no internet, in one command, within a time budget (issue 5):
#
#   mkdir -p data/mnist; for f in ~/.cache/jaxmnist/mnist/*-ubyte; do gzip -c "$f" > data/mnist/$(basename $f).gz; done
#   bash scripts/gpu_reproduce.sh              # beforehand, where MNIST is cached; data/ is git-ignored
#
# Runs every preset at the blog's epochs, both frameworks (torch with the blog's DataLoader, 4 workers, pinned
# memory), the small networks for 3 seeds and resnet18/resnet101 for 1, in the order below, seed by seed; what the
# budget does not reach is recorded as skipped. Writes results/<preset>.json and results/README.md.
# Environment: PYTHON (default python3), DATA_DIR (default data/mnist), BUDGET_S (default 540), SMALL, LARGE
# (the preset lists). Extra arguments go to reproduce.py (e.g. --epochs 5 for a shorter table).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-data/mnist}
BUDGET_S=${BUDGET_S:-540}
SMALL=${SMALL:-cnn_tb,resnet,cnn_gpu,cnn_cpu,cnn_deep}
LARGE=${LARGE:-resnet18,resnet101}

if [ ! -d "$DATA_DIR" ]; then
    echo "error: $DATA_DIR is missing: put the four MNIST IDX files there (see the top of this script)" >&2
    exit 2
fi
"$PYTHON" -c 'import jax, torch, sys; b = jax.default_backend(); print(f"jax {jax.__version__}: {b} {jax.devices()[0].device_kind}; torch {torch.__version__}, cuda {torch.cuda.is_available()}")
if b == "cpu" or not torch.cuda.is_available(): print("warning: no GPU for both frameworks; these will be CPU numbers", file=sys.stderr)' || exit 2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true

common=(--data-dir "$DATA_DIR" --num-workers 4)
"$PYTHON" scripts/reproduce.py --presets "$SMALL" --seeds 3 --budget-s "$BUDGET_S" "${common[@]}" "$@"
status=$?
left=$((BUDGET_S - SECONDS))
if [ "$left" -gt 30 ]; then
    "$PYTHON" scripts/reproduce.py --presets "$LARGE" --seeds 1 --budget-s "$left" "${common[@]}" "$@" || status=$?
else
    echo "note: $LARGE not run: the budget was spent" >&2
fi
exit "$status"
