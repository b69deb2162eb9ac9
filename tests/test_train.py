"""jaxmnist.train, the host loop: resume, recompilation, the run's outputs, the CLI's errors (on tiny real runs)."""

import io
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FAST_TINY, tiny_data

from jaxmnist import convs, engine, models, programs, trainer
from jaxmnist import data as data_lib
from jaxmnist.checkpoint import Checkpointer
from jaxmnist.cli import UsageError
from jaxmnist.presets import PRESETS, Config

TINY = Config(model="cnn", batch_size=64, lr=0.02, epochs=3, train_size=640, eval_batch_size=500)


def test_resume_equals_uninterrupted_run_bitwise(mnist, tmp_path):
    """Also with another --conv-impl: the plan is in the checkpoint, so the resumed run continues with its own, bit
    for bit (Eigen's kernels, the suite's default plan, round differently from XLA's default ones: measured, a tiny
    run's weights differ in their last bits, so another plan would show; plans that route single layers are
    tests/test_convs.py's). blog_best: a tuple field, as cnn_deep's preset has; the checkpoint's JSON gives it back
    as a list."""
    config = TINY.replace(augment=True, plateau=True, plateau_patience=0, val_size=128, blog_best=(85, 99.51))
    data = tiny_data(mnist)
    # One step per compiled chunk: it compiles as fast as a rolled scan (the CPU default of 8 unrolled steps takes
    # ~5x longer), and runs ~10x faster than one on the CPU, where a scan's while loop is slow.
    run = dict(data=data, progress=False, chunk_steps=1, unroll=True, report=False)  # reports: tests/test_evaluate.py
    run["conv_impl"] = "eigen"
    full = trainer.train_and_evaluate(config, workdir=tmp_path / "full", logdir=tmp_path / "log_full", **run)
    trainer.train_and_evaluate(config, workdir=tmp_path / "cut", logdir=tmp_path / "log_cut", stop_after_epoch=1, **run)
    out = io.StringIO()
    # A command line that gives no setting (given: none) resumes with the checkpoint's rate and epochs, not these.
    other = config.replace(lr=0.5, epochs=7)
    resumed = trainer.train_and_evaluate(other, workdir=tmp_path / "cut", logdir=tmp_path / "log_cut", resume=True,
                                         out=out, given=frozenset(), **{**run, "conv_impl": "xla"})  # fmt: skip
    assert "convolutions: eigen kernels (resumed); every layer as conv" in out.getvalue()
    assert "learning rate" not in out.getvalue()
    assert Checkpointer(tmp_path / "cut").read_meta()["conv_plan"] == convs.fixed_plan("eigen").to_json()
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def accuracies(result):
        return [(e["epoch"], e["test_acc"], e["val_acc"], e["lr"]) for e in result.record["epochs"]]

    assert accuracies(full) == accuracies(resumed)  # the resumed log continues the cut one
    # Resumed once more, finished: one line, nothing trained or compiled, its log and events as they were.
    log = tmp_path / "log_cut"
    before = {p: p.read_bytes() for p in log.iterdir() if p.is_file()}
    out = io.StringIO()
    again = trainer.train_and_evaluate(other, workdir=tmp_path / "cut", logdir=log, resume=True, out=out,
                                       given=frozenset(), **run)  # fmt: skip
    assert "has trained all its 3 epochs: nothing to train" in out.getvalue(), out.getvalue()
    assert "Average time" not in out.getvalue() and "compile:" not in out.getvalue()
    assert {p: p.read_bytes() for p in log.iterdir() if p.is_file()} == before
    assert again.record["final_acc"] == resumed.record["final_acc"]
    (log / "metrics.json").unlink()  # its finish stopped before the record was written: the next resume writes it
    trainer.train_and_evaluate(other, workdir=tmp_path / "cut", logdir=log, resume=True, given=frozenset(), **run)
    assert json.loads((log / "metrics.json").read_text())["final_acc"] == resumed.record["final_acc"]
    assert (tmp_path / "cut" / "best").is_dir() and (tmp_path / "cut" / "latest").is_dir()
    with pytest.raises(UsageError, match="different settings: momentum"):  # resumed as it was made
        trainer.train_and_evaluate(config.replace(momentum=0.9), workdir=tmp_path / "cut", resume=True, **run)


