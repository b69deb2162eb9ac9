"""scripts/bench.py, the command: a smoke run of --quick on the CPU (no timing assertions), --table, errors."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import bench
import jax
import pytest
from helpers import hugepages_in_a_command, malloc_in_a_command

ROOT = Path(__file__).resolve().parent.parent


def test_quick_cli_writes_json_and_table(tmp_path, mnist, capsys):
    """`--quick` end to end (cnn only, to stay well under a minute on a loaded 2-core box; the CLI's own --quick
    adds resnet): every measurement runs, the JSON holds raw timings, the table names the winner."""
    pytest.importorskip("torch")
    out = tmp_path / "quick.json"
    hugepages_env = {**os.environ, "JAXMNIST_HUGEPAGES": "1"}  # the switch's path for scripts, on
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--networks", "cnn", "--out", str(out)],
        env=hugepages_env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["finished"] and doc["settings"]["quick"]
    # Run as a script, it restarted itself with huge pages where this machine has them (jaxmnist.hugepages).
    tunables = doc["env"]["env_vars"].get("GLIBC_TUNABLES", "")
    assert ("glibc.malloc.hugetlb=1" in tunables) == hugepages_in_a_command(hugepages_env)
    assert doc["env"]["malloc"] == malloc_in_a_command()  # and kept freed memory (jaxmnist.malloc)
    kinds = {r["kind"]: r for r in doc["results"]}
    assert set(kinds) == {
        "jax_step",
        "torch_tuned",
        "torch_blog_step",
        "jax_epoch",
        "jax_epoch_seeds",
        "jax_eval",
        "torch_blog_epoch",
        "torch_tuned_eval",
        "paired_step",
        "paired_epoch",
    }, kinds
    assert all(r["status"] == "ok" for r in doc["results"]), [r.get("reason") for r in doc["results"]]
    step = kinds["jax_step"]
    assert step["flops_per_image"] > 1e6 and step["step"]["n"] >= 2 and step["compile_s"] > 0
    assert kinds["torch_blog_step"]["num_workers"] == 0
    assert doc["env"]["versions"]["jax"] == jax.__version__ and doc["env"]["commit"]
    assert kinds["jax_epoch_seeds"]["seeds"] == 2 and "vmapped s per seed" in proc.stdout
    for what in ("step", "epoch"):  # two rounds: ratios, but too few for an interval
        rec = kinds[f"paired_{what}"]
        assert rec["rounds"] == 2 and len(rec["ratios"]) == 2 and rec["verdict"] == "too few rounds", rec
        assert rec["ratio"] > 0 and rec["step_ms"] > 0 and f"| cnn | 8 | {what} | 2 |" in proc.stdout
    assert "| cnn | 8 |" in proc.stdout and "QUICK SMOKE RUN" in proc.stdout
    assert "JAX " in proc.stdout and "x faster" in proc.stdout
    print(f"quick run: {time.perf_counter() - t0:.1f} s")
    # --table reprints a saved run without measuring anything (in this process: the command's start-up is tested
    # above and in test_the_command_itself_fails_in_one_line).
    capsys.readouterr()
    assert bench.main(["--table", str(out)]) == 0 and "| cnn | 8 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-sizes", "0"], "expected positive integers"),
        (["--networks", "cnn,vgg"], "unknown network(s) vgg"),
        (["--table", "/nonexistent.json"], "cannot read --table"),
        (["--bogus"], "unrecognized arguments"),
        (["--pair-rounds", "-1"], "--pair-rounds must be 0 or more"),
        (["--iters", "0"], "--iters must be > 0, got 0"),
        (["--max-s", "nan"], "--max-s must be > 0, got nan"),
        (["--warmup", "-1"], "--warmup must be 0 or more"),
        (["--networks", ","], "names no network"),
        (["--torch-device", "bogus"], "--torch-device 'bogus': expected cpu or cuda[:N]"),
    ],
)
def test_bad_arguments_fail_in_one_line(argv, message, capsys):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_table_of_a_json_that_is_no_benchmark_is_one_line(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text('{"epochs": []}')  # a run's record, say
    assert bench.main(["--table", str(tmp_path / "metrics.json")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --table {tmp_path}/metrics.json is not a result file of scripts/bench.py\n", err


def test_the_command_itself_fails_in_one_line():
    """The same as a process: no traceback from the script's own start-up either."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--bogus"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unrecognized arguments" in proc.stderr
