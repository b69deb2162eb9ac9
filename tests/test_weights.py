"""jaxmnist.weights: ensembles (probabilities averaged by one program over the stacked weights), the seeds of a
workdir as members (a vmapped stack, or seed<k>/ runs), --seed's forms, and the commands that take them."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from helpers import tiny_data

from jaxmnist import engine, evaluate, predict, trainer, weights
from jaxmnist.checkpoint import Checkpointer
from jaxmnist.cli import UsageError
from jaxmnist.presets import Config
from jaxmnist.seeds import Seeds

# tests/test_train_seeds.py's tiny runs for one epoch: their programs, read from the session's compile cache.
TINY = Config(model="cnn", batch_size=64, lr=0.05, epochs=1, train_size=640, eval_batch_size=500)
RUN = {"progress": False, "chunk_steps": 1, "unroll": True}


def test_an_ensemble_is_the_mean_of_its_members(rng):
    members = [weights.initialised("cnn", s) for s in (0, 1, 2)]
    images = rng.integers(0, 256, (37, 28, 28), dtype=np.uint8)
    ensemble = weights.Ensemble.of(members)
    assert isinstance(ensemble, weights.Ensemble) and ensemble.members == 3 and ensemble.name == "cnn"
    assert ensemble.source.startswith("an ensemble of 3: cnn seed 0; cnn seed 1")
    expected = np.mean([m.probabilities(images) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.probabilities(images), expected, rtol=1e-5, atol=1e-7)
    assert weights.Ensemble.of(members[:1]) is members[0]  # one model stays itself


def test_an_ensemble_is_one_network():
    with pytest.raises(UsageError, match="one network with one head: cnn seed 0 is cnn, fast seed 0 is fast"):
        fast = weights.Model("fast", {}, "fast seed 0")
        weights.Ensemble.of([weights.initialised("cnn", 0), fast])  # refused before stacking


def test_inference_runs_the_machines_conv_plan(rng):
    """A model's program takes its plan: the network runs the plan's formulations, and the program compiles with
    the plan's kernel library (eigen: no YNNPACK fusion, XLA:CPU's default for convolutions on x86), with the
    probabilities of XLA's own kernels (float32: 1e-5)."""
    images = rng.integers(0, 256, (8, 28, 28), dtype=np.uint8)
    base = weights.initialised("cnn", 0)
    xla, eigen, matmul = (dataclasses.replace(base, conv_impl=impl) for impl in ("xla", "eigen", "matmul"))
    assert (xla.plan.library, eigen.plan.library, matmul.plan.default) == ("xla", "eigen", "matmul")
    assert matmul.module.conv_plan == matmul.plan and eigen.module.conv_plan == eigen.plan
    compiled = eigen.program.lower(eigen.module.apply, eigen.variables, images).compile().as_text()
    assert "convolution" in compiled and "ynn" not in compiled
    np.testing.assert_allclose(eigen.probabilities(images), xla.probabilities(images), atol=1e-5)


@pytest.mark.parametrize(
    "text,seed",
    [(None, None), ("all", "all"), ("3", 3), ("0,2,4", (0, 2, 4)), ("1-3", (1, 2, 3))],
)
def test_seed_flag_forms(text, seed):
    assert weights.parse_seed(text) == seed


@pytest.mark.parametrize("text", ["x", "3-1", "-1", "1,", "all,2", "0,0", "2,1,2"])  # repeats: one member twice
def test_bad_seed_flags_are_usage_errors(text):
    with pytest.raises(UsageError, match=f"--seed '{text}': expected a seed"):
        weights.parse_seed(text)


@pytest.fixture(scope="session")  # not "module": xdist interleaves modules, tearing those down
def seeded(mnist, tmp_path_factory):
    """Seeds 0 and 1 of a tiny run, trained together (one vmapped workdir) and in turn (WORKDIR/seed<k>)."""
    root = tmp_path_factory.mktemp("seeded")
    for mode in ("vmap", "sequential"):
        trainer.train_seeds(TINY, (0, 1), mode, data=tiny_data(mnist), workdir=root / mode, **RUN)
    return root


