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
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import needs_jaxmnist  # before jaxmnist: one line, not a traceback, where it is missing
import numpy as np
import seed_ensemble

from jaxmnist import cli, host
from jaxmnist.cli import UsageError
from jaxmnist.presets import PRESETS, Config, changed_settings
from jaxmnist.runlog import atomic_write, interim_series
from results_table import TARGETS, write_readme

ROOT = Path(__file__).resolve().parent.parent

FRAMEWORKS = {"jax": "jaxmnist.train", "torch": "torch_ref.train"}
MIN_RUN_S = 10.0  # under --budget-s, no run starts with less than this left
# A run's checkpoints, in its logdir until it ends: a run stopped by --budget-s (or a session's end) continues there,
# bit for bit, in a later invocation. Each process it took is a line of SEGMENTS.
CHECKPOINTS, SEGMENTS = "checkpoint", "segments.json"
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
        help="run every seed again; by default a seed that OUT/<preset>.json already holds, made with the same "
        "settings, is kept (so an interrupted or budgeted invocation can be continued)",
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
    # From scratch (asked, or nothing to resume: a finished run's checkpoint is gone): no segments, no logs of an
    # earlier run, which would make the new one count as resumed and mix two runs' curves.
    if (args.rerun or not workdir.exists()) and logdir.exists():
        shutil.rmtree(logdir)
    elif workdir.exists() and not (logdir / SEGMENTS).exists():  # its reproduce.py was stopped with it
        add_segment(logdir, None, "unrecorded")
    which = ["--seed", str(seeds[0])] if len(seeds) == 1 else ["--seeds", ",".join(map(str, seeds))]
    cmd = [sys.executable, "-m", FRAMEWORKS[framework], "--preset", preset, *which]
    cmd += ["--logdir", str(logdir), "--no-progress", "--workdir", str(workdir), "--resume"]
    cmd += ["--epochs", str(args.epochs)] if args.epochs else []
    cmd += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    cmd += ["--blog-quirks"] if args.blog_quirks else []
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--num-workers", str(args.num_workers)] if framework == "torch" else []
    # The evaluation report after the last epoch would count in JAX's wall time (torch_ref writes none).
    cmd += ["--no-report"] if framework == "jax" else []
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
    return {
        s: summarise(s, logdir / f"seed{s}" if len(seeds) > 1 else logdir, wall_s, framework, args, seeds)
        for s in seeds
    }


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


def loaded_epochs(record: dict) -> list[int]:
    """The epochs that shared the cores with other work, so that their times are not a quiet run's: other
    processes took over 15 % of the CPU (`host.SHARED_ABOVE`), or (runs recorded before that was measured) the
    1-minute load average exceeded the machine's cores + 0.5 (it lags, so it marks an epoch too many rather than
    too few)."""
    found = re.search(r"(\d+) cores", record.get("machine", ""))
    cores = int(found.group(1)) if found else None

    def loaded(e: dict) -> bool:
        if e.get("others_cpu") is not None:
            return e["others_cpu"] > host.SHARED_ABOVE
        return bool(cores) and e.get("load", 0) > cores + 0.5

    return [e["epoch"] for e in record["epochs"] if loaded(e)]


def summarise(seed: int, logdir: Path, wall_s: float, framework: str, args, together: list[int]) -> dict:
    """A finished run's record from its metrics.json: accuracies, epoch times, wall time, time to TARGETS, the
    machine. A run resumed across processes counts as wall time its first process's start-up (imports, data,
    compilation) plus every epoch: what one uninterrupted process would have taken."""
    record = json.loads((logdir / "metrics.json").read_text())
    test_acc, epoch_s = [e["test_acc"] for e in record["epochs"]], [e["time_s"] for e in record["epochs"]]
    path = logdir / SEGMENTS
    segments = json.loads(path.read_text()) if path.exists() else []
    resumed = is_resumed(len(segments), epoch_s, wall_s)
    wall_s = run_wall_s(record, epoch_s, wall_s, resumed)
    interim = interim_evaluations(record)
    return {
        "seed": seed,
        "final_acc": record["final_acc"],
        "best_acc": record["best_acc"],
        "best_epoch": record["best_epoch"],
        "test_acc": test_acc,
        "epoch_s": epoch_s,
        "avg_epoch_s": record["avg_epoch_s"],
        "compile_s": record["compile_s"],
        "wall_s": wall_s,
        "time_to": times_to(test_acc, epoch_s, wall_s, interim, record.get("startup_s")),
        **({"interim": interim} if interim else {}),
        "device": record["device"],
        "versions": record["versions"],
        "commit": record["commit"],
        "startup_s": record.get("startup_s"),
        "machine": record.get("machine"),
        "other_machines": sorted({e["machine"] for e in record["epochs"] if "machine" in e}),
        "loaded_epochs": loaded_epochs(record),
        "segments": len(segments) if resumed else None,
        "num_workers": args.num_workers if framework == "torch" else None,
        "trained_with": together if len(together) > 1 else None,  # seeds of one process: wall time shared
        "logdir": str(logdir),
    }


