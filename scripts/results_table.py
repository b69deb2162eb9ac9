"""The results table (results/README.md) from the JSON files scripts/reproduce.py writes, one per preset.

    python scripts/results_table.py results/       # rewrite results/README.md and print it
    python scripts/reproduce.py --table-only       # the same, for results/

Every time in it names its machine (CPU model, family/model, vector extensions, cores: jaxmnist.host), listed
under the table as M1, M2, ...; a JAX/torch ratio is given only where both frameworks ran on one machine. Epoch
times come from the epochs that had the cores to themselves (each epoch records the CPU time other processes
took meanwhile, `others_cpu`; older records, the load average: run_records.loaded_epochs); a dagger marks a figure
from epochs that shared them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import needs_jaxmnist  # noqa: F401  (before jaxmnist: one line, not a traceback, where it is missing)

from jaxmnist import cli
from jaxmnist.cli import UsageError, script_parser
from jaxmnist.presets import PRESETS
from jaxmnist.runlog import atomic_write

TARGETS = (99.0, 99.5)  # time to reach these test accuracies is recorded per run (time-to-accuracy)
LOADED = "†"
# Written by hand beside the JSONs: what reproduced and what did not, and why. The README carries it under its
# own heading, so regenerating the tables keeps it; the numbers it quotes come from the tables above it.
FINDINGS = "findings.md"


def fmt(stat: dict | None, unit: str = " %", digits: int = 2) -> str:
    if not stat:
        return "—"
    if stat["n"] == 1:
        return f"{stat['mean']:.{digits}f}{unit}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}{unit}"


def epoch_time(agg: dict | None) -> tuple[dict | None, bool]:
    """(mean ± std epoch time, whether it came from epochs that shared the cores): quiet epochs where recorded."""
    if not agg:
        return None, False
    if agg.get("quiet_epoch_s"):
        return agg["quiet_epoch_s"], False
    return agg["avg_epoch_s"], bool(agg.get("loaded_runs"))


def machine_labels(results: list[dict]) -> dict[str, str]:
    """{machine: 'M1', ...} in order of first appearance."""
    labels: dict[str, str] = {}
    for r in results:
        for agg in r["frameworks"].values():
            for m in agg.get("machines", []):
                labels.setdefault(m, f"M{len(labels) + 1}")
    return labels


def gpus(agg: dict) -> list[str]:
    """The accelerators a framework's runs trained on ('gpu:NVIDIA H200', 'cuda:NVIDIA H200'), none on a CPU."""
    return [d for d in agg.get("devices", []) if not d.startswith("cpu")]


def where(agg: dict, labels: dict[str, str]) -> str:
    """The machines of a framework's runs (M1...), or its devices where none was recorded (older runs)."""
    machines = [labels[m] for m in agg.get("machines", [])]
    return ", ".join(machines + gpus(agg)) or f"{', '.join(agg['devices'])} (machine not recorded)"


def table(results: list[dict], labels: dict[str, str]) -> str:
    header = (
        "| preset | blog final (s/epoch) | epochs run | seeds JAX / torch | JAX final | JAX best | torch final "
        "| torch best | s/epoch JAX / torch | JAX / torch | machine |"
    )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        fw = r["frameworks"]
        blog = f"{r['blog']['final_acc']:.2f} %" if r["blog"]["final_acc"] is not None else "—"
        if r["blog"]["epoch_s"] is not None:
            blog += f" ({r['blog']['epoch_s']:.2f} s)"
        epochs = f"{r['epochs_run']} of {r['blog']['epochs']}" + (" (reduced epochs)" if r["reduced_epochs"] else "")
        if r["max_steps"]:
            epochs += f", ≤ {r['max_steps']} steps/epoch"
        cells = [f"`{r['preset']}`" + (" (blog quirks)" if r["blog_quirks"] else ""), blog, epochs]
        cells.append(
            " / ".join(
                str(fw[n]["final_acc"]["n"]) if fw.get(n, {}).get("final_acc") else "0" for n in ("jax", "torch")
            )
        )
        for name in ("jax", "torch"):
            agg = fw.get(name)
            cells += [fmt(agg and agg["final_acc"]), fmt(agg and agg["best_acc"])]
        times = {n: epoch_time(fw.get(n)) for n in ("jax", "torch")}
        cells.append(" / ".join(fmt(t, " s") + (LOADED if loaded else "") for t, loaded in times.values()))
        cells.append(ratio(fw, times))
        cells.append("; ".join(f"{n}: {where(fw[n], labels)}" for n in fw))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ratio(fw: dict, times: dict) -> str:
    """JAX's epoch time over torch's, where both ran on one and the same machine (else '—')."""
    (jax_t, jax_loaded), (torch_t, torch_loaded) = times["jax"], times["torch"]
    machines = {m for n in ("jax", "torch") for m in fw.get(n, {}).get("machines", [])}
    if not (jax_t and torch_t) or len(machines) != 1:
        return "—"
    return f"{jax_t['mean'] / torch_t['mean']:.2f}" + (LOADED if jax_loaded or torch_loaded else "")


