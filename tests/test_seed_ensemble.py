"""scripts/seed_ensemble.py: a reproduction's JAX seeds as an ensemble, from their reports' probabilities."""

import json
from pathlib import Path

import numpy as np
import pytest

import results_table
import seed_ensemble
from jaxmnist import evaluate


def fake_run(out, seed, probs, labels, images, elsewhere="/far/away/results"):
    """A finished run's record whose logdir names another machine's checkout, and its report under OUT."""
    logdir = f"{elsewhere}/runs/best/jax/seed{seed}"
    report = seed_ensemble.here(logdir, out) / seed_ensemble.REPORT
    summary = evaluate.summarise(probs, labels)
    evaluate.write(summary, images, report, probs=probs)
    return {"seed": seed, "final_acc": summary["accuracy"], "logdir": logdir}


def test_the_ensemble_is_the_mean_of_the_seeds_probabilities(tmp_path, mnist):
    """Three members, each right on a different 90 % of the test set and unsure elsewhere: their mean is right
    wherever two of them are, so the ensemble beats every member; a run without a report is left out."""
    labels, images = mnist.test_labels, mnist.test_images
    rng = np.random.default_rng(0)
    members = []
    for k in range(3):
        probs = np.full((len(labels), 10), 0.05, np.float32)
        right = rng.random(len(labels)) > 0.1
        guess = np.where(right, labels, (labels + 1 + k) % 10)
        probs[np.arange(len(labels)), guess] = 0.55
        members.append(probs)
    runs = [fake_run(tmp_path, k, p, labels, images) for k, p in enumerate(members)]
    runs.append({"seed": 3, "final_acc": 50.0, "logdir": "/far/away/results/runs/best/jax/seed3"})  # no report
    ens = seed_ensemble.ensemble(runs, tmp_path, "best")
    expected = evaluate.summarise(np.mean(members, axis=0), labels)
    assert ens["seeds"] == [0, 1, 2] and ens["final_acc"] == pytest.approx(expected["accuracy"])
    assert ens["final_acc"] > ens["members_final_acc"]["max"] + 5
    report = tmp_path / ens["report"]
    assert json.loads((report / "report.json").read_text())["accuracy"] == ens["final_acc"]
    assert (report / "confusion.png").exists() and (report / "misclassified.png").exists()
    assert seed_ensemble.ensemble(runs[:1], tmp_path, "best") is None  # one member is no ensemble
    result = {"preset": "cnn_tb", "frameworks": {}, "ensemble": ens}
    line = next(x for x in results_table.notes([result], {}, tmp_path) if x.startswith("Ensemble"))
    assert f"**{ens['final_acc']:.2f} %**" in line and "seeds 0, 1, 2" in line


def test_a_recorded_logdir_is_found_under_this_checkouts_out(tmp_path):
    assert seed_ensemble.here("/x/results/runs/fast/jax/seed2", tmp_path) == tmp_path / "runs/fast/jax/seed2"
    assert seed_ensemble.here("/runs/a/runs/b", tmp_path) == tmp_path / "runs/b"  # the last 'runs'
    assert seed_ensemble.here("/elsewhere/seed0", tmp_path) == Path("/elsewhere/seed0")  # not a reproduction's