@pytest.mark.xdist_group("seeded")  # one worker builds the seeded fixture, once
@pytest.mark.parametrize("mode", ["vmap", "sequential"])
def test_the_seeds_of_a_workdir_are_members(seeded, mode, mnist):
    workdir = str(seeded / mode)
    alone = [weights.from_workdir(workdir, seed=k) for k in (0, 1)]
    assert [m.source.split(" (")[0] for m in alone] == (
        [f"{workdir} seed 0", f"{workdir} seed 1"] if mode == "vmap" else [f"{workdir}/seed0", f"{workdir}/seed1"]
    )
    both = weights.Ensemble.of(weights.workdir_members(workdir, "best", "all"))
    assert both.members == 2
    images = mnist.test_images[:50]
    expected = np.mean([m.probabilities(images) for m in alone], axis=0)
    np.testing.assert_allclose(both.probabilities(images), expected, rtol=1e-5, atol=1e-7)
    assert len(weights.workdir_members(workdir, "best", (1,))) == 1
    with pytest.raises(UsageError, match="holds seeds 0, 1.*pick one with --seed, or --seed all for their ensemble"):
        weights.workdir_members(workdir, "best", None)
    with pytest.raises(UsageError, match="no seed 5"):
        weights.workdir_members(workdir, "best", (0, 5))
    if mode == "sequential":  # one run's own workdir: its seed, or all, and no other (it was ignored)
        one = str(seeded / mode / "seed1")
        assert len(weights.workdir_members(one, "best", 1)) == len(weights.workdir_members(one, "best", "all")) == 1
        with pytest.raises(UsageError, match=r"holds one run, of seed 1: no seed 0"):
            weights.workdir_members(one, "best", 0)


@pytest.mark.xdist_group("seeded")  # one worker builds the seeded fixture, once
def test_reading_a_workdir_initialises_nothing(seeded, monkeypatch):
    """The checkpoint restores into shapes (weights.restore_target), not into a fresh state: no network is
    initialised and no optimiser state built (which compiled about twenty programs of every command's start), and
    the weights are those a fresh state as the target restores, to the bit."""
    stack, workdir = Seeds((0, 1), vmapped=True), seeded / "vmap"
    ckpt = Checkpointer(workdir, read_only=True)
    full, _ = ckpt.restore(stack.create_state(TINY, total_steps=1), "best")
    ckpt.close()

    def refuse(*args, **kwargs):
        raise AssertionError("a workdir's model was read through a fresh initialisation")

    monkeypatch.setattr(engine, "init_variables", refuse)
    target = weights.restore_target(stack, TINY)
    assert {type(leaf) for leaf in jax.tree.leaves(target)} == {jax.ShapeDtypeStruct}
    assert {leaf.shape[0] for leaf in jax.tree.leaves(target.params)} == {2}  # the two seeds' stack
    expected = jax.device_get(full.eval_variables())
    for k in (0, 1):
        model = weights.from_workdir(str(workdir), seed=k)
        jax.tree.map(np.testing.assert_array_equal, model.variables, stack.take(expected, k))


@pytest.mark.xdist_group("seeded")  # one worker builds the seeded fixture, once
def test_evaluate_and_predict_take_an_ensemble(seeded, tmp_path, capsys, mnist, monkeypatch):
    monkeypatch.chdir(tmp_path)  # two workdirs' report goes to ./report-ensemble
    vmapped, sequential = str(seeded / "vmap"), str(seeded / "sequential")
    assert evaluate.main(["--workdir", vmapped, "--seed", "0", "--model", "resnet"]) == 2  # not ignored
    assert f"--model resnet names the network of --torch-state-dict; {vmapped} seed 0" in capsys.readouterr().err
    assert evaluate.main(["--workdir", vmapped, "--workdir", sequential, "--seed", "all"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cnn from an ensemble of 4: ") and "report: report-ensemble/report.json" in out
    report = json.loads((tmp_path / "report-ensemble" / "report.json").read_text())
    members = [m for w in (vmapped, sequential) for m in weights.workdir_members(w, "best", "all")]
    probs = weights.Ensemble.of(members).probabilities(mnist.test_images)
    assert report["accuracy"] == pytest.approx(100 * np.mean(probs.argmax(1) == mnist.test_labels), abs=1e-9)
    np.save(tmp_path / "d.npy", mnist.test_images[:3])
    assert predict.main([str(tmp_path / "d.npy"), "--workdir", vmapped, "--seed", "0-1", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["weights"].startswith("an ensemble of 2: ") and len(got["predictions"]) == 3
