#!/usr/bin/env bash
# The GPU benchmark in one command, for a machine with no internet (see benchmarks/README.md):
#
#   cp -r ~/.cache/jaxmnist/mnist data/mnist   # beforehand, where MNIST is cached; data/ is git-ignored
#   bash scripts/gpu_bench.sh                  # under 8 minutes on an H100; extra arguments go to bench.py
#
# Writes benchmarks/gpu-<device>.json (rewritten after every measurement) and prints the tables. It continues the
# JSON the checkout holds (bench.py --resume: what an earlier lease measured on the same device kind, versions and
# settings is kept, the rest measured), so each lent machine's minutes go to what the last one did not reach.
# Environment: PYTHON (default python3), DATA_DIR (default data/mnist), BUDGET_S (default 420), RESUME (default 1;
# 0: measure everything again).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # a bare checkout: jaxmnist and torch_ref from here
PYTHON=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-data/mnist}
BUDGET_S=${BUDGET_S:-420}

if [ ! -d "$DATA_DIR" ]; then
    echo "error: $DATA_DIR is missing: copy the four MNIST IDX files there (cp -r ~/.cache/jaxmnist/mnist $DATA_DIR" \
         "on a machine that has them; see benchmarks/README.md)" >&2
    exit 2
fi
"$PYTHON" -c 'import jax, sys; b = jax.default_backend(); print(f"jax {jax.__version__}: {b} {jax.devices()[0].device_kind}")
if b == "cpu": print("warning: JAX sees no GPU; the numbers will be CPU numbers", file=sys.stderr)' || exit 2
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true

# The budget is soft (a started measurement finishes), so a hard stop 45 s past it: SIGTERM makes bench.py write
# and print what it has; SIGKILL 20 s later if it is stuck inside a compile.
resume=()
[ "${RESUME:-1}" = 0 ] || resume=(--resume)
timeout -k 20 $((${BUDGET_S%.*} + 45)) "$PYTHON" scripts/bench.py --data-dir "$DATA_DIR" --offline \
    --budget-s "$BUDGET_S" "${resume[@]}" "$@"
status=$?
if [ "$status" -ne 0 ]; then
    latest=$(ls -t benchmarks/gpu-*.json 2>/dev/null | head -n 1)
    if [ -n "$latest" ]; then
        echo "bench.py exited with $status; the tables of what $latest holds:" >&2
        "$PYTHON" scripts/bench.py --table "$latest"
    fi
fi
exit "$status"
