"""Reproduces the blog's experiments in JAX and PyTorch: every chosen preset, framework and seed, one run each.

    python scripts/reproduce.py --presets cnn_cpu,resnet --seeds 3
    python scripts/reproduce.py --presets cnn_deep --seeds 2 --epochs 20 --blog-quirks   # 'reduced epochs'
    python scripts/reproduce.py --epochs 1 --max-steps 5 --out /tmp/smoke                # smoke test
    python scripts/reproduce.py --table-only                   # rewrite results/README.md from the JSON files

Each run is its own process (`python -m jaxmnist.train` / `python -m torch_ref.train`): neither framework holds
GPU memory or threads while the other runs, and one failed run does not end the rest. Every run keeps its logs in
OUT/runs/<preset>/<framework>/seed<k> (metrics.json, TensorBoard events, curves.png). OUT/<preset>.json gathers
its runs (final, best, per-epoch test accuracy and time) with mean ± std per framework, the devices, versions,
commit and epochs run against the blog's (OUT/<preset>-blog-quirks.json and runs/<preset>-blog-quirks with
--blog-quirks); OUT/README.md is the table of all OUT/*.json (scripts/results_table.py).

Runs longer than a session: every run checkpoints each epoch into its logdir's `checkpoint/` and is started with
--resume, so a run that --budget-s stopped (or a kill, or a closed session) continues bit for bit the next time
the same command runs; the checkpoint is removed when the run ends. Its wall time is then rebuilt as the first
process's start-up plus every epoch. Each run records its machine and each epoch's load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.util
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import needs_jaxmnist  # noqa: F401  (before jaxmnist: one line, not a traceback, where it is missing)

import seed_ensemble
from jaxmnist import cli, host
from jaxmnist.cli import UsageError
from jaxmnist.continuation import changed_settings
from jaxmnist.presets import PRESETS, Config
from jaxmnist.runlog import atomic_write
from results_table import write_readme
from run_records import SEGMENTS, aggregate, refresh, run_record, succeeded

ROOT = Path(__file__).resolve().parent.parent

FRAMEWORKS = {"jax": "jaxmnist.train", "torch": "torch_ref.train"}
MIN_RUN_S = 10.0  # under --budget-s, no run starts with less than this left
# A run's checkpoints, in its logdir until it ends: a run stopped by --budget-s (or a session's end) continues there,
# bit for bit, in a later invocation. Each process it took is a line of run_records.SEGMENTS.
CHECKPOINTS = "checkpoint"
# What each framework's trainer imports, and how to get it: checked before the first run, since every run is a
# subprocess of this same interpreter and would otherwise fail one by one.
REQUIRES = {
    "jax": (("jax", "flax", "optax", "orbax", "tensorboardX", "tqdm", "matplotlib", "PIL"), "pip install -e ."),
    "torch": (
        ("torch", "torchvision", "jax", "flax", "tensorboardX", "tqdm", "matplotlib", "PIL"),
        "pip install -e '.[torch]'",
    ),
}


def name_list(text: str, valid) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(valid)}"
        )
    return names


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> cli.ArgumentParser:
    p = cli.script_parser("scripts/reproduce.py", __doc__)
    p.add_argument(
        "--presets",
        type=lambda t: name_list(t, PRESETS),
        default=list(PRESETS),
        help=f"comma-separated presets (default: all: {','.join(PRESETS)})",
    )
    p.add_argument(
        "--frameworks",
        type=lambda t: name_list(t, FRAMEWORKS),
        default=list(FRAMEWORKS),
        help="comma-separated: jax, torch (default: both)",
    )
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 per preset and framework")
    p.add_argument("--epochs", type=positive_int, help="fewer epochs than the blog's (labelled 'reduced epochs')")
    p.add_argument("--max-steps", type=positive_int, help="at most N steps per epoch (smoke tests only)")
    p.add_argument("--blog-quirks", action="store_true", help="the blog's own loop (see --help of either trainer)")
    p.add_argument(
        "--budget-s",
        type=float,
        help="stop after this many seconds in all: a run still going then is killed, later ones are skipped "
        "(both recorded); presets run in the order given, seeds 0, 1, ... alternating frameworks",
    )
    p.add_argument(
        "--rerun",
        action="store_true",
        help="run again every seed this invocation reaches (those it does not reach stay), and replace results "
        "made with other settings (refused otherwise); by default a seed that OUT/<preset>.json already holds, "
        "made with the same settings, is kept (so an interrupted or budgeted invocation can be continued)",
    )
    p.add_argument(
        "--jax-seeds",
        choices=("auto", "each", "together"),
        default="auto",
        help="JAX's seeds: each in its own process (the wall time per run is its own), or together in one "
        "process (jaxmnist.train --seeds: vmapped on a GPU); auto: together where JAX has a GPU or TPU",
    )
    p.add_argument("--num-workers", type=int, default=0, help="torch DataLoader workers (the blog used 4 on GPU)")
    p.add_argument("--data-dir", help="directory of the four MNIST IDX files (else jaxmnist.data's cache/sources)")
    p.add_argument("--out", default=str(ROOT / "results"), help="results directory (default: results/)")
    p.add_argument("--table-only", action="store_true", help="only rewrite OUT/README.md from OUT/*.json")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="with --table-only: first recompute each run's machine, start-up and shared epochs from its logs "
        "(OUT/runs/..., where still on disk) and every mean, by this version's rules",
    )
    return p


def run_one(framework: str, preset: str, seed: int, args, logdir: Path, deadline: float | None = None) -> dict:
    """One training process of one seed (see `run_seeds`)."""
    return run_seeds(framework, preset, [seed], args, logdir, deadline)[seed]


def run_seeds(
    framework: str, preset: str, seeds: list[int], args, logdir: Path, deadline: float | None = None
) -> dict[int, dict]:
    """One training process for `seeds` (several: JAX's --seeds, logs in LOGDIR/seed<k>); {seed: its metrics.json
    summarised, or the error it ended with}. A run still going at the `deadline` (time.monotonic()) is killed and
    recorded as 'stopped'; within MIN_RUN_S of it, none starts. Seeds trained together share the wall time."""

    def each(**what):
        return {s: {"seed": s, **what, "logdir": str(logdir)} for s in seeds}

    if deadline is not None and deadline - time.monotonic() < MIN_RUN_S:
        return each(skipped="--budget-s spent before it started")
    workdir = logdir / CHECKPOINTS
    # From scratch (asked, or nothing to resume: a finished run's checkpoint is gone, or a stopped one saved none):
    # no segments, no logs of an earlier run, which would make the new one count as resumed and mix two runs' curves.
    resumable = has_checkpoint(workdir)
    if (args.rerun or not resumable) and logdir.exists():
        shutil.rmtree(logdir)
    elif resumable and not (logdir / SEGMENTS).exists():  # its reproduce.py was stopped with it
        add_segment(logdir, None, "unrecorded")
    which = ["--seed", str(seeds[0])] if len(seeds) == 1 else ["--seeds", ",".join(map(str, seeds))]
    cmd = [sys.executable, "-m", FRAMEWORKS[framework], "--preset", preset, *which]
    cmd += ["--logdir", str(logdir), "--no-progress", "--workdir", str(workdir), "--resume"]
    cmd += ["--epochs", str(args.epochs or PRESETS[preset].epochs)]  # a resumed run keeps its checkpoint's
    cmd += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    cmd += ["--blog-quirks"] if args.blog_quirks else []
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--num-workers", str(args.num_workers)] if framework == "torch" else []
    # The evaluation report after the last epoch would count in the run's wall time (seed_ensemble.py writes JAX's
    # seeds' reports apart, outside it).
    cmd += ["--no-report"]
    label = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))} together"
    print(f"\n=== {preset} / {framework} / {label}: {' '.join(cmd[1:])}", flush=True)
    timeout = None if deadline is None else deadline - time.monotonic()
    start = time.perf_counter()
    try:  # stdout: the run's lines, live
        proc = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, timeout=timeout)
        wall_s = time.perf_counter() - start
    except subprocess.TimeoutExpired:
        add_segment(logdir, time.perf_counter() - start, "stopped")
        print(f"--- stopped: --budget-s {args.budget_s:g} s spent; the next invocation resumes it", flush=True)
        return each(stopped="killed at the --budget-s deadline; resumable from its checkpoint")
    add_segment(logdir, wall_s, "finished" if proc.returncode == 0 else "failed")
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return each(error=(proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1])
    if framework == "jax" and not args.blog_quirks:
        report_final_weights(logdir, workdir, seeds, args, deadline)
    shutil.rmtree(workdir, ignore_errors=True)  # the run is done: its record holds what is kept
    workers = args.num_workers if framework == "torch" else None
    return {s: run_record(s, logdir / f"seed{s}" if len(seeds) > 1 else logdir, wall_s, workers, seeds, logdir)
            for s in seeds}  # fmt: skip


def has_checkpoint(workdir: Path) -> bool:
    """Whether a run's workdir holds an epoch to resume: torch_ref's checkpoint.pt, or jaxmnist's (its own, or
    those of seeds trained one after another, in seed<k>/). Both trainers create the directory before any epoch."""
    from jaxmnist import checkpoint  # jax's import, here only: the launcher itself computes nothing

    candidates = [workdir, *workdir.glob("seed*")] if workdir.is_dir() else []
    return (workdir / "checkpoint.pt").exists() or any(checkpoint.saved_epoch(d) is not None for d in candidates)


def report_final_weights(logdir: Path, workdir: Path, seeds: list[int], args, deadline: float | None) -> None:
    """Each seed's final weights evaluated into its logdir's report (seed_ensemble), for the seeds' ensemble."""
    together = len(seeds) > 1  # one process's stacked seeds: each logs into its own seed<k>/
    for s in seeds:
        where = logdir / f"seed{s}" if together else logdir
        left = None if deadline is None else max(deadline - time.monotonic(), 1.0)
        problem = seed_ensemble.write_report(where, workdir, s if together else None, args.data_dir, ROOT, left)
        if problem:
            print(f"note: no report of seed {s}'s final weights, so no ensemble with it: {problem}", flush=True)


