"""The frontier: final test accuracy against wall time, every full-length run of results/*.json and
results/gpu/*.json, the blog's runs and the published references (docs/frontier.png).

    python scripts/frontier.py                     # results/ and results/gpu/ -> docs/frontier.png
    python scripts/frontier.py results/ --out /tmp/frontier.png

One point per run (JAX and torch_ref in two colours; circles on CPUs, triangles on GPUs), mean ± std per preset,
framework and kind of device as a cross, the CPU machine (M1, M2, ... as in results/README.md) or the GPU beside
each preset; a preset's JAX seeds as an ensemble where its JSON
records one, at the sum of their wall times. Only runs of the preset's full length with a measured
wall time (process start to exit, compilation included) are drawn; a run's accuracy is its last epoch's, never a
best epoch picked on the test set. The blog's runs and the references are drawn where they state a time (on their
own hardware, named beside them); references that state no time are horizontal lines.
"""

from __future__ import annotations

import sys
from pathlib import Path

import needs_jaxmnist  # noqa: F401  (before jaxmnist: one line, not a traceback, where it is missing)
import numpy as np

import results_table
from jaxmnist import cli
from jaxmnist.cli import UsageError, script_parser
from jaxmnist.runlog import atomic_write
from results_table import load_results, machine_labels

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {"jax": "C0", "torch": "C3"}
NAMES = {"jax": "JAX (jaxmnist)", "torch": "PyTorch (torch_ref)"}
# Published single-model results (final epoch), as issue 23 lists them; seconds only where the source states a time.
REFERENCES = (
    ("tuomaso/train_mnist_fast, 1 epoch", 99.04, 0.76, "GTX 1660 Ti"),
    ("ttdoucet/mnist, 11 epochs", 99.74, 300.0, "P100"),
    ("Deotte (Kaggle), 35 epochs", 99.65, None, None),
    ("An et al. 2020, 150 epochs", 99.70, None, None),
)


def gpus(agg: dict) -> list[str]:
    """The GPUs a framework's runs trained on by name ('NVIDIA H200'; results_table.gpus), none on a CPU."""
    return sorted({d.split(":", 1)[-1] for d in results_table.gpus(agg)})


def full_runs(result: dict) -> dict[str, list[tuple[float, float]]]:
    """{framework: [(wall seconds, final accuracy)]} of the runs that ran the preset's length and timed it."""
    if result["reduced_epochs"] or result["max_steps"]:
        return {}
    return {
        fw: [(r["wall_s"], r["final_acc"]) for r in agg["runs"] if r.get("wall_s") and r.get("final_acc") is not None]
        for fw, agg in result["frameworks"].items()
    }


def ensemble_point(result: dict) -> tuple[float, float, int] | None:
    """(the members' wall times summed, the ensemble's accuracy, members) of a full-length preset's JAX seeds
    ensemble (scripts/seed_ensemble.py), or None: what training its members cost, each process once (seeds
    trained together carry their process's wall time each)."""
    ens = result.get("ensemble")
    if not ens or not full_runs(result):
        return None
    members = [r for r in result["frameworks"]["jax"]["runs"] if r["seed"] in ens["seeds"] and r.get("wall_s")]
    if len(members) != len(ens["seeds"]):
        return None
    processes = {tuple(r.get("trained_with") or (r["seed"],)): r["wall_s"] for r in members}
    return float(sum(processes.values())), ens["final_acc"], len(members)


