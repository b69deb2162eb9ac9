"""The seeds of a reproduction as an ensemble (issue 23): each finished JAX run's final weights evaluated on the
test set into <run logdir>/report (jaxmnist.evaluate, in its own process: not part of the run's wall time), then
the mean of the runs' probabilities scored as one model, its report written like a single model's.

Used by scripts/reproduce.py: the ensemble lands in OUT/<name>.json under "ensemble", its report in
OUT/runs/<name>/jax/ensemble/.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from jaxmnist import data as data_lib
from jaxmnist import evaluate

REPORT = "report"  # a run's report, in its logdir
MIN_MEMBERS = 2


def write_report(
    logdir: Path, workdir: Path, seed: int | None, data_dir: str | None, cwd: Path, timeout: float | None = None
) -> str | None:
    """The final ('latest') checkpoint of WORKDIR (of `seed` where seeds were trained together) evaluated into
    LOGDIR/report within `timeout` seconds; None, or why not (the run stays a success: only the ensemble lacks
    it)."""
    cmd = [sys.executable, "-m", "jaxmnist.evaluate", "--workdir", str(workdir), "--which", "latest",
           "--out", str(logdir / REPORT)]  # fmt: skip
    cmd += ["--seed", str(seed)] if seed is not None else []
    cmd += ["--data-dir", data_dir] if data_dir else []
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"the evaluation took over {timeout:.0f} s, the budget left"
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]


def here(logdir: str, out: Path) -> Path:
    """A run's logdir as its record holds it (a path on the machine that ran it) under this OUT: from its last
    'runs' component on."""
    parts = Path(logdir).parts
    if "runs" not in parts:
        return Path(logdir)
    return out.joinpath(*parts[len(parts) - 1 - parts[::-1].index("runs") :])


def ensemble(runs: list[dict], out: Path, name: str, data_dir: str | None = None) -> dict | None:
    """The ensemble of the runs (JAX's records of OUT/<name>.json) whose report holds probabilities: its accuracy
    beside its members', its report in OUT/runs/<name>/jax/ensemble; None with fewer than MIN_MEMBERS."""
    reports = {r["seed"]: here(r["logdir"], out) / REPORT for r in runs if r.get("logdir")}
    members = [r for r in runs if r["seed"] in reports and (reports[r["seed"]] / evaluate.PROBABILITIES).exists()]
    if len(members) < MIN_MEMBERS:
        return None
    probs = evaluate.mean_probabilities([reports[r["seed"]] for r in members])
    data = data_lib.load("mnist", data_dir, progress=False)
    summary = evaluate.summarise(probs, data.test_labels)
    target = out / "runs" / name / "jax" / "ensemble"
    evaluate.write(summary, data.test_images, target, probs=probs)
    accs = [r["final_acc"] for r in members]
    return {
        "seeds": [r["seed"] for r in members],
        "final_acc": summary["accuracy"],
        "members_final_acc": {"mean": float(np.mean(accs)), "min": float(np.min(accs)), "max": float(np.max(accs))},
        "misclassified": len(summary["misclassified"]),
        "report": str(target.relative_to(out)),
    }