def is_resumed(segments: int, epoch_s: list[float], last_wall_s: float) -> bool:
    """Whether a run's epochs came from several processes: it has several segments, or (a run whose first
    reproduce.py was stopped before it could record one) its last process took less time than its epochs did."""
    return segments > 1 or sum(epoch_s) > last_wall_s


def run_wall_s(record: dict, epoch_s: list[float], last_wall_s: float, resumed: bool) -> float:
    """The wall time of one uninterrupted process: a resumed run's first start-up (imports, data, compilation)
    plus every epoch; else its process's own."""
    return record["startup_s"] + sum(epoch_s) if resumed and record.get("startup_s") is not None else last_wall_s


def times_to(test_acc: list[float], epoch_s: list[float], wall_s: float, interim=None,
             startup_s: float | None = None) -> dict[str, float | None]:  # fmt: skip
    """`time_to` each of TARGETS, keyed as the JSON keeps them."""
    return {str(t): time_to(t, test_acc, epoch_s, wall_s, interim, startup_s) for t in TARGETS}


def time_to(target: float, test_acc: list[float], epoch_s: list[float], wall_s: float, interim=None,
            startup_s: float | None = None) -> float | None:  # fmt: skip
    """Seconds from the process's start (imports, data, compilation included) to the end of the first evaluation
    whose test accuracy reached `target`: the run's start-up (`startup_s`, as metrics.json records it), then its
    epochs up to that evaluation; None if none did. Without a recorded start-up, the run's wall time less what came
    after the evaluation, which also counts the run's finish (its reports: about 4 s of a sprint run) and the
    checkpoints written between epochs (0.15-0.3 s each for the sprint, outside the epochs' times). `interim`:
    per epoch, its evaluations before its end as [test accuracy, seconds into the epoch] (--evals-per-epoch);
    without them, only the epochs' ends count."""
    before = wall_s - sum(epoch_s) if startup_s is None else startup_s
    for k, (acc, seconds) in enumerate(zip(test_acc, epoch_s)):
        for interim_acc, at_s in interim[k] if interim else ():
            if interim_acc >= target:
                return before + sum(epoch_s[:k]) + at_s
        if acc >= target:
            return before + sum(epoch_s[: k + 1])
    return None


def interim_evaluations(record: dict) -> list | None:
    """A run record's evaluations inside its epochs, as `time_to` takes them; None for a run without them."""
    return interim_series(record, "test_acc", "at_s")


def mean_std(values: list[float]) -> dict | None:
    if not values:
        return None
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def quiet_epoch_s(run: dict) -> float | None:
    """A run's mean epoch time over the epochs that had the cores to themselves; None where it recorded no load
    (runs made before loads were recorded) or every epoch shared the cores."""
    if "loaded_epochs" not in run:
        return None
    quiet = [t for i, t in enumerate(run["epoch_s"]) if i + 1 not in run["loaded_epochs"]]
    return float(np.mean(quiet)) if quiet else None


def succeeded(run: dict) -> bool:
    return not {"error", "skipped", "stopped"} & run.keys()


def aggregate(runs: list[dict]) -> dict:
    ok = [r for r in runs if succeeded(r)]
    return {
        "runs": runs,
        "final_acc": mean_std([r["final_acc"] for r in ok]),
        "best_acc": mean_std([r["best_acc"] for r in ok]),
        "avg_epoch_s": mean_std([r["avg_epoch_s"] for r in ok]),
        # Runs recorded before wall times were (older result files) have none.
        "wall_s": mean_std([r["wall_s"] for r in ok if "wall_s" in r]),
        "time_to": {
            str(t): mean_std([r["time_to"][str(t)] for r in ok if r.get("time_to", {}).get(str(t)) is not None])
            for t in TARGETS
        },
        "devices": sorted({r["device"] for r in ok}),
        # A run resumed on another machine names both: its epoch times and ratios then mix the two.
        "machines": sorted({m for r in ok for m in (r.get("machine"), *r.get("other_machines", [])) if m}),
        # Epoch times of quiet epochs only (runs that recorded their load; the others: None).
        "quiet_epoch_s": mean_std([q for r in ok if (q := quiet_epoch_s(r)) is not None]),
        "loaded_runs": sum(bool(r.get("loaded_epochs")) for r in ok),
        "resumed_runs": sum(bool(r.get("segments")) for r in ok),
        "versions": ok[0]["versions"] if ok else None,
        "commit": ok[0]["commit"] if ok else None,
        "failed": sum("error" in r for r in runs),
        "skipped": sum("skipped" in r or "stopped" in r for r in runs),
    }


