"""The training engine: one step per network, resume, recompilation, TensorBoard events, CLI errors, real data."""

import dataclasses
import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist import data as data_lib
from jaxmnist import train
from jaxmnist.presets import PRESETS, Config

NETWORKS = ["cnn", "cnn_deep", "resnet", "resnet18", pytest.param("resnet101", marks=pytest.mark.slow)]


def fake_batch(rng, n=4, classes=10):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return {"image": data_lib.normalize(images), "label": jnp.asarray(rng.integers(0, classes, n), jnp.int32)}


@pytest.mark.parametrize("model", NETWORKS)
def test_one_train_step_every_network(model, rng):
    config = Config(model=model, optimizer="rmsprop" if model == "cnn_deep" else "sgd", lr=0.01)
    state = train.create_state(config, jax.random.PRNGKey(0))
    batch = fake_batch(rng, classes=10)
    new_state, metrics = jax.jit(train.train_step)(state, batch)
    assert np.isfinite(float(metrics["loss"])) and 0 <= float(metrics["accuracy"]) <= 100
    assert int(new_state.step) == 1
    for before, after in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params)):
        assert before.shape == after.shape
    before = jax.tree_util.tree_flatten_with_path(state.params)[0]
    still = [
        jax.tree_util.keystr(path)
        for (path, a), b in zip(before, jax.tree.leaves(new_state.params))
        if np.array_equal(a, b)
    ]
    # A conv bias feeding a train-mode BatchNorm has an exactly zero gradient (BN removes the mean); in the
    # blog's resnet those are the only parameters allowed to stay put.
    assert len(still) < len(before) // 4 and all(
        p.endswith("['bias']") and "bn" not in p and "fc" not in p for p in still
    ), still
    stats_moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(new_state.batch_stats))
    ]
    assert stats_moved and all(stats_moved)
    logits = new_state.apply_fn(
        {"params": new_state.params, "batch_stats": new_state.batch_stats}, batch["image"], train=False
    )
    assert logits.shape == (4, 1000 if model.startswith("resnet1") else 10)


def test_eval_mode_step_freezes_batchnorm(rng):
    """The blog's quirk 1 (training in eval mode) updates weights but not the running statistics."""
    state = train.create_state(Config(model="cnn"), jax.random.PRNGKey(0))
    new_state, _ = jax.jit(train.train_step, static_argnames="train")(state, fake_batch(rng), train=False)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(new_state.batch_stats))
    )
    assert all(
        not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params))
    )


def test_evaluate_counts_every_example_once(rng):
    state = train.create_state(Config(model="cnn"), jax.random.PRNGKey(0))
    images = rng.integers(0, 256, (37, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 37).astype(np.int32)
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, data_lib.normalize(images), train=False
    )
    expected = 100 * np.mean(np.argmax(logits, -1) == labels)
    evaluate = jax.jit(train.evaluate, static_argnames="batch_size")
    for batch_size in (5, 37, 64):  # ragged, exact, larger than the set
        got = evaluate(state, jnp.asarray(images), jnp.asarray(labels), batch_size=batch_size)
        assert abs(float(got["accuracy"]) - expected) < 1e-4


TINY = Config(model="cnn", batch_size=64, lr=0.02, epochs=3, train_size=640, eval_batch_size=500)


def tiny_data(mnist):
    return dataclasses.replace(mnist, test_images=mnist.test_images[:1000], test_labels=mnist.test_labels[:1000])


