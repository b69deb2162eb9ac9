"""jaxmnist.runlog: the lines both trainers print, metrics.json, TensorBoard events, curves.png."""

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxmnist import figures, host, runlog
from jaxmnist.cli import UsageError
from jaxmnist.presets import PRESETS


def run_report(tmp_path, logdir=True):
    out = io.StringIO()
    config = PRESETS["cnn_deep"].replace(epochs=2)
    log = runlog.RunLog(tmp_path, framework="jax", preset="cnn_deep", config=config, device="cpu:cpu", n_train=1000)
    report = runlog.Report(out, log if logdir else None)
    report.preamble(
        "device: cpu", config, "cnn_deep", "cache", n_train=1000, steps=1, tail="ragged tail dropped", n_test=100,
        n_val=None, monitor="test accuracy", notes=("compile: 1.00 s",),
    )  # fmt: skip
    for epoch, (acc, lr, next_lr) in enumerate(((97.5, 1e-3, 1e-3), (98.25, 1e-3, 5e-4))):
        report.epoch(
            epoch, test={"accuracy": acc, "loss": 0.1}, val=None, batch_acc=np.array([90.0, 96.0]),
            batch_loss=np.array([0.3, 0.2]), lr=lr, next_lr=next_lr, time_s=2.0 + epoch,
        )  # fmt: skip
    record = report.finish([2.0, 3.0], compile_s=1.0, recompiles=0)
    return out.getvalue().splitlines(), record


def test_report_prints_the_blogs_lines(tmp_path):
    lines, record = run_report(tmp_path)
    assert lines == [
        "device: cpu",
        "preset cnn_deep: cnn_deep, batch 512, RMSprop lr 0.001, alpha 0.99, momentum 0.5, 2 epochs, augmentation, "
        "ReduceLROnPlateau; data: cache",
        "train: 1000 images, 1 steps of 512 per epoch (ragged tail dropped); test: 100 images",
        "ReduceLROnPlateau monitors the test accuracy",
        "compile: 1.00 s",
        "Accuracy on test set(epoch=2):",
        "[1]: 97.50 %",
        "[2]: 98.25 %",
        "    learning rate 0.001 -> 0.0005",
        "Average time per epoch: 2.50 s",
        f"final: 98.25 %, best: 98.25 % (epoch 2); logs in {tmp_path}",
    ]
    assert (record["final_acc"], record["best_epoch"], record["avg_epoch_s"], record["compile_s"]) == (
        98.25, 2, 2.5, 1.0,
    )  # fmt: skip


def test_metrics_json_holds_every_batch_and_epoch(tmp_path):
    _, record = run_report(tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["batches"]["x"] == [0, 1, 2, 3]  # ceil(1000 / 512) = 2 per epoch: the blog's axis
    assert [e["lr"] for e in saved["epochs"]] == [1e-3, 1e-3] and saved["epochs"][1]["train_acc"] == 93.0
    assert saved["framework"] == "jax" and saved["recompiles_after_first_epoch"] == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_curves_show_the_error_on_a_log_axis_and_the_learning_rate(tmp_path):
    _, record = run_report(tmp_path)
    fig = figures.curves(record, batches_per_epoch=2)
    loss_ax, err_ax, lr_ax = fig.axes
    fig.canvas.draw()
    for ax in (loss_ax, err_ax):  # plain numbers on the log axes (0.6, 1, 2), not mathtext's 6x10^-1
        labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels()]
        assert any(labels) and not any("$" in label for label in labels), labels
    lines = {line.get_label(): line for line in err_ax.get_lines()}
    assert err_ax.get_yscale() == "log" and set(lines) == {"test", "train"}  # no validation split in this run
    np.testing.assert_allclose(lines["test"].get_ydata(), [2.5, 1.75])  # 100 - 97.5, 100 - 98.25
    np.testing.assert_allclose(lines["train"].get_ydata(), [7.0, 7.0])  # 100 - mean(90, 96)
    np.testing.assert_allclose(loss_ax.get_lines()[0].get_xdata(), [0, 0.5, 1, 1.5])  # batches, in epochs
    np.testing.assert_allclose(lr_ax.get_lines()[0].get_ydata(), [1e-3, 1e-3])


