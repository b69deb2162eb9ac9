"""scripts/frontier.py: the accuracy-against-time figure from the committed results, full-length runs only."""

import json
from pathlib import Path

from PIL import Image

import frontier
from results_table import load_results

RESULTS = Path(__file__).resolve().parent.parent / "results"


def test_only_full_length_timed_runs_are_drawn():
    results = {r["preset"] + ("-quirks" if r["blog_quirks"] else ""): r for r in load_results(RESULTS)}
    assert frontier.full_runs(results["resnet101"]) == {}  # 20 steps of one epoch: not the preset's length
    fast = frontier.full_runs(results["fast"])
    assert len(fast["jax"]) == len(results["fast"]["frameworks"]["jax"]["runs"]) >= 5
    assert all(t > 0 and 99 < acc < 100 for t, acc in fast["jax"] + fast["torch"])


def test_an_ensemble_is_drawn_at_its_members_summed_wall_time():
    runs = [{"seed": k, "wall_s": 100.0 + k, "final_acc": 99.6} for k in range(3)]
    result = {"reduced_epochs": False, "max_steps": None, "frameworks": {"jax": {"runs": runs}},
              "ensemble": {"seeds": [0, 2], "final_acc": 99.8}}  # fmt: skip
    assert frontier.ensemble_point(result) == (202.0, 99.8, 2)
    assert frontier.ensemble_point({**result, "reduced_epochs": True}) is None  # not the preset's length
    assert frontier.ensemble_point({k: v for k, v in result.items() if k != "ensemble"}) is None


def test_the_figure_is_written(tmp_path, capsys):
    out = tmp_path / "frontier.png"
    assert frontier.main([str(RESULTS), "--out", str(out)]) == 0
    runs = sum(len(p) for r in load_results(RESULTS) for p in frontier.full_runs(r).values())
    assert capsys.readouterr().out.startswith(f"{out}: {runs} full-length runs")
    assert Image.open(out).size == (1430, 660)
    assert frontier.main([str(tmp_path), "--out", str(out)]) == 2  # no results there


def test_by_default_the_gpu_runs_join_the_cpu_runs(tmp_path, capsys):
    """results/gpu/ (runs on a lent GPU) is drawn beside results/, its runs marked by their GPU, not a CPU machine."""
    assert frontier.gpus({"devices": ["cuda:NVIDIA H200", "gpu:NVIDIA H200"]}) == ["NVIDIA H200"]
    assert frontier.gpus({"devices": ["cpu:cpu"]}) == []
    out = tmp_path / "frontier.png"
    assert frontier.main(["--out", str(out)]) == 0
    both = [r for folder in (RESULTS, RESULTS / "gpu") for r in load_results(folder)]
    runs = sum(len(p) for r in both for p in frontier.full_runs(r).values())
    assert runs > sum(len(p) for r in load_results(RESULTS) for p in frontier.full_runs(r).values())
    assert capsys.readouterr().out.startswith(f"{out}: {runs} full-length runs of {len(both)} presets")


def test_folders_and_files_that_are_not_results_are_one_line(tmp_path, capsys):
    """An ablation's JSON among the results, a folder that is not there, an --out that cannot be written: one
    line each (tracebacks before), and nothing half-written left beside the --out."""
    (tmp_path / "fast.json").write_text(json.dumps({"val_size": 10000, "runs": []}))  # an ablation's file
    cases = [([str(tmp_path)], f"{tmp_path}/fast.json is not a results file of scripts/reproduce.py"),
             ([str(tmp_path / "nope")], f"no such folder: {tmp_path / 'nope'}"),
             (["--out", str(tmp_path)], f"cannot write --out {tmp_path}")]  # fmt: skip
    for argv, message in cases:
        assert frontier.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.tmp"))  # the failed write's temporary removed