def add_segment(logdir: Path, wall_s: float | None, ended: str) -> None:
    """One process of a run, appended to LOGDIR/SEGMENTS: its wall time, how it ended, where and when. An earlier
    process that left a checkpoint but no segment (its reproduce.py was stopped too) is added as "unrecorded", with
    no wall time, when the next one resumes it."""
    path = logdir / SEGMENTS
    segments = json.loads(path.read_text()) if path.exists() else []
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    wall_s = None if wall_s is None else round(wall_s, 2)
    segments.append({"wall_s": wall_s, "ended": ended, "machine": host.machine(), "at": when})
    logdir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(segments, indent=1).encode())


def result_header(preset: str, args) -> tuple[dict, Path]:
    """What OUT/<name>.json says before its runs (the preset, its settings), and that file's path."""
    config = PRESETS[preset]
    epochs = args.epochs or config.epochs
    result = {
        "preset": preset,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "blog": {"final_acc": config.blog_result, "epoch_s": config.blog_epoch_s, "epochs": config.epochs},
        "epochs_run": epochs,
        "reduced_epochs": epochs < config.epochs,
        "max_steps": args.max_steps,
        "blog_quirks": args.blog_quirks,
        "seeds": args.seeds,
        "config": dataclasses.asdict(config.replace(epochs=epochs)),
        "frameworks": {},
    }
    name = preset + ("-blog-quirks" if args.blog_quirks else "")  # both loops' results can sit side by side
    return result, Path(args.out) / f"{name}.json"


