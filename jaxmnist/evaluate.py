"""Where a trained model fails: accuracy, per-class precision and recall, the confusion matrix, the misclassified
digits.

    python -m jaxmnist.evaluate --workdir ckpt/fast                     # the best checkpoint, on the test set
    python -m jaxmnist.evaluate --torch-state-dict cnn.pth --model cnn  # a PyTorch state_dict of the blog's net
    python -m jaxmnist.evaluate --workdir ckpt/fast --seed all          # the seeds of --seeds, as an ensemble
    python -m jaxmnist.evaluate --workdir ckpt/a --workdir ckpt/b       # two runs' ensemble

Several models (a repeated --workdir or --torch-state-dict, --seed 0,2,4 or all) are an ensemble: their
probabilities averaged, one program over the stacked weights; its report is a single model's. Writes OUT
(default WORKDIR/report, or ./report; report-ensemble for an ensemble) with report.json (accuracy, per-class
precision, recall and support, the confusion matrix, every misclassified test index with its predicted class and
confidence; the machine that computed it), confusion.png and misclassified.png (the misclassified digits, most
confident first, with true and predicted labels), and probabilities.npz (the softmax over the test set: reports
of runs made apart average into their ensemble, `mean_probabilities`). jaxmnist.train writes the same report
into its --logdir at the end of a run, with both images in TensorBoard (`report/confusion`, `report/misclassified`).
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from jaxmnist import cli, compile_cache, figures, host, runlog, weights
from jaxmnist import data as data_lib

GRID_MAX = 100  # misclassified digits drawn (all are listed in report.json)
MAX_CLASSES = 100  # a head wider than this is reported over its labels' classes (summarise)
PROBABILITIES = "probabilities.npz"  # a report's softmax over the test set: float32 [n, classes] under 'probs'


# ---------------------------------------------------------------------------------------- the numbers
def summarise(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, the confusion matrix (rows: true class, columns: predicted), per-class precision, recall and
    support, and the misclassified examples (index, true, predicted, confidence), most confident first. A head of
    more than MAX_CLASSES outputs (torchvision's 1000 on ten digits) is reported over the labels' classes, every
    other output one last column, 'other' (a 1000 x 1000 matrix took minutes to draw, and 6 MB of JSON)."""
    predicted = probs.argmax(1)
    classes = probs.shape[1] if probs.shape[1] <= MAX_CLASSES else int(labels.max()) + 1
    columns = np.minimum(predicted, classes)  # column `classes`: any output beyond the labels' classes
    confusion = np.zeros((classes, classes + int((predicted >= classes).any())), np.int64)
    np.add.at(confusion, (labels, columns), 1)
    support, claimed, hits = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")]
    return {
        "n": int(len(labels)),
        "accuracy": float(100.0 * hits.sum() / len(labels)),
        "confusion": confusion.tolist(),
        "per_class": [
            {
                "class": c,
                "support": int(support[c]),
                "precision": float(hits[c] / claimed[c]) if claimed[c] else None,
                "recall": float(hits[c] / support[c]) if support[c] else None,
            }
            for c in range(classes)
        ],
        "misclassified": [
            {
                "index": int(i),
                "true": int(labels[i]),
                "predicted": int(predicted[i]),
                "confidence": float(probs[i].max()),
            }
            for i in wrong
        ],
    }