def test_interim_evaluations_change_nothing_of_the_training(mnist, tmp_path, capsys):
    """--evals-per-epoch 3 over epochs of 10 steps in chunks of 2: the evaluations of steps 3 and 6 come after the
    chunks that reach them (steps 4 and 6), are printed and logged with the epoch, and read the state without
    changing it: the weights (a weight average evaluated, augmentation drawn) and every epoch's accuracy are those
    of the run without them, bit for bit."""
    config = TINY.replace(epochs=2, augment=True, ema=0.9, train_size=704, val_size=64)  # 10 steps of 64
    run = dict(data=tiny_data(mnist), progress=False, chunk_steps=2, unroll=True, report=False)
    once = trainer.train_and_evaluate(config, logdir=tmp_path / "once", **run)
    thrice = trainer.train_and_evaluate(config.replace(evals_per_epoch=3), logdir=tmp_path / "thrice", **run)
    for a, b in zip(jax.tree.leaves(once.state), jax.tree.leaves(thrice.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    measured = ("time_s", "load", "others_cpu", "interim")

    def strip(record):
        return [{k: v for k, v in e.items() if k not in measured} for e in record["epochs"]]

    assert strip(once.record) == strip(thrice.record)
    interim = [e["interim"] for e in thrice.record["epochs"]]
    assert [[(i["step"], i["fraction"]) for i in e] for e in interim] == [[(4, 0.4), (6, 0.6)]] * 2
    assert all({"test_acc", "val_acc", "at_s"} <= i.keys() for e in interim for i in e)
    out = capsys.readouterr().out
    assert f"[2, step 6/10]: {interim[1][1]['test_acc']:.2f} %" in out and "evaluated 3 times per epoch" in out
    assert (tmp_path / "thrice" / "curves.png").stat().st_size > 0


@pytest.mark.xdist_group("fast_tiny")  # one worker trains conftest's fast_tiny_run, the other tests read it
def test_resume_with_the_fast_recipe_equals_uninterrupted_run_bitwise(mnist, fast_tiny_run, tmp_path):
    """The fast preset's state carries more: Adam's moments, the weight average; its schedule spans all epochs."""
    config = FAST_TINY
    run = dict(data=tiny_data(mnist), progress=False, chunk_steps=1, unroll=True)
    full = fast_tiny_run[1]  # the uninterrupted run, as trained here
    trainer.train_and_evaluate(config, workdir=tmp_path / "cut", stop_after_epoch=2, **run)
    resumed = trainer.train_and_evaluate(config, workdir=tmp_path / "cut", resume=True, **run)
    assert full.state.ema is not None
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(full.state.step_lr()) == 0.0  # the one-cycle ended at 0 after 30 steps


def learn(config, mnist, tmp_path):
    """A short real run, tested on the first 1,000 test images; one step per chunk (the same arithmetic as the
    default 8: tests/test_engine.py), compiled in a third of the time."""
    return trainer.train_and_evaluate(config, data=tiny_data(mnist), progress=False, logdir=tmp_path, chunk_steps=1,
                                      report=False)  # fmt: skip


@pytest.mark.parametrize(
    "preset, network, batch_size, steps, bound",
    [
        # Measured for seed 0 with one step per chunk, on the first 1,000 test images: 88.10 % (74.90 % after epoch
        # 1). On the whole test set with 24 steps an epoch: 96.62 % (82.32 %); 8 steps per chunk, seeds 0 and 1:
        # 96.64 %, after epoch 1 82.4 and 92.0 %: the augmentation's rounding parts programs (test_train_seeds.py).
        ("fast", "fast", 256, 12, 82.0),
        # fast's recipe at batch 32 on its weight average: 97.90 % measured for seed 0 on a Zen 4 (96.20 % after epoch
        # 1; without the average 98.20 and 91.70 %, 97.90 % on a Zen 5); the same 3,072 images an epoch as fast's 12
        # steps of 256. (At batch 64 for 48 steps, the preset until 2026-12-02: 97.30 %; at batch 128: 94.40 %.)
        ("sprint", "fast", 32, 96, 92.0),
    ],
)
def test_preset_learns_on_a_reduced_budget(mnist, tmp_path, preset, network, batch_size, steps, bound):
    """This project's quick presets themselves on real MNIST, cut to 2 epochs of `steps` steps (their one-cycle
    over those), tested on the first 1,000 test images; the bounds sit about 6 points under what was measured."""
    config = PRESETS[preset].replace(epochs=2, max_steps=steps)
    assert (config.model, config.batch_size) == (network, batch_size)
    result = learn(config, mnist, tmp_path)
    assert result.record["final_acc"] >= bound, result.record["final_acc"]
    assert result.record["recompiles_after_first_epoch"] == 0


@pytest.mark.slow
def test_best_preset_learns_on_a_reduced_budget(mnist, tmp_path):
    """The best preset's recipe on its network (cnn_deep), on real MNIST, cut to 2 epochs of 20 steps at batch 128
    (its one-cycle over those 40), tested on the first 1,000 test images: 91.20 % measured for seed 0 (58.00 %
    after epoch 1; on the whole test set 92.26 and 58.72 %); bound 85 %."""
    config = PRESETS["best"].replace(epochs=2, max_steps=20, batch_size=128)
    assert config.model == "cnn_deep" and config.schedule == "onecycle" and config.optimizer == "adamw"
    result = learn(config, mnist, tmp_path)
    assert result.record["final_acc"] >= 85.0, result.record["final_acc"]
    assert result.record["recompiles_after_first_epoch"] == 0


def test_elastic_distortion_trains_and_says_so(mnist, tmp_path, capsys, monkeypatch):
    """--elastic-alpha through the trainer: the preamble names it and the tiny fast recipe still learns (measured
    for seed 0 on the first 1,000 test images: 87.10 % after 3 epochs of 10 steps of 64, against 86.00 % without;
    bound 75 %). The augmentation runs in the batches' program (engine.chunk_batches), not in the train chunk:
    XLA:CPU fused it into every fusion that read a pixel, 1.2x the step's time at batch 64 (no rotation, no sine,
    in the chunk)."""
    monkeypatch.setattr(programs, "SHARED", programs.ProgramCache())  # this run's programs, compiled (or read) here
    compiled, compile_training = [], programs.compile_training

    def keep(*args, **kwargs):
        compiled.append(compile_training(*args, **kwargs))
        return compiled[-1]

    monkeypatch.setattr(programs, "compile_training", keep)
    config = FAST_TINY.replace(elastic_alpha=50.0)
    result = learn(config, mnist, tmp_path)
    assert "elastic distortion (alpha 50, sigma 5)" in capsys.readouterr().out
    assert result.record["final_acc"] >= 75.0, result.record["final_acc"]
    [training] = compiled
    assert "sine(" in training.batches[1].as_text() and "sine(" not in training.chunks[True, 1].as_text()


@pytest.mark.xdist_group("fast_tiny")
def test_the_warps_ranges_reach_the_training_batches(mnist, fast_tiny_run, tmp_path, capsys):
    """--scale, and --translate with --degrees, through the trainer: the preamble names them, the training batches
    differ from the same run's without them (the same draws otherwise, so its losses would be equal bit for bit),
    and it still learns."""
    plain = fast_tiny_run[1]  # as `learn` trains it
    scaled = learn(FAST_TINY.replace(scale=0.1), mnist, tmp_path / "scaled")
    wider = learn(FAST_TINY.replace(translate=0.2, degrees=20.0), mnist, tmp_path / "wider")
    out = capsys.readouterr().out
    assert "augmentation with scales of ±0.1" in out and "augmentation with shifts of ±0.2, rotations of ±20°" in out
    losses = [[e["train_loss"] for e in r.record["epochs"]] for r in (plain, scaled, wider)]
    assert losses[0] != losses[1] and losses[0] != losses[2], losses
    for run in (scaled, wider):  # the elastic test's bound, same recipe
        assert run.record["final_acc"] >= 75.0, run.record["final_acc"]


def test_one_train_program_serves_every_split_size(rng):
    """A chunk of steps takes its gathered batches, not the whole split: a run on 704 training images and one on
    1,088 (another --train-size or --val-size) run the same compiled chunk, so the second reads the first one's
    from the compile cache (the session's, conftest; sizes no other test uses)."""
    assert jax.config.jax_compilation_cache_dir  # conftest's session cache
    state = engine.create_state(TINY, jax.random.PRNGKey(0))
    hits = []
    listener = lambda event, **_: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None
    jax.monitoring.register_event_listener(listener)
    try:
        for n in (704, 1088):
            split = jnp.asarray(rng.integers(0, 256, (n, 28, 28), np.uint8)), jnp.zeros((n,), jnp.int32)
            hits.clear()  # only compile_training's: eager ops on the same shapes read the cache for either size
            training = programs.compile_training(TINY, state, split, [(0, 1)], unroll=True)
            compiled_hits = len(hits)
            order = jnp.asarray([np.arange(n - 64, n)], jnp.int32)
            images, _ = training.batches[1](*split, order, jnp.int32(0), state.rng, state.step)
            assert images.shape == (1, 64, 28, 28, 1)
            np.testing.assert_allclose(images[0], data_lib.normalize(split[0][n - 64 :]), rtol=0, atol=1e-5)
    finally:
        jax.monitoring.unregister_event_listener(listener)
    assert compiled_hits >= 1  # the chunk; the gathering and the shuffle take the split: compiled for each size


def test_runs_in_one_process_share_their_programs(mnist, monkeypatch):
    """A second run of the same configuration and shapes in a process (a notebook's, a resumed one) takes the first
    one's compiled programs (programs.SHARED) and trains to the same bits; another configuration, or the same one
    on an edited network, compiles its own."""
    monkeypatch.setattr(programs, "SHARED", programs.ProgramCache())
    compiled, compile_training = [], programs.compile_training
    monkeypatch.setattr(programs, "compile_training", lambda *a, **k: compiled.append(1) or compile_training(*a, **k))
    run = dict(data=tiny_data(mnist), progress=False, chunk_steps=1, unroll=True, out=io.StringIO())
    config = TINY.replace(epochs=1)
    first, again = (trainer.train_and_evaluate(config, **run) for _ in range(2))
    assert len(compiled) == 1
    for a, b in zip(jax.tree.leaves(first.state), jax.tree.leaves(again.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    trainer.train_and_evaluate(config.replace(momentum=0.9), **run)
    assert len(compiled) == 2

    class Edited(models.CNN):  # as a reloaded module's class: equal fields, another network
        pass

    monkeypatch.setitem(models.MODELS, "cnn", Edited)
    trainer.train_and_evaluate(config, **run)
    assert len(compiled) == 3


def test_no_recompilation_after_first_epoch(mnist, tmp_path):
    # Plateau drops set a new learning rate from the host: that must not recompile either.
    # Threshold 10: an epoch is better only if 11x the best so far, so after epoch 1 none is; patience 0 halves
    # the rate after every epoch but the first.
    config = TINY.replace(plateau=True, plateau_patience=0, plateau_threshold=10.0, val_size=128)
    out = io.StringIO()
    result = trainer.train_and_evaluate(
        config, data=tiny_data(mnist), progress=False, logdir=tmp_path, chunk_steps=1, unroll=True, out=out
    )
    lrs = [e["lr"] for e in result.record["epochs"]]
    assert lrs == pytest.approx([0.02, 0.02, 0.01]), lrs  # the schedule did act: epoch 2 (of 3) was not better
    assert result.record["recompiles_after_first_epoch"] == 0
    # The printed lines, in order; a learning-rate line only where the rate changed (after epochs 2 and 3).
    lines = out.getvalue().splitlines()
    kernels = os.environ["JAXMNIST_CONV_IMPL"]  # conftest's fixed library
    starts = ["device: ", "cnn, batch 64, SGD lr 0.02", "train: 512 images, 8 steps",
              "ReduceLROnPlateau monitors the validation", "compile: ",
              f"convolutions: {kernels} kernels (fixed); every layer as conv",
              "Accuracy on test set(epoch=3):",
              "[1]: ", "[2]: ", "    learning rate 0.02 -> 0.01", "[3]: ", "    learning rate 0.01 -> 0.005",
              "report: ", "Average time per epoch: ", "final: ", "recompilations after the first epoch: 0"]  # fmt: skip
    assert len(lines) == len(starts) and all(line.startswith(s) for line, s in zip(lines, starts)), lines
    # The record names the plan the run printed: another plan trains the same maths to other bits.
    assert "convolutions: " + result.record["convolutions"] == lines[5]


def read_events(logdir):
    """Parses TFRecord event files: {tag: [(step, value), ...]}."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos : pos + 8])
            event = event_pb2.Event.FromString(raw[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


def test_event_file_tags_and_points(mnist, tmp_path):
    config = TINY.replace(epochs=2)
    trainer.train_and_evaluate(
        config, data=tiny_data(mnist), progress=False, logdir=tmp_path, chunk_steps=1, unroll=True
    )
    scalars = read_events(tmp_path)
    steps = 640 // 64
    assert len(scalars["acc_train/batch_num"]) == 2 * steps
    # The blog's x-axis: ceil(n_train / bs) * epoch + i.
    assert [s for s, _ in scalars["acc_train/batch_num"]] == list(range(steps)) + list(range(10, 10 + steps))
    assert all(0 <= v <= 100 for _, v in scalars["acc_train/batch_num"])
    for tag in ("loss_train/batch_num",):
        assert len(scalars[tag]) == 2 * steps
    for tag in ("acc_test/epoch", "loss_test/epoch", "lr/epoch", "time/epoch"):
        assert [s for s, _ in scalars[tag]] == [1, 2], tag
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["framework"] == "jax" and len(record["epochs"]) == 2
    assert record["final_acc"] == pytest.approx(scalars["acc_test/epoch"][-1][1], abs=1e-4)
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert list(tmp_path.glob("**/events.out.tfevents.*"))  # hparams sub-run written too
    assert [s for s, _ in scalars["report/confusion"]] == [2] == [s for s, _ in scalars["report/misclassified"]]


# The real-data check (cnn, one epoch of 30,000 images, >= 96.5 %) is
# tests/test_torch_ref_train.py::test_one_epoch_accuracy_matches_jax, which runs the same JAX training beside torch's.
