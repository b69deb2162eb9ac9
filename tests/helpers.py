"""Helpers shared by several test files: shapes, torch twins of flax variables, a fake dataset, a tiny recipe."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxmnist import data as data_lib
from jaxmnist import hugepages, malloc, models
from jaxmnist.presets import PRESETS

# The fast recipe, tiny: 3 epochs of 10 steps of 64 (train_size 640), a weight average, one step per chunk. Tests
# that train it share its compiled programs (its one-cycle schedule is part of them: same length, same program).
FAST_TINY = PRESETS["fast"].replace(batch_size=64, epochs=3, train_size=640, eval_batch_size=500, ema=0.9)


def tiny_data(mnist):
    """MNIST with its first 1,000 test images: the short runs' evaluation."""
    return dataclasses.replace(mnist, test_images=mnist.test_images[:1000], test_labels=mnist.test_labels[:1000])


def flat(tree):
    return traverse_util.flatten_dict(tree)


def init_shapes(name, num_classes=None):
    return jax.eval_shape(
        functools.partial(models.get_model(name, num_classes).init, train=False),
        jax.random.key(0),
        jnp.zeros((1, 28, 28, 1)),
    )


def torch_model_holding(name, state_dict):
    """torch_ref's ``name`` with ``state_dict`` loaded strictly; built on 'meta' to skip its init."""
    import torch  # here: the helpers of JAX-only tests need no torch

    from torch_ref import models as torch_models

    with torch.device('meta'):
        model = torch_models.get_model(name)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


def fake_data(n=40, seed=0):
    """Random images and labels in a Dataset: n training images, 10 test images (not MNIST)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return data_lib.Dataset("mnist", images, rng.integers(0, 10, n), images[:10], rng.integers(0, 10, 10), "fake")


def hugepages_in_a_command(environ=None) -> bool:
    """What a command started by a test records as `hugepages`: with $JAXMNIST_HUGEPAGES=1, asked for where this
    machine can have them (the command restarts itself, jaxmnist/hugepages.py), or already in the environment."""
    environ = os.environ if environ is None else environ
    return hugepages.active(environ) or hugepages.wanted(environ) is not None


def malloc_in_a_command(environ=None) -> str:
    """What a command started by a test records as `malloc`: keep (freed memory kept, jaxmnist/malloc.py) on glibc
    unless $JAXMNIST_MALLOC=system."""
    return "keep" if malloc.wanted(os.environ if environ is None else environ) else "system"