def reproduce(preset: str, args, out: Path, deadline: float | None = None) -> dict:
    result, path = result_header(preset, args)
    name = path.stem
    kept, _ = earlier_runs(path, result)  # other settings: refused by _main unless --rerun replaces them
    # The earlier ensemble stays unless one of more seeds replaces it: its members' reports (OUT/runs) may not be
    # on disk (a fresh clone holds the results, not every run's logs), and the kept runs are the same runs.
    earlier_ensemble = json.loads(path.read_text()).get("ensemble") if kept and not args.rerun else None
    if earlier_ensemble:
        result["ensemble"] = earlier_ensemble
    runs = {framework: [] for framework in args.frameworks}
    together: dict[int, dict] = {}  # JAX's seeds trained in one process (--jax-seeds together), by seed
    for seed in range(args.seeds):  # seed by seed, alternating frameworks: a cut-off run stays comparable
        for framework in args.frameworks:
            if (framework, seed) in kept and not args.rerun:
                print(f"\n=== {preset} / {framework} / seed {seed}: kept from {path} (--rerun runs it again)")
                runs[framework].append(kept[framework, seed])
                continue
            if framework == "jax" and args.jax_seeds == "together":
                if seed not in together:  # every seed still missing, in one process
                    missing = [s for s in range(seed, args.seeds) if ("jax", s) not in kept or args.rerun]
                    dirname = f"seed{seed}" if len(missing) == 1 else "seeds" + "_".join(map(str, missing))
                    logdir = out / "runs" / name / "jax" / dirname
                    together.update(run_seeds("jax", preset, missing, args, logdir, deadline))
                runs[framework].append(together[seed])
            else:
                logdir = out / "runs" / name / framework / f"seed{seed}"
                runs[framework].append(run_one(framework, preset, seed, args, logdir, deadline))
            result["frameworks"] = with_kept(runs, kept)
            # After each run, so a cut-off invocation keeps what it finished; but never replace earlier results
            # with an invocation in which no run succeeded.
            if any(succeeded(r) for r in runs[framework]):
                atomic_write(path, json.dumps(result, indent=1).encode())
    result["frameworks"] = with_kept(runs, kept)
    if "jax" in result["frameworks"] and not args.blog_quirks:
        ok = [r for r in result["frameworks"]["jax"]["runs"] if succeeded(r)]
        ens = seed_ensemble.ensemble(ok, out, name, args.data_dir)
        if ens and len(ens["seeds"]) >= len((earlier_ensemble or {}).get("seeds", ())):
            result["ensemble"] = ens
            print(f"\n=== {preset} / jax: the ensemble of seeds {', '.join(map(str, ens['seeds']))}: "
                  f"{ens['final_acc']:.2f} % (members {ens['members_final_acc']['mean']:.2f} % on average)")
            atomic_write(path, json.dumps(result, indent=1).encode())
    return result


