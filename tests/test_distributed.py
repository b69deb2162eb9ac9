"""jaxmnist.distributed: data parallel over 2 forced host devices, and over 2 processes on localhost (gloo),
each equal to one device. Every child process is bounded in time and talks over 127.0.0.1 only."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import hugepages_in_a_command, malloc_in_a_command

from jaxmnist import distributed, interop
from jaxmnist import train as train_cli
from jaxmnist.cli import UsageError

ROOT = Path(__file__).resolve().parent.parent
# A tiny run: 2 epochs of 10 steps of 64, evaluated on the whole test set (a CLI run cannot cut it).
TINY = ["--model", "cnn", "--train-size", "640", "--batch-size", "64", "--lr", "0.05", "--epochs", "2", "--no-augment"]
TINY += ["--no-progress", "--eval-batch-size", "1000", "--chunk-steps", "1"]  # one-step programs compile fastest
TIMEOUT_S = 300


def train(args, tmp_path, name, devices=1, extra_env=None, wait=True):
    """`python -m jaxmnist.train TINY args` with `devices` host devices; (process or result, logdir)."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu", **(extra_env or {})}
    cmd = [sys.executable, "-m", "jaxmnist.train", *TINY, *args, "--logdir", str(tmp_path / name)]
    kw = dict(cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return subprocess.Popen(cmd, **kw)
    proc = subprocess.run(cmd, timeout=TIMEOUT_S, **kw)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def curve(tmp_path, name, command=True):
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    if command:  # a subprocess of `train`, not this test's own process
        assert metrics["hugepages"] == hugepages_in_a_command()  # the command restarted itself (jaxmnist.hugepages)
        assert metrics["malloc"] == malloc_in_a_command()  # and kept freed memory (jaxmnist.malloc)
    return [(e["test_acc"], e["train_acc"]) for e in metrics["epochs"]]


def test_placement_refuses_what_it_cannot_do():
    assert distributed.Placement.over(None).mesh is None and distributed.Placement.over(1).size == 1
    with pytest.raises(UsageError, match="--devices 3: this run sees 1 device"):
        distributed.Placement.over(3)
    with pytest.raises(UsageError, match="go together"):
        distributed.initialize("127.0.0.1:1", None, 0)


def test_jax_distributed_starts_before_a_state_dict_is_read(monkeypatch, capsys):
    """Reading --torch-state-dict builds arrays, which starts JAX's backend, after which jax.distributed refuses to
    start: a distributed run from torch's weights ended in a traceback."""
    calls = []
    monkeypatch.setattr(distributed, "initialize", lambda *args: calls.append("jax.distributed"))

    def load_torch(*args):
        calls.append("state_dict")
        raise UsageError("stop here")

    monkeypatch.setattr(interop, "load_torch", load_torch)
    assert train_cli.main(["--model", "cnn", "--torch-state-dict", "cnn.pth", "--no-progress"]) == 2
    assert calls == ["jax.distributed", "state_dict"] and "stop here" in capsys.readouterr().err


@pytest.fixture(scope="session")  # not "module": xdist interleaves modules, tearing those down
def one_device(tmp_path_factory, mnist):
    """The run both data-parallel runs are compared with: one process, one device, the command's main in this
    test's process. Without a report: the runs on a mesh write theirs, and a report's pass must not wait on one."""
    root = tmp_path_factory.mktemp("one")
    assert train_cli.main([*TINY, "--no-report", "--logdir", str(root / "one")]) == 0
    return curve(root, "one", command=False)


@pytest.mark.xdist_group("distributed")  # one worker runs both, so the baseline runs once
def test_two_devices_equal_one(one_device, tmp_path):
    """The same global batch on a 2-device mesh: the same accuracies, epoch by epoch. Tolerance: 0.05 points of
    test accuracy (5 of 10,000 images) and 0.1 of train accuracy; measured: equal to the last printed digit. Not
    augmented: see tests/test_train_seeds.py on how the augmentation's fixed-point rounding parts two programs."""
    proc = train([], tmp_path, "two", devices=3)  # by default as many devices as split the batch of 64
    assert "using 2 of 3 devices: batch 64 splits evenly only so" in proc.stdout
    assert "data parallel over 2 devices in 1 process(es): each step's 64 images split 32 per device" in proc.stdout
    for (a_test, a_train), (b_test, b_train) in zip(one_device, curve(tmp_path, "two"), strict=True):
        assert abs(a_test - b_test) <= 0.05 and abs(a_train - b_train) <= 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(args, tmp_path, name):
    """Both processes of a localhost jax.distributed run (one CPU device each, gloo); their stdouts."""
    port = free_port()
    coordinator = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    procs = [train([*coordinator, "--process-id", str(i), *args], tmp_path, f"{name}{i}", wait=False) for i in (0, 1)]
    try:
        outs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    return [out for out, _ in outs]


@pytest.mark.xdist_group("distributed")
def test_two_processes_equal_one(one_device, tmp_path):
    """Two processes with one CPU device each (gloo collectives): process 0 alone prints and writes logs; their
    checkpoints (orbax, multi-host) resume; the run equals one process's. Tolerance as with two devices."""
    workdir = ["--workdir", str(tmp_path / "ckpt")]
    # The first run writes no report (the resumed run does): process 0's report pass would only add to the wait.
    out0, out1 = two_processes([*workdir, "--epochs", "1", "--no-report"], tmp_path, "first")
    assert "data parallel over 2 devices in 2 process(es)" in out0
    assert [line for line in out1.splitlines() if not line.startswith("[Gloo]")] == []  # only process 0 prints
    assert not (tmp_path / "first1").exists()  # nor writes logs
    out0, _ = two_processes([*workdir, "--resume"], tmp_path, "first")  # the same logdir: the log continues
    assert "resumed from" in out0 and "[2]:" in out0 and "[1]:" not in out0
    assert (tmp_path / "first0" / "report.json").exists() and not (tmp_path / "first1").exists()
    for (a_test, a_train), (b_test, b_train) in zip(one_device, curve(tmp_path, "first0"), strict=True):
        assert abs(a_test - b_test) <= 0.05 and abs(a_train - b_train) <= 0.1
