"""scripts/benchlib/settings.py: what a run measures, and the configs and batches measurements start from."""

import numpy as np
from helpers import fake_data

from benchlib import settings


def test_a_network_is_measured_with_its_own_optimiser_and_no_augmentation():
    config = settings.config_for("cnn_deep", 64)
    assert (config.model, config.batch_size, config.optimizer, config.lr) == ("cnn_deep", 64, "rmsprop", 1e-3)
    assert not config.augment and not config.plateau  # both frameworks read the same plain batches
    assert settings.config_for("cnn", 8).lr == 0.04  # cnn's own preset is the blog's §3 (cnn_tb)


def test_real_batches_are_distinct_shuffled_batches():
    data = fake_data()
    batches = settings.real_batches(data, 16, 3)
    assert [x.shape for x, _ in batches] == [(16, 28, 28)] * 3 and batches[0][1].dtype == np.int32
    firsts = [tuple(x[:, 0, 0]) for x, _ in batches]
    assert len(set(firsts)) == 3  # three different batches, wrapping around the 40 images
    for x, y in batches:  # each image keeps its own label
        rows = [int(np.flatnonzero((data.train_images == img).all(axis=(1, 2)))[0]) for img in x]
        assert np.array_equal(data.train_labels[rows], y)


def test_quick_settings_shrink_everything():
    quick = settings.quick_settings(networks=("cnn",))
    assert quick.quick and quick.networks == ("cnn",) and quick.batch_sizes == (8,) and not quick.torch_compile
