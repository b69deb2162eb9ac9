"""scripts/reproduce.py: the results table, resume and budget, and its refusals (runs are faked), and one real
run stopped and resumed in a later invocation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import reproduce
import results_table
import run_records
from jaxmnist import train, trainer
from jaxmnist.presets import config_from_args


def test_reproduce_table_regenerates_from_json(tmp_path):

    def run(seed, acc):
        return {
            "seed": seed,
            "final_acc": acc,
            "best_acc": acc + 0.1,
            "avg_epoch_s": 5.0,
            "epoch_s": [4.0, 6.0],
            "loaded_epochs": [2] if seed else [],  # seed 1's second epoch shared the cores: left out
            "device": "cpu:cpu",
            "machine": "AMD EPYC, family 25 model 1 stepping 1, avx2+fma, 2 cores",
            "versions": {},
            "commit": None,
        }

    result = {
        "preset": "cnn_tb",
        "blog": {"final_acc": 99.0, "epoch_s": 5.77, "epochs": 20},
        "epochs_run": 2,
        "reduced_epochs": True,
        "max_steps": None,
        "blog_quirks": False,
        "seeds": 2,
        "frameworks": {
            "jax": run_records.aggregate([run(0, 98.9), run(1, 99.1)]),
            "torch": run_records.aggregate([run(0, 99.0), {"seed": 1, "error": "boom"}]),
        },
    }
    (tmp_path / "cnn_tb.json").write_text(json.dumps(result))
    going = tmp_path / "runs" / "resnet" / "jax" / "seed0"  # a run stopped after epoch 1, its checkpoint kept
    (going / reproduce.CHECKPOINTS).mkdir(parents=True)
    (going / "metrics.json").write_text(json.dumps({"epochs": [{"epoch": 1}]}))
    assert reproduce.main(["--table-only", "--out", str(tmp_path)]) == 0
    row = next(line for line in (tmp_path / "README.md").read_text().splitlines() if line.startswith("| `cnn_tb`"))
    assert row == (
        "| `cnn_tb` | 99.00 % (5.77 s) | 2 of 20 (reduced epochs) | 2 / 1 | 99.00 ± 0.14 % | 99.10 ± 0.14 % "
        "| 99.00 % | 99.10 % | 4.50 ± 0.71 s / 5.00 s | 0.90 | jax: M1; torch: M1 |"
    )
    text = (tmp_path / "README.md").read_text()
    assert "1 run(s) failed" in text and "Machines: M1: AMD EPYC, family 25 model 1 stepping 1, avx2+fma" in text
    assert "In progress (not in the tables yet): `runs/resnet/jax/seed0` after epoch 1." in text
    assert "What reproduced" not in text  # no findings.md: no such section
    (tmp_path / results_table.FINDINGS).write_text("Both frameworks agree.\n")
    assert reproduce.main(["--table-only", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "## What reproduced and what did not\n\nBoth frameworks agree.\n\n## Time to accuracy" in text


def test_reproduce_keeps_results_when_every_run_fails(tmp_path, monkeypatch, capsys):
    earlier = '{"earlier": "results"}'
    (tmp_path / "resnet.json").write_text(earlier)
    monkeypatch.setattr(reproduce, "run_one", lambda fw, preset, seed, *_: {"seed": seed, "error": "boom"})
    monkeypatch.setattr(reproduce, "write_readme", lambda out: tmp_path / "README.md")
    (tmp_path / "README.md").write_text("")
    assert reproduce.main(["--presets", "resnet", "--seeds", "2", "--out", str(tmp_path)]) == 1
    assert (tmp_path / "resnet.json").read_text() == earlier
    assert "4 run(s) failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [(["--refresh"], "--refresh rewrites the tables: give it with --table-only"),
     (["--data-dir", "/nonexistent/mnist"], "--data-dir /nonexistent/mnist is not a directory")],
)  # fmt: skip
def test_flags_that_would_start_runs_in_vain_are_refused(argv, message, tmp_path, capsys):
    """Refused before any run starts (each would have started every run, failing or refreshing nothing)."""
    assert reproduce.main(["--presets", "cnn_tb", "--out", str(tmp_path), *argv]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not list(tmp_path.iterdir())


def test_reproduce_refuses_an_interpreter_without_the_framework(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(reproduce.REQUIRES, "torch", (("no_such_module_xyz",), "pip install -e '.[torch]'"))
    assert reproduce.main(["--presets", "cnn_tb", "--frameworks", "torch", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: torch runs need no_such_module_xyz") and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_reproduce_budget_resume_and_skips(tmp_path, monkeypatch, capsys):
    order = []

    def fake_run(framework, preset, seed, args, logdir, deadline=None):
        order.append((framework, seed))
        return {"seed": seed, "final_acc": 99.0, "best_acc": 99.0, "avg_epoch_s": 1.0, "device": "cpu:cpu",
                "versions": {}, "commit": None}  # fmt: skip

    with monkeypatch.context() as patched:
        patched.setattr(reproduce, "run_one", fake_run)
        assert reproduce.main(["--presets", "cnn_tb", "--seeds", "2", "--out", str(tmp_path), "--budget-s", "60"]) == 0
        assert order == [("jax", 0), ("torch", 0), ("jax", 1), ("torch", 1)]  # seed-major: a cut leaves pairs
        assert json.loads((tmp_path / "cnn_tb.json").read_text())["frameworks"]["torch"]["final_acc"]["n"] == 2

        order.clear()  # again: every seed is in the JSON with the same settings, so nothing runs, unless --rerun
        assert reproduce.main(["--presets", "cnn_tb", "--seeds", "2", "--out", str(tmp_path)]) == 0
        assert order == []
        assert reproduce.main(["--presets", "cnn_tb", "--seeds", "3", "--out", str(tmp_path)]) == 0
        assert order == [("jax", 2), ("torch", 2)]
        assert reproduce.main(["--presets", "cnn_tb", "--seeds", "1", "--out", str(tmp_path), "--rerun"]) == 0
        assert order == [("jax", 2), ("torch", 2), ("jax", 0), ("torch", 0)]  # seed 0 again; seeds 1, 2 stay
        assert json.loads((tmp_path / "cnn_tb.json").read_text())["frameworks"]["jax"]["final_acc"]["n"] == 3

    # The real run_one: with too little budget left it starts nothing, and says so.
    capsys.readouterr()
    assert reproduce.main(["--presets", "cnn_tb", "--seeds", "5", "--out", str(tmp_path), "--budget-s", "1"]) == 0
    captured = capsys.readouterr()
    assert "-m jaxmnist.train" not in captured.out and "4 run(s) skipped or stopped" in captured.err
    frameworks = json.loads((tmp_path / "cnn_tb.json").read_text())["frameworks"]
    assert [(agg["final_acc"]["n"], agg["skipped"], agg["failed"]) for agg in frameworks.values()] == [(3, 2, 0)] * 2

    # Another setting into the same file: refused before anything runs, unless --rerun replaces those results.
    assert reproduce.main(["--presets", "cnn_tb", "--seeds", "1", "--out", str(tmp_path), "--epochs", "1"]) == 2
    assert "holds runs made with other settings (epochs, epochs_run): --rerun replaces them" in capsys.readouterr().err


def test_reproduce_never_drops_earlier_runs(tmp_path, monkeypatch):
    def fake_run(framework, preset, seed, args, logdir, deadline=None):
        if framework == "torch" and seed == 1:
            raise KeyboardInterrupt  # the invocation is cut off after torch's seed 0
        return {"seed": seed, "final_acc": 99.0 + seed / 10, "best_acc": 99.0, "avg_epoch_s": 1.0,
                "device": "cpu:cpu", "versions": {}, "commit": None}  # fmt: skip

    def seeds(fw):
        agg = json.loads((tmp_path / "cnn_tb.json").read_text())["frameworks"].get(fw)
        return [run["seed"] for run in agg["runs"]] if agg else []

    monkeypatch.setattr(reproduce, "run_one", fake_run)
    out = ["--presets", "cnn_tb", "--out", str(tmp_path)]
    assert reproduce.main([*out, "--seeds", "3", "--frameworks", "jax"]) == 0
    assert (seeds("jax"), seeds("torch")) == ([0, 1, 2], [])
    try:  # torch only, cut off: JAX's seeds 1 and 2 were not reached by this invocation, and stay
        reproduce.main([*out, "--seeds", "3", "--frameworks", "torch"])
    except KeyboardInterrupt:
        pass
    assert (seeds("jax"), seeds("torch")) == ([0, 1, 2], [0])
    assert reproduce.main([*out, "--seeds", "1"]) == 0  # fewer seeds than the file holds: all are kept
    assert (seeds("jax"), seeds("torch")) == ([0, 1, 2], [0])


def test_an_ensemble_whose_members_reports_are_not_on_disk_is_kept(tmp_path, monkeypatch):
    """A fresh clone holds results/*.json but not every member's report (OUT/runs): another framework's runs, or
    more seeds whose reports are there, must not drop the committed ensemble for a smaller one."""
    def fake_run(framework, preset, seed, args, logdir, deadline=None):
        return {"seed": seed, "final_acc": 99.0, "best_acc": 99.0, "avg_epoch_s": 1.0, "device": "cpu:cpu",
                "versions": {}, "commit": None}  # fmt: skip

    monkeypatch.setattr(reproduce, "run_one", fake_run)
    out = ["--presets", "cnn_tb", "--out", str(tmp_path)]
    assert reproduce.main([*out, "--seeds", "3", "--frameworks", "jax"]) == 0  # no reports: no ensemble
    doc = json.loads((tmp_path / "cnn_tb.json").read_text())
    members = {"mean": 99.0, "min": 99.0, "max": 99.0}
    committed = {"seeds": [0, 1, 2], "final_acc": 99.5, "members_final_acc": members, "report": "r"}
    (tmp_path / "cnn_tb.json").write_text(json.dumps({**doc, "ensemble": committed}))
    smaller = {**committed, "seeds": [3], "final_acc": 98.0}
    ensembles = iter([None, smaller])  # none recomputable; then one of the new seed alone
    monkeypatch.setattr(reproduce.seed_ensemble, "ensemble", lambda *args: next(ensembles))
    assert reproduce.main([*out, "--seeds", "3", "--frameworks", "torch"]) == 0
    assert json.loads((tmp_path / "cnn_tb.json").read_text())["ensemble"] == committed
    assert reproduce.main([*out, "--seeds", "4", "--frameworks", "jax"]) == 0
    assert json.loads((tmp_path / "cnn_tb.json").read_text())["ensemble"] == committed


def test_a_finished_run_of_a_preset_with_a_tuple_setting_is_kept(tmp_path, monkeypatch):
    """cnn_deep's config holds a tuple (blog_best), which its JSON gives back as a list: the finished run must still
    count as made with the same settings (it did not, and a second invocation trained 100 epochs again)."""
    calls = []

    def fake_run(framework, preset, seed, args, logdir, deadline=None):
        calls.append((framework, seed))
        return {"seed": seed, "final_acc": 99.7, "best_acc": 99.7, "avg_epoch_s": 1.0, "device": "cpu:cpu",
                "versions": {}, "commit": None}  # fmt: skip

    monkeypatch.setattr(reproduce, "run_one", fake_run)
    out = ["--presets", "cnn_deep", "--out", str(tmp_path), "--seeds", "1", "--frameworks", "jax"]
    assert reproduce.main(out) == 0 and reproduce.main(out) == 0
    assert calls == [("jax", 0)]


def test_reproduce_trains_jax_seeds_together_when_asked(tmp_path, monkeypatch):
    calls = []

    def fake_seeds(framework, preset, seeds, args, logdir, deadline=None):
        calls.append((framework, tuple(seeds)))
        return {s: {"seed": s, "final_acc": 99.0, "best_acc": 99.0, "avg_epoch_s": 1.0, "device": "gpu:H200",
                    "versions": {}, "commit": None} for s in seeds}  # fmt: skip

    monkeypatch.setattr(reproduce, "run_seeds", fake_seeds)
    out = ["--presets", "cnn_tb", "--out", str(tmp_path), "--jax-seeds", "together"]
    assert reproduce.main([*out, "--seeds", "2", "--frameworks", "jax"]) == 0
    assert reproduce.main([*out, "--seeds", "5"]) == 0  # JAX's seeds 2-4 in one process, torch's one by one
    assert calls == [("jax", (0, 1)), ("torch", (0,)), ("torch", (1,)), ("jax", (2, 3, 4))] + [
        ("torch", (s,)) for s in (2, 3, 4)
    ]
    frameworks = json.loads((tmp_path / "cnn_tb.json").read_text())["frameworks"]
    assert [r["seed"] for r in frameworks["jax"]["runs"]] == [0, 1, 2, 3, 4] and frameworks["torch"]["final_acc"][
        "n"
    ] == 5


def test_runs_skip_the_end_of_run_report(tmp_path, monkeypatch):
    commands = []

    class Failed:
        returncode, stderr = 1, "error: stop here"

    monkeypatch.setattr(reproduce.subprocess, "run", lambda cmd, **kw: commands.append(cmd) or Failed())
    reproduce.main(["--presets", "cnn_tb", "--seeds", "1", "--out", str(tmp_path), "--jax-seeds", "each"])
    jax_cmd, torch_cmd = commands
    assert "--no-report" in jax_cmd and "--no-report" in torch_cmd  # wall times stay comparable


@pytest.mark.slow
def test_a_stopped_run_resumes_in_the_next_invocation_bit_for_bit(tmp_path, mnist):
    """A run that an earlier invocation left after epoch 1 (its checkpoint, its log, a 'stopped' segment) is
    continued by the next one from that checkpoint: the same test accuracies as an uninterrupted run, its wall
    time rebuilt as start-up plus epochs, the checkpoint removed once it ends."""
    flags = ["--preset", "cnn_tb", "--seed", "0", "--epochs", "2", "--max-steps", "2"]
    preset, config = config_from_args(train.build_parser().parse_args(flags))  # what reproduce's run trains
    logdir = tmp_path / "out" / "runs" / "cnn_tb" / "jax" / "seed0"
    common = dict(preset=preset, data=mnist, progress=False, report=False)
    trainer.train_and_evaluate(config, logdir=logdir, workdir=logdir / reproduce.CHECKPOINTS, stop_after_epoch=1,
                               **common)  # fmt: skip
    reproduce.add_segment(logdir, 12.5, "stopped")
    whole = trainer.train_and_evaluate(config, logdir=tmp_path / "whole", **common).record

    out = ["--presets", "cnn_tb", "--seeds", "1", "--epochs", "2", "--max-steps", "2", "--frameworks", "jax"]
    assert reproduce.main([*out, "--out", str(tmp_path / "out")]) == 0
    run = json.loads((tmp_path / "out" / "cnn_tb.json").read_text())["frameworks"]["jax"]["runs"][0]
    assert run["test_acc"] == [e["test_acc"] for e in whole["epochs"]]
    assert run["segments"] == 2 and run["wall_s"] == pytest.approx(run["startup_s"] + sum(run["epoch_s"]))
    assert run["machine"] and not (logdir / reproduce.CHECKPOINTS).exists()
    # The final weights' report, for the seeds' ensemble (one seed here: no ensemble yet)
    report = json.loads((logdir / "report" / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(run["final_acc"], abs=1e-3)
    assert (logdir / "report" / "probabilities.npz").exists()
    assert "ensemble" not in json.loads((tmp_path / "out" / "cnn_tb.json").read_text())


def test_a_run_started_afresh_does_not_inherit_an_earlier_runs_logs(tmp_path, monkeypatch):
    """A logdir without a checkpoint holds a finished (or never checkpointed) run: a new run there starts from
    scratch, so its segments and curves must not be appended to the old run's (the new one counted as resumed).
    An empty workdir is no checkpoint: both trainers create it before their first epoch."""
    logdir = tmp_path / "runs" / "cnn_tb" / "jax" / "seed0"
    (logdir / reproduce.CHECKPOINTS / "latest").mkdir(parents=True)  # a run stopped before its first epoch ended
    reproduce.add_segment(logdir, 100.0, "finished")  # a finished run: its checkpoint removed, its logs kept
    (logdir / "events.out.tfevents.1.vm").write_text("the old run's curves")

    class Failed:
        returncode, stderr = 1, "error: stop here"

    monkeypatch.setattr(reproduce.subprocess, "run", lambda cmd, **kw: Failed())
    # JAX's backend is asked of a child process, once per process (cached): not of the stand-in above, whichever
    # test of this worker ran first.
    monkeypatch.setattr(reproduce, "jax_backend", lambda: "cpu")
    reproduce.main(["--presets", "cnn_tb", "--seeds", "1", "--frameworks", "jax", "--out", str(tmp_path)])
    segments = json.loads((logdir / run_records.SEGMENTS).read_text())
    assert [s["ended"] for s in segments] == ["failed"] and not (logdir / "events.out.tfevents.1.vm").exists()


def test_blog_runs_script_steps_through_the_issues_order_within_its_budget(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "blog_runs.sh"
    env = {**os.environ, "BUDGET_S": "0", "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    calls = [line.split("continue: ", 1)[1] for line in done.stdout.splitlines() if "budget spent" in line]
    assert done.returncode == 0 and calls[0] == "--presets resnet --seeds 1" and len(calls) == 6, done.stdout
    assert calls[-1] == "--presets cnn_deep --seeds 1 --frameworks torch"
    bad = subprocess.run(["bash", str(script)], env={**env, "BUDGET_S": "x"}, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == "error: BUDGET_S must be a whole number of seconds, got 'x'\n"


def test_gpu_lease_refuses_a_missing_out_or_a_bad_budget_in_one_line(tmp_path):
    """scripts/gpu_lease.sh checks what it was given before it writes or starts anything."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_lease.sh"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    no_out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert no_out.returncode == 2
    assert no_out.stderr == "error: OUT must name the folder for the results (the device tool sets it)\n"
    out = tmp_path / "out"
    for bad in ({"LEASE_S": "x"}, {"BENCH_S": "1.5"}, {"PARITY_S": "-1"}, {"CACHE_S": "1e3"}):
        done = subprocess.run(["bash", str(script)], env={**env, "OUT": str(out), **bad}, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        value = next(iter(bad.values()))
        assert done.returncode == 2
        assert done.stderr == ("error: LEASE_S, BENCH_S, PARITY_S and CACHE_S must be whole numbers of seconds, "
                               f"got '{value}'\n")  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("script", ["reproduce", "results_table", "bench", "parallel_overhead"])
def test_scripts_without_jaxmnist_say_so_in_one_line(script):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{script}.py"
    code = (f"import runpy, sys; sys.modules['jaxmnist'] = None; sys.path.insert(0, {str(path.parent)!r}); "
            f"runpy.run_path({str(path)!r}, run_name='__main__')")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("error: cannot import jaxmnist"), done.stderr
    assert done.stderr.count("\n") == 1


def test_a_run_whose_first_process_went_unrecorded_still_counts_as_resumed(tmp_path, monkeypatch):
    """Its first process was stopped together with reproduce.py (no segment written), 2 of 3 epochs done; the
    next invocation resumes it. Its wall time is what one uninterrupted process would take, as for any resumed
    run (start-up plus every epoch), not the last process's: that made its time to 99 % negative (-1,169 s)."""
    logdir = tmp_path / "runs" / "cnn_tb" / "torch" / "seed0"
    (logdir / reproduce.CHECKPOINTS).mkdir(parents=True)
    (logdir / reproduce.CHECKPOINTS / "checkpoint.pt").write_bytes(b"")  # the checkpoint the stopped process left
    epochs = [{"epoch": k + 1, "test_acc": acc, "time_s": 100.0} for k, acc in enumerate([98.8, 99.2, 99.6])]
    record = {"final_acc": 99.6, "best_acc": 99.6, "best_epoch": 3, "avg_epoch_s": 100.0, "compile_s": None,
              "device": "cpu:cpu", "versions": {}, "commit": None, "startup_s": 20.0, "epochs": epochs}  # fmt: skip

    def resumed_run(cmd, **kw):
        (logdir / "metrics.json").write_text(json.dumps(record))
        return subprocess.CompletedProcess(cmd, 0, stderr="")

    clock = iter([0.0, 130.0])  # the resuming process: 130 s for epoch 3 (and its own start-up)
    monkeypatch.setattr(reproduce.subprocess, "run", resumed_run)
    monkeypatch.setattr(reproduce.time, "perf_counter", lambda: next(clock))
    run = reproduce.run_one("torch", "cnn_tb", 0, reproduce.build_parser().parse_args([]), logdir)
    assert [s["ended"] for s in json.loads((logdir / run_records.SEGMENTS).read_text())] == ["unrecorded", "finished"]
    assert run["segments"] == 2 and run["wall_s"] == 320.0  # 20 s of start-up and 3 epochs of 100 s
    assert run["time_to"] == {"99.0": 220.0, "99.5": 320.0}

    # A result written before this rule (the last process's wall time) is corrected by --refresh.
    stale = {**run, "wall_s": 130.0, "segments": None, "time_to": {"99.0": -70.0, "99.5": 130.0}}
    result = {"preset": "cnn_tb", "frameworks": {"torch": run_records.aggregate([stale])}}
    (tmp_path / "cnn_tb.json").write_text(json.dumps(result))
    run_records.refresh(tmp_path / "cnn_tb.json")
    fixed = json.loads((tmp_path / "cnn_tb.json").read_text())["frameworks"]["torch"]["runs"][0]
    assert (fixed["wall_s"], fixed["time_to"], fixed["segments"]) == (320.0, run["time_to"], 2)


def test_refresh_reads_the_runs_logged_facts_again_by_todays_rules(tmp_path):
    machine = "AMD EPYC, family 25 model 1 stepping 1, avx2+fma, 2 cores"
    run = {"seed": 0, "final_acc": 99.3, "best_acc": 99.35, "avg_epoch_s": 250.0, "epoch_s": [300.0, 200.0],
           "device": "cpu:cpu", "versions": {}, "commit": None}  # fmt: skip
    result = {"preset": "resnet", "blog": {"final_acc": 99.3, "epoch_s": 14.43, "epochs": 20}, "epochs_run": 2,
              "reduced_epochs": True, "max_steps": None, "blog_quirks": False, "seeds": 1,
              "frameworks": {"jax": run_records.aggregate([run])}}  # fmt: skip
    (tmp_path / "resnet.json").write_text(json.dumps(result))
    logdir = tmp_path / "runs" / "resnet" / "jax" / "seed0"
    logdir.mkdir(parents=True)
    epochs = [{"epoch": 1, "load": 2.1, "others_cpu": 0.4}, {"epoch": 2, "load": 3.9, "others_cpu": 0.01}]
    (logdir / "metrics.json").write_text(json.dumps({"machine": machine, "startup_s": 40.0, "epochs": epochs}))
    assert reproduce.main(["--table-only", "--refresh", "--out", str(tmp_path)]) == 0
    jax_runs = json.loads((tmp_path / "resnet.json").read_text())["frameworks"]["jax"]
    assert jax_runs["runs"][0]["loaded_epochs"] == [1]  # the CPU share decides where it was measured, not the load
    assert jax_runs["machines"] == [machine] and jax_runs["quiet_epoch_s"]["mean"] == 200.0
    assert jax_runs["runs"][0]["startup_s"] == 40.0


def test_a_run_resumed_on_another_machine_names_both_machines():
    first, second = "AMD EPYC, family 25 model 1, avx2+fma, 2 cores", "Intel Xeon, family 6 model 167, avx512f, 2 cores"
    run = {"seed": 0, "final_acc": 99.7, "best_acc": 99.75, "avg_epoch_s": 80.0, "epoch_s": [110.0, 48.0],
           "device": "cpu:cpu", "versions": {}, "commit": None, "machine": first, "other_machines": [second]}  # fmt: skip
    assert run_records.aggregate([run])["machines"] == sorted([first, second])
