#!/usr/bin/env bash
# A lent GPU machine's whole errand in one command: the benchmark (scripts/gpu_bench.sh), parity on the device
# (scripts/gpu_parity.py), the compilation cache (two runs of `fast`), then the reproduction runs
# (scripts/gpu_reproduce.sh), JAX's runs before torch's, everything within LEASE_S, the results packed into
# $OUT/lease.tgz (the device tool sets OUT to the folder whose files come back, at most 8 of them: hence one archive)
# with the device and the versions in $OUT/device.txt, beside it and inside.
#
# Each lease continues the last: the benchmark keeps what benchmarks/gpu-<device>.json already holds from the same
# device kind, versions and settings (bench.py --resume), and the runs keep every seed that results/gpu/*.json
# holds (reproduce.py keeps finished seeds of the same settings), so the minutes go to what is still missing.
#
# Here, once (data/ and .whl/ are git-ignored):
#   mkdir -p data/mnist; for f in ~/.cache/jaxmnist/mnist/*-ubyte; do gzip -c "$f" > data/mnist/$(basename $f).gz; done
#   python -m pip download --no-deps --only-binary=:all: -d .whl tensorboardX==2.6.5   # absent from the GPU image
# Then through the device tool: command `bash scripts/gpu_lease.sh`, carry ["data", ".whl"], timeout_s 600.
# Back here: `tar xzf <files_at>/lease.tgz -C /tmp/lease` (and runs.tgz there, into results/gpu/), then
# /tmp/lease/benchmarks/*.json to benchmarks/, /tmp/lease/results/gpu/ to results/gpu/ (its runs/ stay out of git),
# device.txt into the commit message. Both archives are rewritten every minute: a command killed at its limit still
# brings back what was measured until the minute before.
#
# Environment: OUT (required), PYTHON (python3), DATA_DIR (data/mnist), LEASE_S (560: whole seconds for
# everything), BENCH_S (200: the benchmark's share), PARITY_S (120: scripts/gpu_parity.py's), CACHE_S (80: the
# compilation cache's two runs); extra arguments go to reproduce.py.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # a bare checkout: jaxmnist and torch_ref from here
if [ -z "${OUT:-}" ]; then
    echo "error: OUT must name the folder for the results (the device tool sets it)" >&2
    exit 2
fi
FILES_BACK=$OUT
PYTHON=${PYTHON:-python3}
LEASE_S=${LEASE_S:-560}
BENCH_S=${BENCH_S:-200}
PARITY_S=${PARITY_S:-120}
CACHE_S=${CACHE_S:-80}
for value in "$LEASE_S" "$BENCH_S" "$PARITY_S" "$CACHE_S"; do
    if ! [[ $value =~ ^[0-9]+$ ]]; then
        echo "error: LEASE_S, BENCH_S, PARITY_S and CACHE_S must be whole numbers of seconds, got '$value'" >&2
        exit 2
    fi
