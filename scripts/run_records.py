"""A run's record and a preset's statistics, as scripts/reproduce.py keeps them: from a finished run's
metrics.json (and the segments of a run resumed across processes) to its accuracies, epoch times, wall time, time to
each of TARGETS and the epochs that shared the cores; the mean ± std over a preset's runs; and a results file's
records recomputed by today's rules (`refresh`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from jaxmnist import host
from jaxmnist.runlog import atomic_write, interim_series
from results_table import TARGETS

SEGMENTS = "segments.json"  # one line per process a run took (reproduce.add_segment)


def loaded_epochs(record: dict, num_workers: int | None = None) -> list[int]:
    """The epochs that shared the cores with other work, so that their times are not a quiet run's: other
    processes took over 15 % of the CPU (`host.SHARED_ABOVE`), or (runs recorded before that was measured) the
    1-minute load average exceeded the machine's cores + 0.5 (it lags, so it marks an epoch too many rather than
    too few). The load average too for a run with DataLoader workers (`num_workers`) recorded before its
    `others_cpu` counted the run's own processes (`others_cpu_scope`): that figure holds the workers' CPU."""
    found = re.search(r"(\d+) cores", record.get("machine", ""))
    cores = int(found.group(1)) if found else None
    measured = record.get("others_cpu_scope") == host.OTHERS_CPU_SCOPE or not num_workers

    def loaded(e: dict) -> bool:
        if measured and e.get("others_cpu") is not None:
            return e["others_cpu"] > host.SHARED_ABOVE
        return bool(cores) and e.get("load", 0) > cores + 0.5

    return [e["epoch"] for e in record["epochs"] if loaded(e)]


def run_record(seed: int, logdir: Path, wall_s: float, num_workers: int | None, together: list[int],
               process_dir: Path | None = None) -> dict:  # fmt: skip
    """A finished run's record from its metrics.json: accuracies, epoch times, wall time, time to TARGETS, the
    machine; `num_workers`: torch_ref's DataLoader workers (None for JAX); `process_dir`: where the process's
    SEGMENTS are, if not in `logdir` (seeds trained together log into its seed<k>/). A run resumed across processes
    counts as wall time its first process's start-up (imports, data, compilation) plus every epoch: about what one
    uninterrupted process would have taken, less the checkpoints and the finish of the processes before the last."""
    record = json.loads((logdir / "metrics.json").read_text())
    test_acc, epoch_s = [e["test_acc"] for e in record["epochs"]], [e["time_s"] for e in record["epochs"]]
    path = (process_dir or logdir) / SEGMENTS
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
        "convolutions": record.get("convolutions"),
        "other_machines": sorted({e["machine"] for e in record["epochs"] if "machine" in e}),
        "loaded_epochs": loaded_epochs(record, num_workers),
        "segments": len(segments) if resumed else None,
        "num_workers": num_workers,
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
    """A run's mean epoch time over the epochs that had the cores to themselves (by `loaded_epochs`: a run made
    before loads were recorded has none listed, so all its epochs count); None for a run without that field, or
    where every epoch shared the cores."""
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
                    loaded_epochs=loaded_epochs(record, run.get("num_workers")),
                )
            if succeeded(run) and run.get("epoch_s") and run.get("wall_s") is not None:
                run["time_to"] = times_to(run["test_acc"], run["epoch_s"], run["wall_s"], run.get("interim"),
                                          run.get("startup_s"))  # fmt: skip
        result["frameworks"][fw] = aggregate(agg["runs"])
    atomic_write(path, json.dumps(result, indent=1).encode())
