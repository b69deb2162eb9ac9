"""jaxmnist.checkpoint: the latest and the best train state, restored with their host-side metadata."""

import functools
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist import checkpoint, engine
from jaxmnist.checkpoint import Checkpointer
from jaxmnist.presets import Config


def state(seed):
    return engine.create_state(Config(model="cnn"), jax.random.PRNGKey(seed))


def test_latest_and_best_are_kept_and_restored(tmp_path):
    ckpt = Checkpointer(tmp_path)
    states = [state(i) for i in range(3)]
    for epoch, (s, acc) in enumerate(zip(states, (90.0, 95.0, 93.0)), start=1):
        ckpt.save(s, epoch, acc, meta={"epoch": epoch, "note": f"e{epoch}"})
    restored, meta = ckpt.restore_latest(state(7))
    assert meta == {"epoch": 3, "note": "e3", "test_acc": 93.0}
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(states[2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ckpt.close()
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == ["2", "3"]  # the last two epochs
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["2"]
    assert Checkpointer(tmp_path).best_acc == 95.0  # a reopened run knows its best so far


def test_reading_a_checkpoint_warns_nothing(tmp_path, caplog):
    """predict and evaluate open their workdir read-only: orbax's warnings that it is (six lines on stderr before
    the command's own, a bad input's one-line error among them) are not shown; a writing run's level is kept."""
    Checkpointer(tmp_path).save(state(0), 1, 90.0, meta={"epoch": 1})
    absl_level = logging.getLogger("absl").level
    with caplog.at_level(logging.WARNING):
        ckpt = Checkpointer(tmp_path, read_only=True)
        assert ckpt.read_meta()["epoch"] == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert logging.getLogger("absl").level == absl_level


def test_a_restored_state_compiles_to_the_fresh_states_programs(tmp_path):
    """orbax commits what it restores to a device; a state restored on one device is placed as a fresh one is
    (uncommitted), so a resumed run's train program is the very program of the run it resumes (before: another
    one, with sharding annotations, compiled again on every --resume instead of read from the compile cache)."""
    ckpt = Checkpointer(tmp_path)
    ckpt.save(state(0), 1, 90.0, meta={})
    restored, _ = ckpt.restore_latest(state(1))
    ckpt.close()
    assert not any(leaf.committed for leaf in jax.tree.leaves(restored))
    train = jax.jit(functools.partial(engine.train_chunk, train=True, unroll=True))
    images, labels = jnp.zeros((1, 64, 28, 28, 1)), jnp.zeros((1, 64), jnp.int32)
    program = lambda s: train.lower(s, images, labels).as_text()
    assert program(restored) == program(state(0))


def test_an_empty_workdir_has_nothing_to_restore(tmp_path):
    assert Checkpointer(tmp_path / "new").restore_latest(state(0)) is None


def flip_byte(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def largest_array_file(step_dir):
    return max(
        (p for p in (step_dir / "state").rglob("*") if p.is_file() and "ocdbt" in str(p)),
        key=lambda p: p.stat().st_size,
    )


@pytest.mark.parametrize(
    "spoil, problem",
    [
        (lambda d: flip_byte(d / "meta" / "metadata"), "meta/metadata does not match its checksum"),
        (lambda d: flip_byte(largest_array_file(d)), "does not match its checksum"),  # inside the arrays
        (lambda d: largest_array_file(d).write_bytes(b""), "does not match its checksum"),  # truncated
        (lambda d: (d / checkpoint.MANIFEST).unlink(), "no checksum manifest"),  # killed after orbax's rename
        (lambda d: (d / "meta" / "metadata").unlink(), "meta/metadata is missing"),
    ],
)
def test_a_damaged_step_is_set_aside_and_the_one_before_restored(tmp_path, spoil, problem):
    ckpt = Checkpointer(tmp_path)
    for epoch in (1, 2):
        ckpt.save(state(epoch), epoch, 90.0 + epoch, meta={"epoch": epoch})
    ckpt.close()
    spoil(tmp_path / "latest" / "2")
    reopened = Checkpointer(tmp_path)
    assert len(reopened.damaged) == 1 and problem in reopened.damaged[0] and "latest/2" in reopened.damaged[0]
    restored, meta = reopened.restore_latest(state(7))
    assert meta["epoch"] == 1
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state(1))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not (tmp_path / "latest" / "2").exists() and len(list((tmp_path / "damaged").iterdir())) == 1
    reopened.save(state(2), 2, 92.0, meta={"epoch": 2})  # the run goes on: epoch 2 is written again
    assert reopened.latest_epoch() == 2 and checkpoint.damage(tmp_path / "latest" / "2") is None


def test_manifest_lists_every_file_it_guards(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(state(0), 1, 90.0, meta={"epoch": 1})
    step = tmp_path / "latest" / "1"
    listed = json.loads((step / checkpoint.MANIFEST).read_text())
    assert set(listed) == {str(p.relative_to(step)) for p in step.rglob("*") if p.is_file()} - {checkpoint.MANIFEST}
    assert any(name.startswith("state/") for name in listed) and "meta/metadata" in listed
    (step / "stray").write_text("x")
    assert checkpoint.damage(step) == "unexpected file stray"