done
LEASE_OUT=$(mktemp -d)  # everything is written here, then packed into $FILES_BACK
mkdir -p "$LEASE_OUT/benchmarks" "$LEASE_OUT/results/gpu" "$FILES_BACK" || exit 2
source scripts/carried_wheels.sh || exit 2  # tensorboardX, carried in .whl/: every run writes its logs with it
exec > >(tee "$LEASE_OUT/lease.log") 2>&1  # the whole log travels in the archive; the device tool shows its end
# Earlier leases' seeds, kept by reproduce.py; not under extra arguments (e.g. --epochs 1: another table, whose
# results reproduce.py would refuse to mix with those of the committed settings).
[ $# -eq 0 ] && cp results/gpu/*.json "$LEASE_OUT/results/gpu/" 2>/dev/null
stamp=$(mktemp)  # the benchmarks' JSON written after this is this lease's

# What is measured so far into $FILES_BACK, atomically (an archive is renamed into place once whole): every minute
# and after each stage, so a command killed at its limit still brings back all but its last minute. lease.tgz: the
# JSON, the tables, this log, device.txt; runs.tgz: the runs' logs and curves (results/gpu/runs, no checkpoints:
# they only resume on this machine, which is not lent again). The device brings back files of at most 16 MiB.
pack() {
    local tries=0
    until mkdir "$LEASE_OUT/.packing" 2>/dev/null; do  # one pack at a time (the minute's, a stage's)
        tries=$((tries + 1))
        [ "$tries" -le 120 ] || { echo "note: no pack: $LEASE_OUT/.packing stayed locked" >&2; return 1; }
        sleep 1
    done
    find benchmarks -maxdepth 1 -name "*.json" -newer "$stamp" -exec cp {} "$LEASE_OUT/benchmarks/" \;
    local name
    for name in lease runs; do
        local what=(--exclude=./results/gpu/runs --exclude=./.packing .)
        [ "$name" = runs ] && what=(--exclude=checkpoint results/gpu/runs)
        [ -e "$LEASE_OUT/${what[-1]}" ] || continue
        # Status 1: a file changed or vanished while read (this log; a JSON's temporary), packed all the same.
        tar --warning=no-file-changed --warning=no-file-removed -czf "$FILES_BACK/$name.tgz.part" -C "$LEASE_OUT" \
            "${what[@]}"
        [ $? -le 1 ] && mv -f "$FILES_BACK/$name.tgz.part" "$FILES_BACK/$name.tgz"
    done
    rmdir "$LEASE_OUT/.packing"
}
# Every minute until the script ends (.done), or is gone ($$ stays the script's pid in the subshell).
( while [ ! -e "$LEASE_OUT/.done" ] && kill -0 $$ 2>/dev/null; do
    sleep 5
    [ $((SECONDS % 60)) -lt 5 ] && pack
done ) &
packer=$!

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1
    "$PYTHON" - <<'PY' 2>&1
import sys, jax, flax, optax, torch
print("python", sys.version.split()[0])
print("jax", jax.__version__, jax.default_backend(), jax.devices()[0].device_kind)
print("flax", flax.__version__, "optax", optax.__version__)
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
PY
    git log -1 --format='commit %H %s' 2>/dev/null
} | tee "$LEASE_OUT/device.txt"
cp "$LEASE_OUT/device.txt" "$FILES_BACK/"

# 1. The benchmark (its budget is soft: gpu_bench.sh stops it 45 s past BENCH_S at the latest).
BUDGET_S=$BENCH_S bash scripts/gpu_bench.sh
status=$?
pack
# 2. Parity on this device (scripts/gpu_parity.py: each framework's float32 logits against a float64 reference, TF32
#    on and off), at most PARITY_S; its JSON is rewritten after each network, so a cut run keeps what it finished.
timeout -k 10 "$PARITY_S" "$PYTHON" scripts/gpu_parity.py \
    --data-dir "${DATA_DIR:-data/mnist}" || echo "note: gpu_parity.py exited with $? (124: PARITY_S was spent)" >&2
pack
# 3. Is the GPU's compile paid once per machine or on every run? One epoch of `fast`, twice, in two processes that
#    share a persistent compilation cache of their own (empty at first even on a machine that ran this before, and
#    the runs of stage 4 do not read from it): each prints its compile seconds, and its metrics.json keeps them
#    (cache/first, cache/second), both within CACHE_S.
cache_end=$((SECONDS + CACHE_S))
cache_dir=$(mktemp -d)  # outside $LEASE_OUT: compiled programs do not travel back
for run in first second; do
    left=$((cache_end - SECONDS))
    [ "$left" -ge 10 ] || { echo "note: the cache's $run run not started: CACHE_S was spent" >&2; break; }
    JAXMNIST_COMPILE_CACHE=$cache_dir timeout -k 10 "$left" \
        "$PYTHON" -m jaxmnist.train --preset fast --epochs 1 --no-progress --no-report \
        --data-dir "${DATA_DIR:-data/mnist}" --logdir "$LEASE_OUT/cache/$run" \
        | grep -E "^(compile|device|final):" | sed "s/^/cache, $run run: /"
    code=${PIPESTATUS[0]}
    [ "$code" = 0 ] || echo "note: the cache's $run run exited with $code (124: CACHE_S was spent)" >&2
done
rm -rf "$cache_dir"
pack
# 4. The reproduction runs with what is left: every JAX run first (seed 0 of each preset, then more seeds), then
#    torch's with the rest; either stops at the budget and records what it skipped.
for framework in jax torch; do
    left=$((LEASE_S - SECONDS))
    if [ "$left" -lt 60 ]; then
        echo "note: reproduction runs of $framework not started: ${left} s of LEASE_S left" >&2
        continue
    fi
    OUT="$LEASE_OUT/results/gpu" BUDGET_S=$left bash scripts/gpu_reproduce.sh --frameworks "$framework" "$@" \
        || status=$?
done
touch "$LEASE_OUT/.done"
wait "$packer"  # never two packs at once
echo "gpu_lease: finished after ${SECONDS} s (exit $status); packing $LEASE_OUT into $FILES_BACK"
pack
ls -l "$FILES_BACK"
exit "$status"
