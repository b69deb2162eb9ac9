"""jaxmnist.train when things go wrong: bad input of every kind, divergence, damaged checkpoints, kills.

Each bad input must end with one line on stderr (no traceback), a non-zero exit code and no half-written file.
This file tests jaxmnist/train.py's failure paths; the happy paths are tests/test_train.py's.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxmnist import data as data_lib
from jaxmnist import engine, train
from jaxmnist.checkpoint import Checkpointer
from jaxmnist.presets import PRESETS

QUICK = ["--model", "cnn", "--train-size", "1024", "--max-steps", "2", "--epochs", "1", "--no-progress"]
QUICK += ["--chunk-steps", "1"]  # one-step programs compile fastest


def leftovers(root: Path) -> list[str]:
    """Half-written files: temporaries of atomic writes, write probes, orbax's unfinished steps."""
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp") or ".write-test" in p.name or "tmp" in p.name]


def run_cli(argv, capsys, tmp_path):
    code = train.main([*argv, "--logdir", str(tmp_path / "log")] if "--logdir" not in argv else argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()


def garbage_dir(tmp_path, **_):
    directory = tmp_path / "junk"
    directory.mkdir()
    for f in data_lib.DATASETS["mnist"].files.values():
        (directory / f.name).write_bytes(b"\x00\x00\x08\x03" + os.urandom(64))
    return ["--data-dir", str(directory)]


def a_file(tmp_path, **_):
    (tmp_path / "plain").write_text("")
    return tmp_path / "plain"


# (argv, or a function of tmp_path making it; the message expected in the one line). No real MNIST needed.
OFFLINE = [
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--momentum", "nan"], "--momentum must be a finite number"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["--epochs", "0"], "--epochs must be > 0"),
    (["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["--batch-size", "0"], "--batch-size must be > 0"),
    (["--eval-batch-size", "-3"], "--eval-batch-size must be > 0"),
    (["--train-size", "-5"], "--train-size must be >= 0"),
    (["--num-classes", "5"], "--num-classes 5 is smaller than mnist's 10 classes"),
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--optimizer", "adam"], "unknown optimizer 'adam'"),
    (["--dataset", "cifar10"], "argument --dataset: invalid choice"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--resume"], "--resume needs --workdir"),
    (["--seeds", "2", "--resume"], "--resume needs --workdir"),
    (["--init-from", "/nonexistent.pth", "--resume", "--workdir", "w"], "--torch-state-dict starts a new run from its "
     "weights, --resume continues the checkpoint's: give one"),  # fmt: skip
    (["--seeds", "0-x"], "--seeds '0-x': expected a count (8), a range (0-7) or distinct seeds"),
    (["--seeds", "1,1"], "--seeds '1,1': expected"),
    (["--seed", "2147483648"], "--seed must be in [0, 2147483647], got 2147483648"),  # a JAX key is int32
    (["--seeds", "99999999999"], "at most 10000 of them"),  # not a MemoryError
    (["--seeds", "0,2147483648"], "in [0, 2147483647]"),
    (["--seeds", "2", "--seed", "1"], "give --seed or --seeds, not both"),
    (["--seeds", "2", "--seed-mode", "vmap", "--val-size", "10"], "--seed-mode vmap cannot hold out --val-size"),
    (["--seed-mode", "both"], "argument --seed-mode: invalid choice"),
    (["--chunk-steps", "0"], "--chunk-steps must be >= 1, got 0"),
    (["--data-dir", "/nonexistent/mnist"], "data directory /nonexistent/mnist does not exist"),
    (lambda tmp_path: ["--data-dir", str(a_file(tmp_path))], "is not a directory"),
    (garbage_dir, "train-images-idx3-ubyte: md5"),
    (lambda tmp_path: ["--logdir", str(a_file(tmp_path) / "sub")], "cannot write to --logdir"),
    (lambda tmp_path: ["--workdir", str(a_file(tmp_path) / "sub"), "--data-dir", "/nonexistent"], "does not exist"),
    (lambda tmp_path: ["--workdir", str(a_file(tmp_path))], "it is a file, not a directory"),
    (lambda tmp_path: ["--workdir", str(torch_ref_workdir(tmp_path)), "--resume"],
     "holds a checkpoint of python -m torch_ref.train, which this trainer can neither resume nor share"),
    (lambda tmp_path: ["--workdir", str(torch_ref_workdir(tmp_path)), "--seeds", "2"], "python -m torch_ref.train"),
]  # fmt: skip


def torch_ref_workdir(tmp_path):
    """A workdir holding torch_ref's checkpoint file (its contents are never read)."""
    (tmp_path / "tw").mkdir()
    (tmp_path / "tw" / "checkpoint.pt").write_bytes(b"torch_ref")
    return tmp_path / "tw"


@pytest.mark.parametrize("argv, message", OFFLINE, ids=[str(i) for i in range(len(OFFLINE))])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    argv = argv(tmp_path) if callable(argv) else argv
    code, err = run_cli([*QUICK, *argv], capsys, tmp_path)  # the case after QUICK: its flags win
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not leftovers(tmp_path)


def spoiled_copy(mnist, tmp_path, spoil):
    directory = tmp_path / "data"
    data_lib.export(mnist, directory)
    raw = directory / "MNIST" / "raw"
    spoil(raw / "t10k-labels-idx1-ubyte")
    return ["--data-dir", str(directory)]


def flip(path):
    b = bytearray(path.read_bytes())
    b[100] ^= 1
    path.write_bytes(bytes(b))


def checkpoint_of(tmp_path, config, spoil=None, inside="", epoch=1):
    """A workdir holding one checkpoint of `config` (after `epoch`), optionally spoiled; `inside` a folder of it (e.g. a
    seed's, seed<k>)."""
    ckpt = Checkpointer(tmp_path / "w" / inside)
    state = engine.create_state(config, jax.random.PRNGKey(0), total_steps=config.epochs * config.max_steps)
    ckpt.save(state, epoch, 50.0, meta={"config": dataclasses.asdict(config), "epoch": epoch, "plateau": {},
                                        "record": None})  # fmt: skip
    ckpt.close()
    if spoil:
        for path in (tmp_path / "w" / inside / "latest").rglob("*"):
            if path.is_file():
                path.write_bytes(b"")  # truncated to 0 bytes, as a full disk leaves them
    return ["--workdir", str(tmp_path / "w"), "--resume"]


QUICK_CONFIG = PRESETS["cnn_tb"].replace(train_size=1024, max_steps=2, epochs=1)
REAL = [
    (lambda mnist, tmp_path: spoiled_copy(mnist, tmp_path, flip), 2, "t10k-labels-idx1-ubyte: md5"),
    (lambda mnist, tmp_path: spoiled_copy(mnist, tmp_path, lambda p: p.write_bytes(p.read_bytes()[:-7])), 2,
     "t10k-labels-idx1-ubyte"),
    (lambda mnist, tmp_path: ["--val-size", "1024"], 2, "--val-size 1024 leaves no training images"),
    (lambda mnist, tmp_path: ["--batch-size", "2048"], 2, "--batch-size 2048 exceeds the 1024 training images"),
    (lambda mnist, tmp_path: checkpoint_of(tmp_path, QUICK_CONFIG.replace(momentum=0.9)), 2,
     "was made with different settings: momentum"),
    (lambda mnist, tmp_path: checkpoint_of(tmp_path, QUICK_CONFIG.replace(model="fast")), 2,
     "was made with different settings: model"),  # compared before orbax reads arrays of another shape
    (lambda mnist, tmp_path: checkpoint_of(tmp_path, QUICK_CONFIG, spoil=True), 1, "no intact checkpoint is left"),
    (lambda mnist, tmp_path: [*checkpoint_of(tmp_path, QUICK_CONFIG.replace(schedule="onecycle", epochs=3)),
                              "--schedule", "onecycle"], 2, "follows a one-cycle schedule over its 3 epochs"),
    # fewer epochs than were done: the run trained nothing and reported the checkpoint's epochs as its own
    (lambda mnist, tmp_path: checkpoint_of(tmp_path, QUICK_CONFIG.replace(epochs=3), epoch=2), 2,
     "--epochs 1: the run in "),
]  # fmt: skip


@pytest.mark.parametrize("make, code, message", REAL, ids=[str(i) for i in range(len(REAL))])
def test_bad_data_and_checkpoints_are_one_line(make, code, message, mnist, capsys, tmp_path):
    got, err = run_cli([*QUICK, *make(mnist, tmp_path)], capsys, tmp_path)
    assert got == code and err[-1].startswith("error: ") and message in err[-1], err
    assert all(line.startswith(("error: ", "[data] ")) for line in err), err  # progress notes, then the error
    assert not leftovers(tmp_path)


def files(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_new_run_refuses_a_workdir_that_holds_a_checkpoint(capsys, tmp_path):
    """Without --resume, a workdir holding another run's checkpoint is refused in one line and left as it was:
    saving into it would overwrite that run (orbax skipped the new run's epochs up to the old one's, then the
    run ended in a traceback)."""
    workdir = checkpoint_of(tmp_path, QUICK_CONFIG)[:2]
    before = files(tmp_path / "w")
    code, err = run_cli([*QUICK, *workdir], capsys, tmp_path)
    expected = f"error: --workdir {tmp_path / 'w'} holds the checkpoint of a run (epoch 1): --resume continues it"
    assert code == 2 and len(err) == 1 and err[0].startswith(expected), err
    assert files(tmp_path / "w") == before


@pytest.mark.parametrize(
    "inside, mode, message",
    [("", "sequential", "holds the seeds' checkpoint together (from vmapped seeds): resume them with --seed-mode vmap"),
     ("seed0", "vmap", "holds one checkpoint per seed (seed<k>/, from seeds trained one after another): resume them "
      "with --seed-mode sequential")],
)  # fmt: skip
def test_seeds_resume_only_in_the_layout_they_were_checkpointed_in(inside, mode, message, capsys, tmp_path):
    """Vmapped seeds checkpoint together in WORKDIR, sequential ones in WORKDIR/seed<k>: resumed the other way, a
    run would find no checkpoint and train every seed again from scratch."""
    argv = checkpoint_of(tmp_path, QUICK_CONFIG, inside=inside)
    code, err = run_cli([*QUICK, *argv, "--seeds", "2", "--seed-mode", mode], capsys, tmp_path)
    assert code == 2 and err == [f"error: --workdir {tmp_path / 'w'} {message}"], err


def test_divergence_stops_the_run_and_resume_with_a_lower_lr_works(mnist, capsys, tmp_path):
    """Two good epochs, then a resumed run at --lr 1e6 diverges in epoch 3: exit 1, one line naming the epoch,
    the step and the last good checkpoint; nothing of the bad epoch is saved; --resume at a lower rate finishes,
    and a later --resume without --lr keeps that rate (it went back to the preset's)."""
    flags = ["--model", "cnn", "--train-size", "2048", "--max-steps", "4", "--no-progress", "--no-report"]
    flags += ["--batch-size", "64", "--chunk-steps", "1"]  # the tiny cnn runs' shared program (kill_run)
    flags += ["--workdir", str(tmp_path / "w"), "--logdir", str(tmp_path / "log")]
    assert train.main([*flags, "--epochs", "2"]) == 0
    capsys.readouterr()
    assert train.main([*flags, "--epochs", "3", "--lr", "1e6", "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: training diverged in epoch 3 at step "), err
    assert f"the last good checkpoint is epoch 2 in {tmp_path / 'w'}" in err[0] and "lower --lr" in err[0]
    assert sorted(p.name for p in (tmp_path / "w" / "latest").iterdir()) == ["1", "2"]
    assert train.main([*flags, "--epochs", "3", "--lr", "0.02", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "after epoch 2" in out and "[3]: " in out
    assert "learning rate 0.04 -> 0.02 (--lr)" in out
    assert train.main([*flags, "--epochs", "4", "--resume"]) == 0
    assert "learning rate" not in capsys.readouterr().out
    lrs = [e["lr"] for e in json.loads((tmp_path / "log" / "metrics.json").read_text())["epochs"]]
    assert lrs == pytest.approx([0.04, 0.04, 0.02, 0.02])


def trained_params(workdir: Path, epochs: int):
    ckpt = Checkpointer(workdir)
    state, meta = ckpt.restore_latest(engine.create_state(QUICK_CONFIG, jax.random.PRNGKey(0)))
    assert meta["epoch"] == epochs
    return jax.tree.leaves((state.params, state.batch_stats, state.opt_state))


# Where a SIGKILL lands: (what to wait for, its description). A line of the run's output, or a file: no sleep,
# so each kill lands where it is meant to whatever the machine's speed.
KILL_POINTS = [
    ("line", "compile: ", "before the first epoch"),
    ("line", "[2]: ", "after epoch 2's evaluation, around its checkpoint"),
    # orbax's temporary directory 1.orbax-checkpoint-tmp-*, or the step it renamed it to: the first that exists.
    ("file", "latest/1*", "as epoch 1's checkpoint is written"),
]


def run_until(cmd, kill_when=None, workdir: Path | None = None) -> tuple[int, str, str]:
    """Runs `cmd`; with `kill_when` ("line", text) or ("file", glob under workdir), SIGKILLs it as soon as a line
    of its stdout starts with the text or such a file exists."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_when is not None:
        kind, what = kill_when
        out = []
        if kind == "line":
            for line in proc.stdout:  # the run flushes every line
                out.append(line)
                if line.startswith(what):
                    proc.send_signal(signal.SIGKILL)
                    break
        else:
            while proc.poll() is None and not any(workdir.glob(what)):
                time.sleep(0.001)
            proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=300)
        return proc.returncode, "".join(out) + rest, err
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.xdist_group("kill")  # one worker runs all three, so the uninterrupted run runs once
@pytest.mark.parametrize("kind, what, where", KILL_POINTS, ids=[w for _, _, w in KILL_POINTS])
def test_kill_9_then_resume_equals_an_uninterrupted_run(kind, what, where, mnist, tmp_path, uninterrupted):
    """SIGKILL at a chosen moment of a run, then --resume: the final parameters equal an uninterrupted run's bit
    for bit, and a checkpoint the kill left half written is reported and set aside. Each run is a process of
    its own, on real MNIST (4 epochs of 4 steps)."""
    workdir = tmp_path / "killed"
    code, _, err = run_until(kill_run(workdir), (kind, what), workdir)
    assert code == -signal.SIGKILL, f"the run ended ({code}) before the kill {where}: {err}"
    code, out, err = run_until(kill_run(workdir, "--resume"))
    assert code == 0, err
    assert ("resumed from" in out) or ("starting from scratch" in out), out
    for line in out.splitlines():  # a step the kill cut short is named and set aside, never used
        if "is damaged" in line:
            assert line.startswith(f"checkpoint {workdir}/latest/") and f"moved to {workdir}/damaged/" in line
    for a, b in zip(uninterrupted, trained_params(workdir, 4)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def kill_run(workdir: Path, *extra) -> list[str]:
    # Batch 64, one step per chunk: the train program of conftest's trained_cnn and of the other tiny cnn runs,
    # compiled once per suite (a chunk's program is the same for every --train-size).
    return [sys.executable, "-m", "jaxmnist.train", "--model", "cnn", "--train-size", "2048", "--max-steps", "4",
            "--batch-size", "64", "--epochs", "4", "--no-progress", "--no-report", "--chunk-steps", "1", "--workdir",
            str(workdir), "--logdir", str(workdir / "log"), *extra]  # fmt: skip


@pytest.fixture(scope="session")  # not "module": xdist interleaves modules, tearing those down
def uninterrupted(tmp_path_factory):
    """The parameters of the same run, never killed: the command's own main, in this test's process (the same
    programs and bits as the killed commands' processes, without another process's start)."""
    workdir = tmp_path_factory.mktemp("whole")
    assert train.main(kill_run(workdir)[3:]) == 0
    return trained_params(workdir, 4)