def with_kept(runs: dict[str, list[dict]], kept: dict) -> dict:
    """{framework: aggregate} of this invocation's runs and of every kept run it has not reached (yet): neither a
    cut-off invocation, nor one with fewer seeds or other frameworks, drops earlier results from the JSON."""
    by_seed: dict[str, dict[int, dict]] = {fw: {} for fw in runs}
    for (fw, seed), run in kept.items():
        by_seed.setdefault(fw, {})[seed] = run
    for fw, done in runs.items():
        by_seed[fw].update((run["seed"], run) for run in done)
    return {fw: aggregate([s[k] for k in sorted(s)]) for fw, s in by_seed.items() if s}


def earlier_runs(path: Path, result: dict) -> tuple[dict, list[str]]:
    """({(framework, seed): run} of the successful runs in an earlier `path` made with the same settings, []), or
    ({}, the settings that differ) when it holds successful runs made with others."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}, []
    runs = {(fw, run["seed"]): run for fw, agg in earlier.get("frameworks", {}).items() for run in agg["runs"]
            if succeeded(run)}  # fmt: skip
    # The config compared as a checkpoint's is (a tuple such as cnn_deep's blog_best comes back as a list).
    differs = changed_settings(earlier.get("config", {}), Config(**result["config"]))
    differs += [k for k in ("epochs_run", "max_steps", "blog_quirks") if earlier.get(k) != result[k]]
    return ({}, sorted(set(differs))) if differs and runs else (runs, [])


@functools.cache
def jax_backend() -> str:
    """JAX's default backend, asked in a child process: this one leaves the accelerator to the runs."""
    code = "import jax; print(jax.default_backend())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return proc.stdout.strip() or "cpu"


def missing_modules(frameworks: list[str]) -> str | None:
    """A one-line account of what this interpreter lacks for the chosen frameworks, or None."""
    for framework in frameworks:
        modules, install = REQUIRES[framework]
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            return f"{framework} runs need {', '.join(missing)}, which {sys.executable} cannot import (try: {install})"
    return None


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.table_only:
        if not list(out.glob("*.json")):
            raise UsageError(f"no results (*.json) in {out}")
        if args.refresh:
            for path in out.glob("*.json"):
                refresh(path)
        print(write_readme(out).read_text())
        return 0
    for preset in args.presets:  # results of other settings are replaced only when asked, never by a smoke run
        result, path = result_header(preset, args)
        if (differs := earlier_runs(path, result)[1]) and not args.rerun:
            raise UsageError(f"{path} holds runs made with other settings ({', '.join(differs)}): --rerun replaces "
                             "them, another --out keeps both")  # fmt: skip
    if args.refresh:  # without --table-only it would have started every run, refreshing nothing
        raise UsageError("--refresh rewrites the tables: give it with --table-only")
    if args.data_dir and not Path(args.data_dir).is_dir():  # before the runs, not once per run
        raise UsageError(f"--data-dir {args.data_dir} is not a directory")
    if args.num_workers < 0:
        raise UsageError(f"--num-workers must be >= 0, got {args.num_workers}")
    if problem := missing_modules(args.frameworks):
        raise UsageError(problem)
    if args.budget_s is not None and not (math.isfinite(args.budget_s) and args.budget_s > 0):
        raise UsageError(f"--budget-s must be > 0, got {args.budget_s}")
    deadline = None if args.budget_s is None else time.monotonic() + args.budget_s
    if args.jax_seeds == "auto":
        args.jax_seeds = "together" if "jax" in args.frameworks and jax_backend() != "cpu" else "each"
    out.mkdir(parents=True, exist_ok=True)
    failed = skipped = 0
    for preset in args.presets:
        result = reproduce(preset, args, out, deadline)
        failed += sum(agg["failed"] for agg in result["frameworks"].values())
        skipped += sum(agg["skipped"] for agg in result["frameworks"].values())
        write_readme(out)
    print("\n" + write_readme(out).read_text())
    if skipped:
        print(f"note: {skipped} run(s) skipped or stopped: --budget-s {args.budget_s:g} s was spent", file=sys.stderr)
    if failed:
        print(f"error: {failed} run(s) failed", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