def figure(results: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    on_cpus = [{"frameworks": {fw: a for fw, a in r["frameworks"].items() if not gpus(a)}} for r in results]
    labels = machine_labels(on_cpus)  # M1, M2, ... as results/README.md numbers the CPU machines
    fig = Figure(figsize=(13, 6))
    ax = fig.subplots()
    drawn = set()
    for r in results:
        name = r["preset"] + (" (blog quirks)" if r["blog_quirks"] else "")
        for fw, points in full_runs(r).items():
            if not points:
                continue
            t, acc = np.array(points).T
            on_gpu = gpus(r["frameworks"][fw])
            kind = (fw, bool(on_gpu))
            label = None if kind in drawn else NAMES[fw] + (", on a GPU" if on_gpu else "")
            drawn.add(kind)
            ax.scatter(t, acc, s=20 if on_gpu else 14, marker="^" if on_gpu else "o", color=COLOURS[fw], alpha=0.45,
                       label=label)  # fmt: skip
            sd = (np.std(t, ddof=1), np.std(acc, ddof=1)) if len(t) > 1 else (0, 0)
            ax.errorbar(np.mean(t), np.mean(acc), xerr=sd[0], yerr=sd[1], color=COLOURS[fw], capsize=3, lw=1.2)
            machines = "/".join(on_gpu or [labels.get(m, "?") for m in r["frameworks"][fw].get("machines", [])])
            machines = machines.removeprefix("NVIDIA ")
            left = fw == "jax"  # JAX's label to the left of its cross, torch's to the right: they often meet
            ax.annotate(f"{name} ({machines or 'machine ?'})", (np.mean(t), np.mean(acc)), textcoords="offset points",
                        xytext=(-8 if left else 8, 0), ha="right" if left else "left", va="center", fontsize=8,
                        color=COLOURS[fw])  # fmt: skip
        if point := ensemble_point(r):
            t, acc, n = point
            ax.scatter([t], [acc], marker="P", s=70, color=COLOURS["jax"], label=None if "ens" in drawn else
                       "JAX seeds as an ensemble (their wall times summed)")  # fmt: skip
            drawn.add("ens")
            ax.annotate(f"{name}: {n} seeds' ensemble", (t, acc), textcoords="offset points", xytext=(6, -10),
                        fontsize=8, color=COLOURS["jax"])  # fmt: skip
        blog = r["blog"]
        if blog.get("final_acc") and blog.get("epoch_s") and not r["blog_quirks"]:
            t = blog["epoch_s"] * blog["epochs"]
            ax.scatter([t], [blog["final_acc"]], marker="*", s=90, color="0.35", label=None if "blog" in drawn else
                       "the blog (its epochs x its epoch time, its hardware)")  # fmt: skip
            drawn.add("blog")
            ax.annotate(f"blog {r['preset']}", (t, blog["final_acc"]), textcoords="offset points", xytext=(6, 4),
                        fontsize=8, color="0.35")  # fmt: skip
    for name, acc, seconds, hardware in REFERENCES:
        if seconds is None:
            ax.axhline(acc, color="0.6", lw=0.8, ls="--")
            ax.annotate(name, (1.2, acc), fontsize=8, color="0.45", va="bottom")
        else:
            ax.scatter([seconds], [acc], marker="D", s=36, color="C2", label=None if "ref" in drawn else
                       "published references (their hardware)")  # fmt: skip
            drawn.add("ref")
            ax.annotate(f"{name} ({hardware})", (seconds, acc), textcoords="offset points", xytext=(6, 4), fontsize=8,
                        color="C2")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlim(0.5, 1.5e5)  # room for the labels of the longest runs
    ax.set_ylim(98.8, 99.85)
    ax.set(xlabel="wall time, s (log scale; process start to exit)", ylabel="final test accuracy, %",
           title="MNIST: accuracy against time (machines M1, M2, ... in results/README.md)")  # fmt: skip
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: every region inside holds runs
    fig.tight_layout()
    return fig


def _main(argv: list[str] | None) -> int:
    p = script_parser("scripts/frontier.py", __doc__)
    p.add_argument("results", nargs="*", help="folders of <preset>.json (default: results/ and results/gpu/)")
    p.add_argument("--out", default=str(ROOT / "docs" / "frontier.png"))
    args = p.parse_args(argv)
    folders = [Path(f) for f in args.results] or [ROOT / "results", ROOT / "results" / "gpu"]
    if missing := [f for f in folders if args.results and not f.is_dir()]:
        raise UsageError(f"no such folder: {missing[0]}")
    results = [r for folder in folders for r in load_results(folder)]
    if not results:
        raise UsageError(f"no results (*.json) in {', '.join(map(str, folders))}")
    import io

    buf = io.BytesIO()
    figure(results).savefig(buf, format="png", dpi=110)
    try:
        atomic_write(Path(args.out), buf.getvalue())
    except OSError as e:
        raise UsageError(f"cannot write --out {args.out}: {e.strerror}") from None
    runs = sum(len(points) for r in results for points in full_runs(r).values())
    print(f"{args.out}: {runs} full-length runs of {len(results)} presets, {len(REFERENCES)} references")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
