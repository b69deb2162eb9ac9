"""scripts/tta.py: test-time augmentation measured on a held-out split, per view and per set of views."""

import numpy as np
import pytest

import tta
from jaxmnist import weights
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
    images, labels = tta.held_out(mnist, "val", 1000, 3)
    run_images, run_labels = split_train(mnist, Config(val_size=1000, seed=3))[1]
    np.testing.assert_array_equal(images, run_images)
    np.testing.assert_array_equal(labels, run_labels)
    assert not np.array_equal(tta.held_out(mnist, "val", 1000, 4)[1], labels)


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
        (["--workdir", "/nonexistent/run"], "no best checkpoint in /nonexistent/run"),
        (["--split", "nope"], "argument --split: invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    assert tta.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
