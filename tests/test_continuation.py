"""jaxmnist.continuation: what a resumed run may change of its checkpoint's settings, and what it trains with."""

import dataclasses
import json

import pytest

from jaxmnist.cli import UsageError
from jaxmnist.continuation import changed_settings, continued
from jaxmnist.presets import PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_a_checkpoints_config_is_the_same_settings(name):
    """A resumed run compares its settings with the checkpoint's, which JSON gave back (tuples as lists):
    cnn_deep's blog_best once made its own checkpoint look like another run's."""
    config = PRESETS[name]
    stored = json.loads(json.dumps(dataclasses.asdict(config)))
    assert changed_settings(stored, config) == []
    assert changed_settings(stored, config.replace(lr=config.lr / 2, blog_best=(1, 2.0))) == ["blog_best", "lr"]
    # A checkpoint from before a field existed ran at its default: the same settings, until the field changes.
    del stored["scale"]
    assert changed_settings(stored, config) == []
    assert changed_settings(stored, config.replace(scale=0.1, augment=True)) == sorted(
        {"scale"} | ({"augment"} if not config.augment else set())
    )


def test_a_resumed_run_keeps_the_checkpoints_rate_and_epochs_unless_given():
    """Resumed once with --lr 0.01 (the checkpoint holds it), a run resumed again without --lr goes on at 0.01,
    not at its preset's 0.04; what the command line gives wins; a library caller's config (given None) is taken
    whole."""
    saved = json.loads(json.dumps(dataclasses.asdict(PRESETS["cnn_tb"].replace(lr=0.01, epochs=4))))
    preset = PRESETS["cnn_tb"]  # lr 0.04, 20 epochs
    assert continued(saved, preset, frozenset(), "W", 2) == preset.replace(lr=0.01, epochs=4)
    assert continued(saved, preset.replace(lr=0.005), frozenset({"lr"}), "W", 2) == preset.replace(lr=0.005, epochs=4)
    assert continued(saved, preset, None, "W", 2) == preset
    with pytest.raises(UsageError, match="--epochs 1: the run in W has trained 2 epochs already"):
        continued(saved, preset.replace(epochs=1), frozenset({"epochs"}), "W", 2)


def test_a_refused_resume_names_what_blocks_it_with_both_values():
    """Only the settings a resumed run may not change are named, each with the checkpoint's value and this run's:
    not the rate or the epochs it may change, nor the blog's record of a preset, which trains nothing."""
    saved = json.loads(json.dumps(dataclasses.asdict(PRESETS["cnn_tb"])))
    resnet = PRESETS["resnet"].replace(batch_size=256)  # another network and batch; the blog's record differs too
    with pytest.raises(UsageError) as e:
        continued(saved, resnet, frozenset({"batch_size"}), "W", 1)
    assert str(e.value) == (
        "checkpoint in W was made with different settings: batch_size 512 (here 256), model cnn (here resnet)"
    )
    assert continued(saved, PRESETS["cnn_tb"].replace(blog_result=None), frozenset(), "W", 1).blog_result is None
