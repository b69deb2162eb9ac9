"""jaxmnist.resume: the settings a resumed run continues with, read from its checkpoints."""

import dataclasses

import jax

from jaxmnist import engine, resume
from jaxmnist.checkpoint import Checkpointer
from jaxmnist.presets import PRESETS

CONFIG = PRESETS["cnn_tb"].replace(epochs=2)


def saved(workdir, config, epoch=1):
    """A checkpoint of `config` after `epoch` in `workdir`, as a run leaves it."""
    ckpt = Checkpointer(workdir)
    state = engine.create_state(config, jax.random.PRNGKey(config.seed), total_steps=config.epochs)
    ckpt.save(state, epoch, 50.0, meta={"config": dataclasses.asdict(config), "epoch": epoch, "plateau": {},
                                        "record": None})  # fmt: skip
    ckpt.close()


def test_sequential_seeds_without_a_checkpoint_take_the_others_settings(tmp_path):
    """Seeds resumed one after another: a seed whose run had not begun trains with the settings of the seeds that
    have a checkpoint (resumed before with --lr 0.01), not with the preset's rate beside them; a rate given now
    is every seed's."""
    saved(tmp_path / "seed1", CONFIG.replace(seed=1, lr=0.01))
    workdirs = [tmp_path / "seed0", tmp_path / "seed1", tmp_path / "seed2"]
    base = resume.continued_base(CONFIG, workdirs, (0, 1, 2), frozenset())
    assert base == CONFIG.replace(lr=0.01)  # the seed of the base is left as it was
    assert resume.continued_base(CONFIG.replace(lr=0.02), workdirs, (0, 1, 2), frozenset({"lr"})).lr == 0.02
    assert resume.continued_base(CONFIG, workdirs[:1], (0,), frozenset()) == CONFIG  # no checkpoint: as given