def time_table(results: list[dict], epoch_s: dict[str, dict]) -> str:
    """Time to accuracy: per preset and framework with wall times, the wall time per run (compile included) and the
    time to each of TARGETS (mean over the runs that reached it); then the blog's runs that reached 99.5 %, at its
    own speed and at this table's measured s/epoch (`epoch_s`: preset -> framework -> seconds)."""
    header = (
        "| preset | framework | runs | final accuracy | wall time per run | "
        + " | ".join(f"time to {t:g} % (runs reaching it)" for t in TARGETS)
        + " |"
    )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        for name, agg in r["frameworks"].items():
            if not agg.get("wall_s"):
                continue
            n = agg["final_acc"]["n"]
            reach = [agg["time_to"][str(t)] for t in TARGETS]
            marks = LOADED if agg.get("loaded_runs") else ""
            if agg.get("resumed_runs"):
                marks += f" ({agg['resumed_runs']} resumed)"
            cells = [f"`{r['preset']}`", name, str(n), fmt(agg["final_acc"]), fmt(agg["wall_s"], " s", 0) + marks]
            cells += [f"{fmt(s, ' s', 0)} ({s['n'] if s else 0}/{n})" for s in reach]
            rows.append("| " + " | ".join(cells) + " |")
    for preset, config in PRESETS.items():
        if config.blog_best and config.blog_best[1] >= TARGETS[-1] and config.blog_epoch_s:
            epoch, acc = config.blog_best
            here = "; ".join(
                f"{fw} here: {epoch} × {s['mean']:.0f} s = {epoch * s['mean'] / 3600:.1f} h"
                for fw, s in epoch_s.get(preset, {}).items()
                if s
            )
            rows.append(
                f"| `{preset}` (the blog's run) | its GPU | 1 | {config.blog_result:.2f} % (best {acc:.2f} %) | "
                f"{config.epochs} × {config.blog_epoch_s:.2f} s = {config.epochs * config.blog_epoch_s:.0f} s | "
                f"before epoch 80 (epochs 1-79 not printed) | epoch {epoch}: "
                f"{epoch * config.blog_epoch_s:.0f} s{'; ' + here if here else ''} |"
            )
    return "\n".join(rows)


def in_progress(out: Path) -> list[str]:
    """Runs stopped part-way, whose checkpoint (committed until they end) the next invocation resumes from."""
    found = []
    for workdir in sorted(out.glob("runs/*/*/*/checkpoint")):
        logdir = workdir.parent
        try:
            epochs = len(json.loads((logdir / "metrics.json").read_text())["epochs"])
        except (OSError, ValueError, KeyError):
            epochs = 0
        found.append(f"`{logdir.relative_to(out)}` after epoch {epochs}")
    return found


def notes(results: list[dict], labels: dict[str, str], out: Path) -> list[str]:
    """The paragraphs under the tables: machines, runs in progress, failures, what the marks mean."""
    runs = [run for r in results for a in r["frameworks"].values() for run in a["runs"]]
    failed = sum(agg["failed"] for r in results for agg in r["frameworks"].values())
    skipped = sum(agg.get("skipped", 0) for r in results for agg in r["frameworks"].values())
    lines = ["Machines: " + "; ".join(f"{label}: {m}" for m, label in labels.items()) + "." if labels else ""]
    if going := in_progress(out):
        lines.append(
            "In progress (not in the tables yet): " + "; ".join(going) + ". Each keeps its checkpoint in its "
            "`checkpoint/` directory, committed so that a later session resumes it (`bash scripts/blog_runs.sh`); "
            "it is removed when the run ends."
        )
    for r in results:
        if ens := r.get("ensemble"):
            lines.append(
                f"Ensemble of `{r['preset']}`'s JAX seeds {', '.join(map(str, ens['seeds']))} (their test-set "
                f"probabilities averaged, scripts/seed_ensemble.py): **{ens['final_acc']:.2f} %**, against "
                f"{ens['members_final_acc']['mean']:.2f} % for its members on average "
                f"({ens['members_final_acc']['min']:.2f}-{ens['members_final_acc']['max']:.2f} %); "
                f"its report: `{ens['report']}`."
            )
    if failed:
        lines.append(f"{failed} run(s) failed: see `error` in the JSON files.")
    if skipped:
        lines.append(f"{skipped} run(s) skipped or stopped by `--budget-s`; a stopped run resumes in the next invocation.")
    lines.append(
        f"{LOADED}: from epochs that shared the cores with other work (other processes took over 15 % of the "
        "machine's CPU; in runs made before that was measured, a 1-minute load average over the cores + 0.5): "
        "slower than a quiet run. Epoch times without it come from quiet epochs, or from runs made before loads "
        "were recorded."
    )
    if any(run.get("segments") for run in runs):
        lines.append(
            "Resumed: runs continued from their checkpoint in a later invocation (bit for bit as if "
            "uninterrupted); their wall time is the first process's start-up (imports, data, compilation) plus "
            "every epoch, what one process would have taken."
        )
    return [line for line in lines if line]


