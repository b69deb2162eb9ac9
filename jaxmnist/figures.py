"""The figures runs write (curves.png; jaxmnist.evaluate's report draws its own on `figure`): matplotlib Figures
drawn by Agg, without pyplot."""

from __future__ import annotations

import numpy as np


def figure(**kwargs):
    """A matplotlib Figure drawn by Agg, without pyplot: its import costs a second of every run here, and neither
    its registry of open figures nor a switch of the process's backend (a notebook's) is anything a run needs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def title(ax, text: str, **kwargs) -> None:
    """The axes' title where matplotlib puts it by default (y=1, just above the axes), given explicitly: a title
    placed automatically is moved above any tick labels on top, which means measuring every tick label of the axes
    at each draw (a third of a curves.png's drawing under a profiler; about 5 % of a script drawing figures, paired).
    These figures have no tick labels on top, so the pixels are the same."""
    ax.set_title(text, y=1.0, **kwargs)


def curves(record: dict, batches_per_epoch: int):
    """Three panels against the epoch: the training loss (per batch, and the epoch's test loss), the error rate
    on a log axis (test, train, validation: where 99 % and 99.5 % accuracy are 1 % and 0.5 % apart, not a
    flat line near 100 %), and the learning rate each epoch ended at."""
    b, epochs = record["batches"], record["epochs"]
    x = [e["epoch"] for e in epochs]
    fig = figure(figsize=(15, 4), dpi=90)
    loss_ax, err_ax, lr_ax = fig.subplots(1, 3)
    loss_ax.semilogy(np.asarray(b["x"], float) / batches_per_epoch, b["loss"], lw=0.5, alpha=0.6, label="train batch")
    if any("test_loss" in e for e in epochs):
        loss_ax.semilogy(x, [e.get("test_loss") for e in epochs], "o-", color="C3", label="test")
    loss_ax.set(xlabel="epoch", ylabel="loss")
    title(loss_ax, "loss")
    loss_ax.legend(loc="upper right")  # not "best": searching thousands of batch points takes seconds
    if any("interim" in e for e in epochs):  # the test curve with the evaluations inside the epochs
        points = [(e["epoch"] - 1 + i["fraction"], i["test_acc"]) for e in epochs for i in e.get("interim", ())]
        xs, accs = zip(*sorted(points + [(e["epoch"], e["test_acc"]) for e in epochs]))
        err_ax.semilogy(xs, 100.0 - np.asarray(accs), ".:", color="C3", alpha=0.6)
    for key, label, style in (
        ("test_acc", "test", "o-C3"),
        ("val_acc", "validation", "s-C2"),
        ("train_acc", "train", ".-C0"),
    ):
        if any(key in e for e in epochs):
            err = [100.0 - e[key] if key in e else None for e in epochs]
            err_ax.semilogy(x, err, style, label=label)
    if epochs:
        final = 100.0 - epochs[-1]["test_acc"]
        err_ax.annotate(f"{epochs[-1]['test_acc']:.2f} %", (x[-1], final), textcoords="offset points", xytext=(-10, 8))
    err_ax.set(xlabel="epoch", ylabel="error (%, log scale)")
    title(err_ax, "error = 100 - accuracy")
    err_ax.grid(True, which="both", alpha=0.3)
    err_ax.legend()
    if any("lr" in e for e in epochs):
        lr_ax.plot(x, [e.get("lr") for e in epochs], "o-", color="C4")
    lr_ax.set(xlabel="epoch", ylabel="learning rate")
    title(lr_ax, "learning rate (at the end of each epoch)")
    for ax in (loss_ax, err_ax):
        plain_log_ticks(ax)
    cfg = record["config"]
    fig.suptitle(f"{record['framework']} {record.get('preset') or cfg['model']} on {record['device']}")
    # Fixed margins, not tight_layout: it measures every label's text first, a third of the figure's time.
    fig.subplots_adjust(left=0.055, right=0.99, bottom=0.13, top=0.85, wspace=0.27)
    return fig


def plain_log_ticks(ax) -> None:
    """A log y axis labelled 0.5, 1, 2 rather than 5x10^-1, 10^0, 2x10^0: read at a glance, and drawn without
    matplotlib's mathtext (its parser takes a fifth of a second the first time)."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):  # LogFormatter chooses which ticks get a label; the label is the plain number
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    ax.yaxis.set_major_formatter(Plain())
    ax.yaxis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