def table(summary: dict) -> str:
    """The report as text: accuracy, then a line per class."""
    lines = [
        f"accuracy: {summary['accuracy']:.2f} % ({summary['n'] - len(summary['misclassified'])} of {summary['n']})",
        "class  support  precision  recall  most often taken for",
    ]
    confusion = np.asarray(summary["confusion"])
    for row in summary["per_class"]:
        c = row["class"]
        others = confusion[c].copy()
        others[c] = 0
        name = "other" if others.argmax() == len(confusion) else others.argmax()  # the wide head's last column
        taken = f"{name} ({others.max()})" if others.max() else "-"
        fmt = lambda x: "-" if x is None else f"{100 * x:.2f} %"  # noqa: E731
        lines.append(f"{c:>5}  {row['support']:>7}  {fmt(row['precision']):>9}  {fmt(row['recall']):>6}  {taken}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- the images
def confusion_figure(summary: dict):
    confusion = np.asarray(summary["confusion"])
    classes, columns = confusion.shape  # one more column where a wide head predicted beyond the classes
    fig = figures.figure(figsize=(6.5, 5.5), dpi=100)
    ax = fig.subplots()
    off = confusion.astype(float)
    np.fill_diagonal(off, np.nan)  # the colours show the errors; the diagonal would drown them
    image = ax.imshow(off, cmap="Reds")
    for t in range(classes):
        for p in range(columns):
            ax.text(p, t, str(confusion[t, p]), ha="center", va="center", fontsize=7,
                    color="black" if t != p else "tab:blue")  # fmt: skip
    ax.set(xticks=range(columns), yticks=range(classes), xlabel="predicted", ylabel="true")
    if columns > classes:
        ax.set_xticklabels([*map(str, range(classes)), "other"])
    figures.title(ax, f"confusion matrix: {summary['accuracy']:.2f} % of {summary['n']} (errors coloured)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    # Fixed margins (what tight_layout chose for this figure), not tight_layout: it measures every text first.
    fig.subplots_adjust(left=0.035, right=0.935, bottom=0.105, top=0.935)
    return fig


def misclassified_figure(summary: dict, images_u8: np.ndarray, limit: int = GRID_MAX):
    """The misclassified digits, most confident first, as one tiled image (fast to draw) with a caption each."""
    wrong = summary["misclassified"][:limit]
    cols, cell, pad = 10, 28 + 12, 12  # each cell: a caption strip above the digit
    rows = max(1, -(-len(wrong) // cols))
    grid = np.full((rows * cell, cols * (28 + 4)), 255, np.uint8)
    for k, w in enumerate(wrong):
        r, c = divmod(k, cols)
        grid[r * cell + pad : r * cell + pad + 28, c * 32 + 2 : c * 32 + 30] = images_u8[w["index"]]
    width, height = cols * 0.9, rows * 1.15 + 0.5  # inches
    fig = figures.figure(figsize=(width, height), dpi=100)
    ax = fig.subplots()
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    for k, w in enumerate(wrong):
        r, c = divmod(k, cols)
        caption = f"{w['true']}→{w['predicted']} {100 * w['confidence']:.0f}%"
        ax.text(c * 32 + 16, r * cell + pad - 2, caption, ha="center", va="bottom", fontsize=6.5)
    ax.axis("off")
    shown = f"the {len(wrong)} most confident" if len(summary["misclassified"]) > len(wrong) else f"all {len(wrong)}"
    figures.title(ax, f"misclassified test digits ({shown} of {len(summary['misclassified'])}): "
                      "true→predicted, confidence", fontsize=9)  # fmt: skip
    # Fixed margins in inches (0.15 around, 0.4 above for the title), not tight_layout: it measures every caption.
    fig.subplots_adjust(left=0.15 / width, right=1 - 0.15 / width, bottom=0.15 / height, top=1 - 0.4 / height)
    return fig


def write(
    summary: dict, images_u8: np.ndarray, out: str | os.PathLike, writer=None, step: int = 0, probs=None
) -> Path:
    """report.json (the summary and the machine that computed it), confusion.png, misclassified.png into `out`
    (atomically); the images also into a tensorboardX `writer` if given; `probs` (the summarised softmax,
    [n, classes]) into PROBABILITIES, for ensembles of runs made apart (`mean_probabilities`)."""
    out = runlog.writable_dir(out)
    report = {**summary, "machine": host.machine()}
    runlog.atomic_write(out / "report.json", json.dumps(report, indent=1).encode())
    if probs is not None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, probs=np.asarray(probs, np.float32))
        runlog.atomic_write(out / PROBABILITIES, buffer.getvalue())
    for name, fig in (
        ("confusion", confusion_figure(summary)),
        ("misclassified", misclassified_figure(summary, images_u8)),
    ):
        rgb = runlog.write_png(fig, out / f"{name}.png")
        if writer is not None:
            writer.add_image(f"report/{name}", rgb, step, dataformats="HWC")
    return out


def write_run_report(probs: np.ndarray, images_u8: np.ndarray, labels: np.ndarray, log: runlog.RunLog, say) -> None:
    """A training run's report of its final weights on the test set (both trainers, `probs` their softmax): into its
    logdir and TensorBoard events, and one line saying where."""
    summary = summarise(probs, labels)
    write(summary, images_u8, log.dir, log.writer, step=len(log.record["epochs"]), probs=probs)
    say(f"report: {len(summary['misclassified'])} test digits misclassified; in {log.dir}: report.json, "
        f"confusion.png, misclassified.png, {PROBABILITIES}")  # fmt: skip


def mean_probabilities(reports: list[str | os.PathLike]) -> np.ndarray:
    """The ensemble of models evaluated apart: the mean of their PROBABILITIES (each a report directory's), as
    weights.Ensemble averages the members it runs itself."""
    if not reports:
        raise ValueError("an ensemble needs at least one report")
    stacked = [np.load(Path(r) / PROBABILITIES)["probs"] for r in reports]
    if len({p.shape for p in stacked}) != 1:
        raise ValueError(f"reports of different test sets: shapes {sorted({p.shape for p in stacked})}")
    return np.mean(stacked, axis=0, dtype=np.float32)


# ------------------------------------------------------------------------------------------ the CLI
def build_parser() -> cli.ArgumentParser:
    p = cli.script_parser("python -m jaxmnist.evaluate", __doc__)
    weights.add_flags(p)
    compile_cache.add_flag(p)
    p.add_argument("--dataset", choices=sorted(data_lib.DATASETS), default="mnist", help="whose test set")
    p.add_argument("--data-dir", help="a directory holding the four IDX files")
    p.add_argument("--out", help="the report's directory (default WORKDIR/report, else ./report)")
    return p


def default_out(workdirs: list[str] | None, model: weights.Model) -> str:
    """WORKDIR/report for one workdir's model, ./report otherwise; `report-ensemble` for an ensemble."""
    name = "report-ensemble" if isinstance(model, weights.Ensemble) else "report"
    return os.path.join(workdirs[0] if workdirs and len(workdirs) == 1 else ".", name)


def _main(argv) -> None:
    args = build_parser().parse_args(argv)
    compile_cache.configure(args.no_compile_cache)
    model = weights.load(args)
    out = runlog.writable_dir(args.out or default_out(args.workdir, model), "--out")  # before the pass, not after
    data = data_lib.load(args.dataset, args.data_dir, progress=False)
    probs = model.probabilities(data.test_images)
    summary = summarise(probs, data.test_labels)
    write(summary, data.test_images, out, probs=probs)
    print(f"{model.name} from {model.source}, on {args.dataset}'s {summary['n']} test images")
    print(table(summary))
    print(f"report: {out}/report.json, confusion.png, misclassified.png, {PROBABILITIES}")


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv), user_errors=(data_lib.DataError,))


if __name__ == "__main__":
    sys.exit(main())
