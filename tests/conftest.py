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


def pytest_configure(config):
    # Several tests compile the same programs (e.g. a run and its resumed copy); a per-session persistent
    # cache compiles each once. Per session, so no test depends on what an earlier run left behind.
    import tempfile

    import jax

    config._xla_cache = tempfile.mkdtemp(prefix="jaxmnist-xla-cache-")
    jax.config.update("jax_compilation_cache_dir", config._xla_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(getattr(config, "_xla_cache", ""), ignore_errors=True)
