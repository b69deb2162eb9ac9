#!/usr/bin/env bash
# The blog's experiments at their full length on a CPU machine (issue 22), in the issue's order, within a budget,
# continued by calling it again: every run checkpoints each epoch into results/runs/.../checkpoint/, and
# scripts/reproduce.py resumes a stopped run from there (bit for bit) and keeps every finished one. Commit
# results/ when it stops: it stages what the next session needs of a run still going (results/runs/ is
# git-ignored otherwise): its logs and the newest epoch of its checkpoint (about 5 MB for resnet).
#
#   BUDGET_S=5400 bash scripts/blog_runs.sh && git add results && git commit -m "..."
#
# Order: resnet (JAX seed 0 and torch seed 0, then JAX seeds 1-2), cnn_tb and cnn_gpu (likewise), cnn_deep (JAX
# seed 0, then torch seed 0). Time the table's epochs on a quiet machine: each epoch records its load average, and
# the table marks epochs that shared the cores. Environment: PYTHON (.venv/bin/python if present, else python3),
# BUDGET_S (whole seconds, default 9000), OUT (results).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
BUDGET_S=${BUDGET_S:-9000}
OUT=${OUT:-results}
if ! [[ $BUDGET_S =~ ^[0-9]+$ ]]; then
    echo "error: BUDGET_S must be a whole number of seconds, got '$BUDGET_S'" >&2
    exit 2
fi
start=$(date +%s)

step() {  # one reproduce.py call with what is left of the budget; nothing once under a minute is left
    local left=$((BUDGET_S - ($(date +%s) - start)))
    if [ "$left" -lt 60 ]; then
        echo "blog_runs: budget spent; call again to continue: $*"
        return
    fi
    "$PYTHON" scripts/reproduce.py --out "$OUT" --budget-s "$left" "$@" || echo "blog_runs: a run failed: $*" >&2
}

step --presets resnet --seeds 1
step --presets resnet --seeds 3 --frameworks jax
step --presets cnn_tb,cnn_gpu --seeds 1
step --presets cnn_tb,cnn_gpu --seeds 3 --frameworks jax
step --presets cnn_deep --seeds 1 --frameworks jax
step --presets cnn_deep --seeds 1 --frameworks torch

# A run still going: stage its logs and its newest checkpoint step (JAX: latest/<epoch>; torch: checkpoint.pt).
# The older step and `best` stay behind: resuming needs neither (a resumed run starts its `best` afresh).
for workdir in "$OUT"/runs/*/*/*/checkpoint; do
    [ -d "$workdir" ] || continue
    logdir=$(dirname "$workdir")
    git add -f $(find "$logdir" -path "$workdir" -prune -o -type f -print)
    if [ -d "$workdir/latest" ]; then
        newest=$(ls "$workdir/latest" | grep -E '^[0-9]+$' | sort -n | tail -1)
        [ -n "$newest" ] && git add -f "$workdir/latest/$newest"
    fi
    [ -f "$workdir/checkpoint.pt" ] && git add -f "$workdir/checkpoint.pt"
    echo "blog_runs: staged $logdir (in progress) for the next session"
done
exit 0
