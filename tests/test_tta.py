"""scripts/tta.py: test-time augmentation measured on a held-out split, per view and per set of views."""

import dataclasses

import jax
import numpy as np
import pytest

import tta
from jaxmnist import engine, weights
from jaxmnist.checkpoint import Checkpointer
from jaxmnist.cli import UsageError
from jaxmnist.presets import Config, split_train


def test_views_are_the_augmentations_warps():
    """identity leaves the digits as they are; "right" moves every pixel one column right, filling with 0."""
    images = np.random.default_rng(0).integers(1, 256, (3, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(tta.warped(images, tta.VIEWS["identity"]), images)
    right = tta.warped(images, tta.VIEWS["right"])
    np.testing.assert_array_equal(right[:, :, 1:], images[:, :, :-1])
    assert not right[:, :, 0].any()


def test_a_set_scores_its_views_mean_probabilities():
    """Views half-sure of the right class (0.55) against views sure of a wrong one: one wrong view of the five
    shifts loses alone and not in the set's mean (0.44 against 0.24); two wrong views win the mean (0.33 against
    0.43), though three views of five are right: the set averages probabilities, it does not vote."""
    labels = np.array([0, 1, 2, 3])
    right, wrong = np.full((4, 10), 0.05), np.zeros((4, 10))
    right[np.arange(4), labels] = 0.55
    wrong[np.arange(4), (labels + 1) % 10] = 1.0
    one_wrong = tta.accuracies({name: right for name in tta.VIEWS} | {"left": wrong}, labels)
    assert one_wrong["view: left"] == 0.0 and one_wrong["view: identity"] == 100.0
    assert one_wrong["set: 1-pixel shifts"] == 100.0 and one_wrong["set: rotations 5°"] == 100.0
    two_wrong = tta.accuracies({name: right for name in tta.VIEWS} | {"left": wrong, "up": wrong}, labels)
    assert two_wrong["set: 1-pixel shifts"] == 0.0 and two_wrong["set: identity"] == 100.0


def test_the_validation_split_is_the_runs(mnist):
    """--split val with the run's --val-size and seed gives the images that run held out."""
    images, labels = tta.held_out(mnist, tta.build_parser().parse_args(["--val-size", "1000", "--split-seed", "3"]))
    run_images, run_labels = split_train(mnist, Config(val_size=1000, seed=3))[1]
    np.testing.assert_array_equal(images, run_images)
    np.testing.assert_array_equal(labels, run_labels)
    other = tta.build_parser().parse_args(["--val-size", "1000", "--split-seed", "4"])
    assert not np.array_equal(tta.held_out(mnist, other)[1], labels)


def saved_run(where, config: Config) -> str:
    ckpt = Checkpointer(where)
    state = engine.create_state(config, jax.random.PRNGKey(0))
    ckpt.save(state, 1, 50.0, meta={"config": dataclasses.asdict(config), "epoch": 1, "plateau": {}, "record": None})
    ckpt.close()
    return str(where)


def test_a_workdirs_split_is_the_one_its_checkpoint_records(mnist, tmp_path):
    """A run's --train-size, --val-size and seed draw its split: taken from its checkpoint, a flag that says
    otherwise refused (a flag alone scored 128 of a 640-image run's training images as held out)."""
    config = Config(model="cnn", train_size=20_000, val_size=1000, seed=3)
    workdir = saved_run(tmp_path / "w", config)
    args = tta.build_parser().parse_args(["--workdir", workdir])
    np.testing.assert_array_equal(tta.held_out(mnist, args)[1], split_train(mnist, config)[1][1])
    for flags, message in [(["--val-size", "500"], "--val-size 500: the run in .* held out its split with 1000"),
                           (["--split-seed", "0"], "--split-seed 0: the run in .* with 3")]:  # fmt: skip
        with pytest.raises(UsageError, match=message):
            tta.held_out(mnist, tta.build_parser().parse_args(["--workdir", workdir, *flags]))
    unsplit = saved_run(tmp_path / "u", config.replace(val_size=0))
    with pytest.raises(UsageError, match="was trained without --val-size: nothing was held out"):
        tta.held_out(mnist, tta.build_parser().parse_args(["--workdir", unsplit]))


@pytest.mark.xdist_group("trained_cnn")  # conftest's trained_cnn_run: one worker trains it once
def test_the_identity_view_is_the_models_own_softmax(mnist, trained_cnn):
    model = weights.from_workdir(str(trained_cnn), "latest")
    images = mnist.test_images[:500]
    probs = tta.view_probabilities(model, images)
    assert set(probs) == set(tta.VIEWS)
    np.testing.assert_array_equal(probs["identity"], model.probabilities(images))
    assert not np.array_equal(probs["ccw 10"], probs["identity"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workdir", "/nonexistent/run"], "--workdir /nonexistent/run: no such directory"),
        (["--split", "nope"], "argument --split: invalid choice"),
        (["--workdir", "w", "--split", "test", "--val-size", "9"], "--val-size choose the val split; --split test"),
        (["--torch-state-dict", "m.pth", "--model", "cnn", "--val-size", "-5"], "--val-size must be > 0, got -5"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    assert tta.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