def test_without_a_logdir_only_the_timing_is_recorded(tmp_path):
    lines, record = run_report(tmp_path / "unused", logdir=False)
    assert record == {"compile_s": 1.0, "avg_epoch_s": 2.5, "recompiles_after_first_epoch": 0}
    assert lines[-1] == "Average time per epoch: 2.50 s"


def test_unwritable_logdir_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="cannot write to --out .*/file/sub: Not a directory"):  # names its flag
        runlog.writable_dir(tmp_path / "file" / "sub", "--out")
    with pytest.raises(UsageError, match="cannot write to --out .*/file: it is a file, not a directory"):
        runlog.writable_dir(tmp_path / "file", "--out")
    with pytest.raises(UsageError, match="cannot write to --logdir"):
        runlog.RunLog(tmp_path / "file" / "sub", framework="jax", preset=None, config=PRESETS["cnn_tb"],
                      device="cpu", n_train=10)  # fmt: skip


def test_progress_bar_only_on_a_terminal(monkeypatch):
    """Redirected to a file, stderr gets no bar (no carriage returns in a log); on a terminal it does."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert runlog.epoch_bar(0, 3, 10, enabled=True).disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = runlog.epoch_bar(0, 3, 10, enabled=True)
    assert not bar.disable
    bar.close()
    assert runlog.epoch_bar(0, 3, 10, enabled=False).disable  # --no-progress


# Burns s seconds of one core's CPU time (not of wall time: on a busy machine it takes longer), printing "half" at
# half of it, then touches the file `done`.
BUSY = ("import time, pathlib\nwhile time.process_time() < {s} / 2: pass\nprint('half', flush=True)\n"
        "while time.process_time() < {s}: pass\npathlib.Path('{done}').touch()")  # fmt: skip


def test_others_cpu_sees_another_process_and_each_epoch_records_it(tmp_path):
    others, t0 = host.OthersCpu(), time.monotonic()
    # Another process: the shell exits at once, so the busy one is no descendant of this process (pid 1 adopts it).
    busy = BUSY.format(s=1.5, done=tmp_path / "done")
    subprocess.run(["sh", "-c", f"'{sys.executable}' -c \"{busy}\" >/dev/null 2>&1 &"], check=True)
    while not (tmp_path / "done").exists() and time.monotonic() - t0 < 120:
        time.sleep(0.1)
    cores, elapsed = len(os.sched_getaffinity(0)), time.monotonic() - t0
    assert others.share() * cores * elapsed >= 1.2  # of its 1.5 s of CPU (/proc counts in 10 ms ticks)
    time.sleep(0.6)
    assert others.share() is not None and others.share() is None  # under half a second apart: no figure
    lines, record = run_report(tmp_path)  # its epochs a moment apart: the load, not the share
    assert all(e["load"] >= 0 and "others_cpu" not in e for e in record["epochs"])
    assert record["machine"] == host.machine() and record["startup_s"] > 0


def test_a_runs_own_child_processes_count_as_its_own_cpu_time(tmp_path):
    """torch's DataLoader workers are the run's work, not other work: live and reaped children count as its own."""
    before = host.own_cpu_ticks()
    busy = BUSY.format(s=1.0, done=tmp_path / "done")
    worker = subprocess.Popen([sys.executable, "-c", busy], stdout=subprocess.PIPE, text=True)
    assert worker.stdout.readline() == "half\n"  # this process waits meanwhile: 0.5 s of the child's CPU
    alive = host.own_cpu_ticks() - before
    worker.wait(timeout=120)
    reaped = host.own_cpu_ticks() - before
    hz = os.sysconf("SC_CLK_TCK")
    assert alive >= 0.45 * hz  # the live child's time (/proc counts in 10 ms ticks)
    assert reaped >= 0.95 * hz  # its whole second, once reaped


def test_logs_without_tensorboardx_are_a_usage_error_not_a_traceback(tmp_path, monkeypatch):
    """A bare checkout on PYTHONPATH (the GPU image) has no tensorboardX: --logdir then fails in one line."""
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` raises ModuleNotFoundError
    with pytest.raises(UsageError, match="tensorboardX, which this Python cannot import"):
        runlog.summary_writer(tmp_path)
    assert "torch" not in sys.modules or sys.modules["torch"] is not None  # the torch stand-in is gone again

