"""jaxmnist.checkpoint: the latest and the best train state, restored with their host-side metadata."""

import jax
import numpy as np

from jaxmnist import engine
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
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == ["3"]  # one of each kept
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["2"]
    assert Checkpointer(tmp_path).best_acc == 95.0  # a reopened run knows its best so far


def test_an_empty_workdir_has_nothing_to_restore(tmp_path):
    assert Checkpointer(tmp_path / "new").restore_latest(state(0)) is None