def reproduce(preset: str, args, out: Path, deadline: float | None = None) -> dict:
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
    path = out / f"{name}.json"
    kept = {} if args.rerun else earlier_runs(path, result)
    runs = {framework: [] for framework in args.frameworks}
    together: dict[int, dict] = {}  # JAX's seeds trained in one process (--jax-seeds together), by seed
    for seed in range(args.seeds):  # seed by seed, alternating frameworks: a cut-off run stays comparable
        for framework in args.frameworks:
            if (framework, seed) in kept:
                print(f"\n=== {preset} / {framework} / seed {seed}: kept from {path} (--rerun runs it again)")
                runs[framework].append(kept[framework, seed])
                continue
            if framework == "jax" and args.jax_seeds == "together":
                if seed not in together:  # every seed still missing, in one process
                    missing = [s for s in range(seed, args.seeds) if ("jax", s) not in kept]
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
        if ens := seed_ensemble.ensemble(ok, out, name, args.data_dir):
            result["ensemble"] = ens
            print(f"\n=== {preset} / jax: the ensemble of seeds {', '.join(map(str, ens['seeds']))}: "
                  f"{ens['final_acc']:.2f} % (members {ens['members_final_acc']['mean']:.2f} % on average)")
            atomic_write(path, json.dumps(result, indent=1).encode())
    return result


def refresh(path: Path) -> None:
    """OUT/<name>.json with each finished run's logged facts (machine, start-up, shared epochs) read again from its
    metrics.json where OUT/runs still holds it, and the means recomputed: rules change, runs are not re-run."""
    result = json.loads(path.read_text())
    name = path.stem
    for fw, agg in result["frameworks"].items():
        for run in agg["runs"]:
            logdir = path.parent / "runs" / name / fw / f"seed{run['seed']}"
            if succeeded(run) and not run.get("trained_with") and (logdir / "metrics.json").exists():
                record = json.loads((logdir / "metrics.json").read_text())
                # Resumed, its first process unrecorded (no segment to count): summarised as its last process.
                if run.get("wall_s") and is_resumed(0, run.get("epoch_s", []), run["wall_s"]):
                    wall_s = run_wall_s(record, run["epoch_s"], run["wall_s"], resumed=True)
                    run.update(wall_s=wall_s, segments=(run.get("segments") or 1) + 1)
                run.update(
                    startup_s=record.get("startup_s"),
                    machine=record.get("machine"),
                    other_machines=sorted({e["machine"] for e in record["epochs"] if "machine" in e}),
                    loaded_epochs=loaded_epochs(record),
                )
            if succeeded(run) and run.get("epoch_s") and run.get("wall_s") is not None:
                run["time_to"] = times_to(run["test_acc"], run["epoch_s"], run["wall_s"], run.get("interim"),
                                          run.get("startup_s"))  # fmt: skip
        result["frameworks"][fw] = aggregate(agg["runs"])
    atomic_write(path, json.dumps(result, indent=1).encode())


def with_kept(runs: dict[str, list[dict]], kept: dict) -> dict:
    """{framework: aggregate} of this invocation's runs and of every kept run it has not reached (yet): neither a
    cut-off invocation, nor one with fewer seeds or other frameworks, drops earlier results from the JSON."""
    by_seed: dict[str, dict[int, dict]] = {fw: {} for fw in runs}
    for (fw, seed), run in kept.items():
        by_seed.setdefault(fw, {})[seed] = run
    for fw, done in runs.items():
        by_seed[fw].update((run["seed"], run) for run in done)
    return {fw: aggregate([s[k] for k in sorted(s)]) for fw, s in by_seed.items() if s}


def earlier_runs(path: Path, result: dict) -> dict:
    """{(framework, seed): run} of the successful runs in an earlier `path` made with the same settings."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    # The config compared as a checkpoint's is (a tuple such as cnn_deep's blog_best comes back as a list).
    if changed_settings(earlier.get("config", {}), Config(**result["config"])) or any(
        earlier.get(k) != result[k] for k in ("epochs_run", "max_steps", "blog_quirks")
    ):
        return {}
    return {
        (fw, run["seed"]): run
        for fw, agg in earlier.get("frameworks", {}).items()
        for run in agg["runs"]
        if succeeded(run)
    }


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
