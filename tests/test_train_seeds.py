"""jaxmnist.train's seeds: vmapped seeds equal each seed trained alone, sequential seeds share their programs,
a vmapped stack checkpoints and resumes, the summary (tiny real runs)."""

import json

import jax
import numpy as np
import pytest
from helpers import tiny_data

from jaxmnist import programs, seeds, trainer
from jaxmnist.cli import UsageError
from jaxmnist.presets import Config

# Dropout and a plateau rule that fires: each seed's own keys and learning rate matter. No augmentation: its
# PIL-exact fixed-point rounding can turn a one-ulp difference of the vmapped program into another boundary pixel,
# after which the two runs part as runs on two machines would (the augmentation itself vmaps exactly).
TINY = Config(
    model="cnn", batch_size=64, lr=0.05, epochs=3, train_size=640, eval_batch_size=500, plateau=True,
    plateau_patience=0,
)  # fmt: skip
# One step per compiled chunk: it compiles as fast as a rolled scan (the CPU default of 8 unrolled steps takes ~5x
# longer), and runs ~10x faster than one on the CPU, where a scan's while loop is slow.
RUN = dict(progress=False, chunk_steps=1, unroll=True, report=False)  # reports: tests/test_evaluate.py, and below
# vmapped against alone under XLA's default kernels, whatever conftest fixes: XLA:CPU runs a vmapped (grouped)
# convolution through Eigen's kernels by another route than a plain one, and the two runs drift apart sooner
# (measured on a Zen 3: one test image apart by epoch 3, parameters up to 1e-2 apart relatively). On a CPU, seeds
# run in turn unless told otherwise (test_cpu_runs_seeds_in_turn_unless_told).
VMAP_RUN = dict(RUN, conv_impl="xla")


def curve(result):
    """Accuracies to 1e-3 points (100 * correct / count in float32 rounds differently in a vmapped program) and
    learning rates, per epoch."""
    return [(round(e["test_acc"], 3), round(e["train_acc"], 3), e["lr"]) for e in result.record["epochs"]]


def test_parse_seeds():
    assert seeds.parse_seeds("3") == (0, 1, 2)
    assert seeds.parse_seeds("4-6") == (4, 5, 6)
    assert seeds.parse_seeds("0,7,2") == (0, 7, 2)
    for bad in ("0", "-1", "5-3", "1,1", "a", "1,x", " 3", "+3"):
        with pytest.raises(UsageError):
            seeds.parse_seeds(bad)


def test_cpu_runs_seeds_in_turn_unless_told():
    assert seeds.choose_seed_mode("auto", TINY, 4)[0] == "sequential"  # tests run on the CPU
    assert seeds.choose_seed_mode("vmap", TINY, 4)[0] == "vmap"
    assert seeds.choose_seed_mode("auto", TINY, 1)[0] == "sequential"


def test_vmapped_seeds_equal_each_seed_alone(mnist, tmp_path):
    """Tolerance: the same test and train accuracies and learning rates in every epoch; parameters within 1e-4
    (relative) after 30 steps: vmapped convolutions are grouped ones, summed in another order."""
    data = tiny_data(mnist)
    run = {**VMAP_RUN, "report": True}
    stack = trainer.train_seeds(TINY, (0, 1), "vmap", data=data, logdir=tmp_path / "log", **run)
    for seed, vmapped in zip((0, 1), stack):
        alone = trainer.train_and_evaluate(
            TINY.replace(seed=seed), data=data, logdir=tmp_path / f"alone{seed}", **VMAP_RUN
        )
        assert curve(vmapped) == curve(alone)
        for a, b in zip(jax.tree.leaves(vmapped.state), jax.tree.leaves(alone.state)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert curve(stack[0]) != curve(stack[1])  # two seeds, two runs
    assert [r.record["recompiles_after_first_epoch"] for r in stack] == [0, 0]
    assert [e["lr"] for e in stack[0].record["epochs"]] != [TINY.lr] * 3  # the plateau rule stepped
    summary = json.loads((tmp_path / "log" / "seeds.json").read_text())
    finals = [r.record["final_acc"] for r in stack]
    assert summary["mode"] == "vmap" and summary["final_acc"]["each"] == finals
    assert summary["final_acc"]["mean"] == pytest.approx(np.mean(finals))
    for seed in (0, 1):
        metrics = json.loads((tmp_path / "log" / f"seed{seed}" / "metrics.json").read_text())
        assert metrics["config"]["seed"] == seed and len(metrics["epochs"]) == 3
        report = json.loads((tmp_path / "log" / f"seed{seed}" / "report.json").read_text())  # each seed's weights
        assert report["accuracy"] == pytest.approx(metrics["final_acc"], abs=1e-3)


def test_sequential_seeds_compile_once_and_equal_each_seed_alone(mnist, tmp_path, monkeypatch):
    data = tiny_data(mnist)
    compiled = []
    compile_training = programs.compile_training
    monkeypatch.setattr(programs, "compile_training", lambda *a, **k: compiled.append(1) or compile_training(*a, **k))
    config = TINY.replace(epochs=2, blog_quirks=True)  # quirk 2: the test set augmented with each seed's own key
    runs = trainer.train_seeds(config, (0, 1), "sequential", data=data, logdir=tmp_path / "log", **RUN)
    assert len(compiled) == 1
    alone = trainer.train_and_evaluate(config.replace(seed=1), data=data, logdir=tmp_path / "alone", **RUN)
    assert curve(runs[1]) == curve(alone)
    for a, b in zip(jax.tree.leaves(runs[1].state), jax.tree.leaves(alone.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert json.loads((tmp_path / "log" / "seeds.json").read_text())["mode"] == "sequential"


def test_vmapped_stack_resumes_bitwise(mnist, tmp_path):
    data = tiny_data(mnist)
    run = dict(data=data, **RUN)
    full = trainer.train_seeds(TINY, (0, 1), "vmap", workdir=tmp_path / "full", **run)
    trainer.train_seeds(TINY, (0, 1), "vmap", workdir=tmp_path / "cut", stop_after_epoch=1, **run)
    resumed = trainer.train_seeds(TINY, (0, 1), "vmap", workdir=tmp_path / "cut", resume=True, **run)
    for f, r in zip(full, resumed):
        for a, b in zip(jax.tree.leaves(f.state), jax.tree.leaves(r.state)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(UsageError, match="different settings: seeds"):
        trainer.train_seeds(TINY, (0, 2), "vmap", workdir=tmp_path / "cut", resume=True, **run)