def findings(out: Path) -> list[str]:
    """The hand-written section (FINDINGS), if `out` has one."""
    path = out / FINDINGS
    if not path.is_file():
        return []
    return ["## What reproduced and what did not", "", path.read_text().strip(), ""]


def load_results(out: Path) -> list[dict]:
    """Every <preset>.json of `out`, in the blog's order of presets (the same preset's quirky run after it); a
    UsageError naming a file that is not one of scripts/reproduce.py's (an ablation's, another JSON)."""
    results = []
    for path in sorted(out.glob("*.json")):
        try:
            result = json.loads(path.read_text())
            if not (result["preset"] in PRESETS and {"blog_quirks", "frameworks"} <= result.keys()):
                raise KeyError("preset")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"{path} is not a results file of scripts/reproduce.py ({type(e).__name__})") from None
        results.append(result)
    return sorted(results, key=lambda r: (list(PRESETS).index(r["preset"]), r["blog_quirks"]))


def write_readme(out: Path) -> Path:
    results = load_results(out)
    labels = machine_labels(results)
    epoch_s = {r["preset"]: {n: epoch_time(a)[0] for n, a in r["frameworks"].items()} for r in results}
    together = any(run.get("trained_with") for r in results for a in r["frameworks"].values() for run in a["runs"])
    text = "\n".join(
        [
            "# Reproduction of the blog's experiments",
            "",
            "Written by `scripts/reproduce.py`; regenerate it from the JSON files with `python "
            "scripts/results_table.py DIR` (DIR: this directory). Each run and its logs: `<preset>.json`, `runs/`.",
            "",
            table(results, labels),
            "",
            "Accuracies are test accuracy after the last epoch (final) and the highest per-epoch test accuracy (best, "
            "selected on the test set as the blog does), mean ± sample std over the runs that finished (seeds 0, 1, "
            "...; their number per framework in the 'seeds' column). "
            "s/epoch is the mean epoch time (training plus evaluation; JAX's compilation is kept out); JAX / torch "
            "is their ratio where both ran on one machine. The blog's "
            "numbers are its single runs. Presets marked 'blog quirks' reproduce the blog's own loop; otherwise the "
            "loop is the correct one (see the README).",
            "",
            *[line + "\n" for line in notes(results, labels, out)],
            *findings(out),
            "## Time to accuracy",
            "",
            time_table(results, epoch_s),
            "",
            "Wall time: from the trainer's process start to its exit (imports, data loading and compilation "
            "included), measured by `scripts/reproduce.py`. Time to X %: from the same start to the end of the "
            "first evaluation whose test accuracy reached X % (an epoch's end, or with `--evals-per-epoch` one "
            "inside an epoch; read off the test curve; nothing is selected by it): the start-up the run's "
            "metrics.json records, then its epochs up to that evaluation. Not the run's finish after its last "
            "epoch (its reports), nor the checkpoint written after each epoch (0.15-0.3 s for the sprint); runs "
            "that recorded no start-up count both (their wall time less what came after)."
            + (
                " Runs trained together in one process (`--jax-seeds together`: vmapped on a GPU) count that "
                "process's whole wall time, each."
                if together
                else ""
            ),
            "",
        ]
    )
    path = out / "README.md"
    atomic_write(path, text.encode())
    return path


def main(argv: list[str] | None = None) -> int:
    p = script_parser("scripts/results_table.py", __doc__)
    p.add_argument("out", nargs="?", default=str(Path(__file__).resolve().parent.parent / "results"))
    args = p.parse_args(argv)
    out = Path(args.out)
    if not list(out.glob("*.json")):
        print(f"error: no results (*.json) in {out}", file=sys.stderr)
        return 2
    return cli.run(lambda: print(write_readme(out).read_text()))


if __name__ == "__main__":
    sys.exit(main())
