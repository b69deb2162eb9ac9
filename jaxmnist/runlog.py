"""What a training run writes, the same for jaxmnist and torch_ref: the blog's printed lines, TensorBoard
scalars, one JSON file of every metric (`metrics.json`) and a PNG of the curves (`curves.png`).

TensorBoard tags: `acc_train/batch_num` (train accuracy of each batch in percent, x = ceil(n_train/bs)·epoch + i,
the blog's meaning and axis), `loss_train/batch_num`, and per epoch `acc_test/epoch`, `loss_test/epoch`,
`acc_val/epoch` (with a validation split), `lr/epoch`, `time/epoch`; the hyperparameters via add_hparams; with
--evals-per-epoch, `acc_test/batch_num` (the evaluations inside an epoch, at their step on the batch axis).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jaxmnist import figures, hugepages, malloc
from jaxmnist.cli import UsageError, unwritable
from jaxmnist.host import OTHERS_CPU_SCOPE, OthersCpu, load_average, machine, process_age_s

FORMAT_VERSION = 1


def header_line(epochs: int) -> str:
    return "Accuracy on test set(epoch=%d):" % epochs


def epoch_line(epoch: int, acc: float) -> str:
    return "[%d]: %.2f %%" % (epoch, acc)


def interim_line(epoch: int, step: int, steps: int, acc: float) -> str:
    """An evaluation before the epoch's end (Config.evals_per_epoch): not the blog's `[k]: ` line."""
    return "[%d, step %d/%d]: %.2f %%" % (epoch, step, steps, acc)


def average_line(seconds: float) -> str:
    return "Average time per epoch: %.2f s" % seconds


def epoch_bar(epoch: int, epochs: int, steps: int, enabled: bool):
    """The per-epoch progress bar both trainers show on stderr (steps, cleared when the epoch ends). Drawn only on
    a terminal: redirected to a file (nohup, a batch scheduler) the output stays plain lines, with no carriage
    returns before the blog's `[k]: xx.xx %` lines."""
    from tqdm import tqdm

    on = enabled and sys.stderr.isatty()
    return tqdm(
        total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr, disable=not on, unit="step"
    )


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones are left out)."""
    from importlib import metadata

    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def writable_dir(directory: str | os.PathLike, flag: str = "--logdir") -> Path:
    """`directory`, created if needed; a UsageError naming `flag` if it cannot be written (checked before a run
    loads anything)."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise unwritable(flag, directory, e) from None
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """`data` into `path` whole or not at all (a temporary beside it, renamed); a failure leaves no temporary."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_png(fig, path: Path) -> np.ndarray:
    """Draws `fig` once, writes it to `path` as PNG (atomically) and returns its RGB pixels [H, W, 3] (for
    TensorBoard, which would otherwise draw it again)."""
    from PIL import Image

    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    atomic_write(path, buf.getvalue())
    return rgb


def summary_writer(logdir: Path | None = None):
    """tensorboardX's SummaryWriter (the class alone without a `logdir`), imported without torch where torch is not
    loaded yet: tensorboardX imports torch when it can (about 4 s of every JAX run's start) only to accept torch
    tensors, which jaxmnist never passes (it writes floats). torch_ref, which has loaded torch already, gets the
    usual import. Without tensorboardX (a bare checkout on PYTHONPATH): a UsageError, one line from a command, not
    a traceback."""
    try:
        if "tensorboardX.writer" not in sys.modules and "torch" not in sys.modules:
            sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX takes as "no torch"
            try:
                from tensorboardX import SummaryWriter
            finally:
                del sys.modules["torch"]
        from tensorboardX import SummaryWriter
    except ModuleNotFoundError as e:
        if e.name != "tensorboardX":
            raise
        raise UsageError(
            "--logdir writes TensorBoard logs with tensorboardX, which this Python cannot import: "
            "`pip install tensorboardX` (jaxmnist's install brings it), or leave out --logdir"
        ) from None
    return SummaryWriter if logdir is None else SummaryWriter(str(logdir))


class RunLog:
    """Collects a run's metrics; writes TensorBoard events, metrics.json and curves.png into `logdir`."""

    def __init__(
        self,
        logdir: str | os.PathLike,
        *,
        framework: str,
        preset: str | None,
        config: Any,
        device: str,
        n_train: int,
        record: dict | None = None,
        convolutions: str | None = None,
    ):
        self.dir = writable_dir(logdir)
        cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        self.batches_per_epoch_axis = math.ceil(n_train / cfg["batch_size"])  # the blog's x-axis unit
        self.record = record or {
            "format": FORMAT_VERSION,
            "framework": framework,
            "preset": preset,
            "config": cfg,
            "device": device,
            "machine": machine(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "commit": git_commit(),
            "versions": versions("jax", "jaxlib", "flax", "optax", "numpy", "torch", "torchvision"),
            "hugepages": hugepages.active(),  # malloc asked for transparent huge pages (jaxmnist/hugepages.py)
            "malloc": malloc.state(),  # keep: freed memory kept for the next step (jaxmnist/malloc.py)
            "others_cpu_scope": OTHERS_CPU_SCOPE,  # the epochs' others_cpu leaves out this process and its children
            "n_train": n_train,
            "convolutions": convolutions,  # jaxmnist's plan (ConvPlan.describe): other bits, same maths; torch: None
            "epochs": [],
            "batches": {"x": [], "acc": [], "loss": []},
        }
        summary_writer()  # tensorboardX importable, or one line before the run starts
        self._writer = None
        self.others_cpu = OthersCpu()  # what other processes took of the CPU, epoch by epoch

    @property
    def writer(self):
        """The run's TensorBoard events file, opened when the run first writes to it: a run refused or with
        nothing to train leaves none behind."""
        if self._writer is None:
            self._writer = summary_writer(self.dir)
        return self._writer

    def add_batches(self, epoch: int, acc: np.ndarray, loss: np.ndarray) -> None:
        """One epoch's per-batch train accuracy (percent) and loss; epoch counts from 0 as in the blog."""
        x0 = self.batches_per_epoch_axis * epoch
        for i, (a, l) in enumerate(zip(np.asarray(acc, float), np.asarray(loss, float))):
            self.writer.add_scalar("acc_train/batch_num", a, x0 + i)
            self.writer.add_scalar("loss_train/batch_num", l, x0 + i)
        b = self.record["batches"]
        b["x"] += [x0 + i for i in range(len(acc))]
        b["acc"] += [round(float(a), 4) for a in acc]
        b["loss"] += [float(l) for l in loss]

    def add_epoch(self, epoch: int, interim: list[dict] = (), **metrics: float) -> None:
        """Per-epoch scalars (epoch counts from 1): test_acc, test_loss, val_acc, lr, time_s, train_loss, ...
        Each epoch also records the share of the machine's CPU that other processes took since the previous epoch
        (`others_cpu`), the load average and, when the run was resumed on another machine, that machine;
        the first epoch of a run records `startup_s`, the seconds from the process's start to that epoch's.
        `interim`: the epoch's evaluations before its end (Config.evals_per_epoch), each {step, fraction,
        test_acc, test_loss, val_acc, val_loss, at_s (seconds into the epoch)}, TensorBoard's
        `acc_test/batch_num` at their step on the blog's batch axis."""
        x0 = self.batches_per_epoch_axis * (epoch - 1)
        for e in interim:
            self.writer.add_scalar("acc_test/batch_num", e["test_acc"], x0 + e["step"])
        tags = {
            "test_acc": "acc_test/epoch",
            "test_loss": "loss_test/epoch",
            "val_acc": "acc_val/epoch",
            "val_loss": "loss_val/epoch",
            "lr": "lr/epoch",
            "time_s": "time/epoch",
        }
        for key, value in metrics.items():
            if key in tags and value is not None:
                self.writer.add_scalar(tags[key], value, epoch)
        age, here = process_age_s(), machine()
        if not self.record["epochs"] and age is not None and "time_s" in metrics:
            self.record["startup_s"] = round(age - metrics["time_s"], 3)
        extra = {"others_cpu": self.others_cpu.share(), "load": load_average()}
        if here != self.record.get("machine", here):  # a run resumed elsewhere: its epochs name their machine
            extra["machine"] = here
        entry = {"epoch": epoch, **metrics, **extra, "interim": list(interim) or None}
        self.record["epochs"].append({k: v for k, v in entry.items() if v is not None})
        self.writer.flush()
        self.save()

    def summary(self) -> dict:
        accs = [e["test_acc"] for e in self.record["epochs"]]
        if not accs:
            return {}
        best = int(np.argmax(accs))
        times = [e["time_s"] for e in self.record["epochs"] if "time_s" in e]
        return {
            "final_acc": accs[-1],
            "best_acc": accs[best],
            "best_epoch": self.record["epochs"][best]["epoch"],
            "avg_epoch_s": float(np.mean(times)) if times else None,
        }

    def finish(self, **extra: Any) -> dict:
        """The record with its summary; a resumed run's averages cover every epoch, not only this process's."""
        self.record.update(extra)
        self.record.update(self.summary())
        hparams = {k: v for k, v in self.record["config"].items() if isinstance(v, (int, float, str, bool))}
        results = {f"hparam/{k}": v for k, v in self.summary().items() if isinstance(v, (int, float))}
        self.writer.add_hparams(hparams, results, name="hparams")
        self.writer.close()
        self.save()
        self.plot()
        return self.record

    def save(self) -> None:
        atomic_write(self.dir / "metrics.json", json.dumps(self.record, indent=1).encode())

    def plot(self) -> None:
        """curves.png (see `figures.curves`), written atomically."""
        write_png(figures.curves(self.record, self.batches_per_epoch_axis), self.dir / "curves.png")


def interim_series(record: dict, *fields: str) -> list | None:
    """A run record's evaluations inside its epochs (--evals-per-epoch), per epoch a list of [field, ...] for each
    (e.g. 'test_acc', 'at_s'); None for a run without them."""
    if not any("interim" in e for e in record["epochs"]):
        return None
    return [[[i[f] for f in fields] for i in e.get("interim", ())] for e in record["epochs"]]


class Report:
    """What a training run prints and records, the same for both trainers: the blog's lines on `out` and,
    with a RunLog, its TensorBoard events and metrics.json."""

    def __init__(self, out, log: RunLog | None = None, prefix: str = ""):
        self.out, self.log, self.prefix = out, log, prefix  # prefix: e.g. 'seed 3 ' before each epoch line
        self._interim: list[dict] = []  # the epoch's evaluations so far, before its end

    @classmethod
    def for_run(cls, out, logdir, prefix: str = "", **run: Any) -> "Report":
        """A run's report, with a RunLog in `logdir` if one is given (`run`: RunLog's keyword arguments)."""
        return cls(out, RunLog(logdir, **run) if logdir else None, prefix)

    def say(self, line: str) -> None:
        # None: stdout as it is now (capture, redirection)
        print(self.prefix + line, file=self.out or sys.stdout, flush=True)

    def preamble(
        self,
        device_line: str,
        config,
        preset: str | None,
        source: str,
        *,
        n_train: int,
        steps: int,
        tail: str,
        n_test: int,
        n_val: int | None,
        monitor: str,
        notes: tuple[str, ...] = (),
    ) -> None:
        """Before the first epoch: the device, the experiment, the data, the schedule's monitor, `notes`
        (e.g. the compile time), then the blog's header line."""
        from jaxmnist.presets import describe

        lines = [
            device_line,
            f"{'preset ' + preset + ': ' if preset else ''}{describe(config)}; data: {source}",
            f"train: {n_train} images, {steps} steps of {config.batch_size} per epoch ({tail}); test: {n_test} images"
            + (f"; validation: {n_val} images" if n_val else ""),
        ]
        if config.plateau:
            lines.append(
                "ReduceLROnPlateau: never stepped (blog quirk 3)"
                if config.blog_quirks
                else f"ReduceLROnPlateau monitors the {monitor}"
            )
        for line in [*lines, *notes, header_line(config.epochs)]:
            self.say(line)

    def interim(self, epoch: int, step: int, steps: int, *, test: dict, val: dict | None, at_s: float) -> None:
        """An evaluation after `step` of the `steps` of epoch `epoch` (from 0), before its end: its line now; the
        logs keep it with the epoch's own (`epoch`), so that a checkpoint holds whole epochs."""
        self.say(interim_line(epoch + 1, step, steps, float(test["accuracy"])))
        entry = {"step": step, "fraction": round(step / steps, 4), "test_acc": float(test["accuracy"]),
                 "test_loss": float(test["loss"]), "at_s": round(at_s, 3)}  # fmt: skip
        if val is not None:
            entry.update(val_acc=float(val["accuracy"]), val_loss=float(val["loss"]))
        self._interim.append(entry)

    def epoch(
        self,
        epoch: int,
        *,
        test: dict,
        val: dict | None,
        batch_acc: np.ndarray,
        batch_loss: np.ndarray,
        lr: float,
        next_lr: float,
        time_s: float,
    ) -> None:
        """After epoch `epoch` (from 0): the blog's `[k]: xx.xx %` line, a learning-rate change, the logs.
        `test` and `val` hold the pass's 'accuracy' (percent) and 'loss'; `lr` is the rate the next step would
        use before the plateau rule (the rate the epoch ran at, under a per-epoch rate; the one-cycle schedule's
        next step's), `next_lr` the one it will use after it."""
        self.say(epoch_line(epoch + 1, float(test["accuracy"])))
        if next_lr != lr:
            self.say(f"    learning rate {lr:g} -> {next_lr:g}")
        if self.log:
            self.log.add_batches(epoch, batch_acc, batch_loss)
            self.log.add_epoch(
                epoch + 1,
                self._interim,
                test_acc=float(test["accuracy"]),
                test_loss=float(test["loss"]),
                val_acc=None if val is None else float(val["accuracy"]),
                val_loss=None if val is None else float(val["loss"]),
                train_acc=float(np.mean(batch_acc)),
                train_loss=float(np.mean(batch_loss)),
                lr=lr,
                time_s=time_s,
            )
        self._interim = []

    def finish(self, epoch_times: list[float], compile_s: float | None = None, recompiles: int | None = None) -> dict:
        """The blog's average line, then final and best accuracy; returns the run record (metrics.json's with
        a RunLog, else the timing alone). Eager torch compiles nothing: None for both."""
        avg = float(np.mean(epoch_times)) if epoch_times else 0.0
        self.say(average_line(avg))
        record = {"compile_s": compile_s, "avg_epoch_s": avg, "recompiles_after_first_epoch": recompiles}
        if self.log:
            record = self.log.finish(**record)
            self.say_final()
        return record

    def say_final(self) -> None:
        """The final and best accuracy of the run log, and where it is."""
        self.say(final_line(self.log.summary(), self.log.dir))


def final_line(summary: dict, logdir) -> str:
    return (f"final: {summary['final_acc']:.2f} %, best: {summary['best_acc']:.2f} % (epoch {summary['best_epoch']}); "
            f"logs in {logdir}")  # fmt: skip


def completed_record(logdir, report: bool) -> dict | None:
    """The record in `logdir` when its run wrote all it writes at its end (metrics.json with its summary, report.json
    if asked for); {} without a logdir; None after a finish stopped midway, or in another logdir: then a resumed
    run that has trained all its epochs finishes again instead of saying it has nothing to do."""
    if logdir is None:
        return {}
    try:
        record = json.loads((Path(logdir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    complete = isinstance(record, dict) and "final_acc" in record
    return record if complete and (not report or (Path(logdir) / "report.json").exists()) else None