def test_resume_equals_uninterrupted_run_bitwise(mnist, tmp_path):
    config = TINY.replace(augment=True, plateau=True, plateau_patience=0, val_size=128)
    data = tiny_data(mnist)
    # Rolled scans and one chunk size keep compilation cheap (the unrolled CPU default compiles ~5x longer).
    run = dict(data=data, progress=False, chunk_steps=5, unroll=False)
    full = train.train_and_evaluate(config, workdir=tmp_path / "full", logdir=tmp_path / "log_full", **run)
    train.train_and_evaluate(config, workdir=tmp_path / "cut", logdir=tmp_path / "log_cut", stop_after_epoch=1, **run)
    resumed = train.train_and_evaluate(
        config, workdir=tmp_path / "cut", logdir=tmp_path / "log_cut", resume=True, **run
    )
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def accuracies(result):
        return [(e["epoch"], e["test_acc"], e["val_acc"], e["lr"]) for e in result.record["epochs"]]

    assert accuracies(full) == accuracies(resumed)  # the resumed log continues the cut one
    assert (tmp_path / "cut" / "best").is_dir() and (tmp_path / "cut" / "latest").is_dir()


def test_no_recompilation_after_first_epoch(mnist, tmp_path):
    # Plateau drops set a new learning rate from the host: that must not recompile either.
    config = TINY.replace(plateau=True, plateau_patience=0, plateau_threshold=0.5, val_size=128)
    result = train.train_and_evaluate(
        config, data=tiny_data(mnist), progress=False, logdir=tmp_path, chunk_steps=4, unroll=False
    )
    lrs = [e["lr"] for e in result.record["epochs"]]
    assert lrs[-1] < lrs[0], lrs  # the schedule did act
    assert result.record["recompiles_after_first_epoch"] == 0


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
    train.train_and_evaluate(
        config, data=tiny_data(mnist), progress=False, logdir=tmp_path, chunk_steps=5, unroll=False
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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "vgg"], "unknown model"),
        (["--preset", "nope"], "unknown preset"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--batch-size", "0"], "--batch-size must be > 0"),
        (["--epochs", "0"], "--epochs must be > 0"),
        (["--data-dir", "/nonexistent/mnist"], "does not exist"),
        (["--optimizer", "adam"], "unknown optimizer"),
    ],
)
def test_cli_bad_input_one_line_error(argv, message, capsys, tmp_path):
    code = train.main(argv + ["--logdir", str(tmp_path / "log"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_cli_unwritable_logdir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = train.main(["--logdir", str(blocker / "sub"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--logdir" in err[0], err


def test_cli_model_picks_its_preset():
    args = train.build_parser().parse_args(["--model", "resnet", "--epochs", "3"])
    preset, config = train.config_from_args(args)
    assert preset == "resnet" and config == PRESETS["resnet"].replace(epochs=3)
    args = train.build_parser().parse_args(["--preset", "cnn_deep", "--no-plateau", "--blog-quirks"])
    preset, config = train.config_from_args(args)
    assert (config.plateau, config.augment, config.blog_quirks, config.optimizer) == (False, True, True, "rmsprop")


# The real-data check (cnn, one epoch, >= 97.5 %) is tests/test_torch_train.py::test_one_epoch_accuracy_matches_jax,
# which runs the same JAX training beside torch's.


def test_chunk_bounds():
    assert train.chunk_bounds(117, None, unroll=True) == [(s, s + 8) for s in range(0, 112, 8)] + [
        (s, s + 1) for s in range(112, 117)
    ]
    assert [e - s for s, e in train.chunk_bounds(117, None, unroll=False)] == [15] * 7 + [1] * 12
    assert train.chunk_bounds(8, 1, unroll=True) == [(s, s + 1) for s in range(8)]


def test_unrolled_chunk_equals_scanned_chunk(rng):
    state = train.create_state(Config(model="cnn"), jax.random.PRNGKey(0))
    images = jnp.asarray(rng.integers(0, 256, (48, 28, 28), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 48), jnp.int32)
    idx = jnp.arange(48, dtype=jnp.int32).reshape(3, 16)
    chunk = jax.jit(train.train_chunk, static_argnames=("augment", "train", "unroll"))
    (a, ma), (b, mb) = (chunk(state, images, labels, idx, augment=True, train=True, unroll=u) for u in (False, True))
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
