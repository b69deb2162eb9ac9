"""PyTorch state_dicts of the blog's networks in and out, without torch: the naming and layout rule, and the
`.pth` file format read and written with numpy, zipfile and pickle alone.

One naming rule covers every network. A flax module path, joined with '.', is the torch module path once each
flax name's '_' becomes '.': flax ``layer1_0`` is torch ``layer1.0`` (a Sequential index), and no torch module
name in these networks contains '_'. Leaves map as

  params/.../kernel        <-> ...weight        Conv: HWIO <-> OIHW; Dense: (in, out) <-> (out, in)
  params/.../scale         <-> ...weight        BatchNorm and LayerNorm
  params/.../bias          <-> ...bias
  batch_stats/.../mean     <-> ...running_mean
  batch_stats/.../var      <-> ...running_var   (both store torch's unbiased running variance)
  (none)                   <-> ...num_batches_tracked   dropped; written as 0

e.g. ``params/layer1_0/downsample_0/kernel`` <-> ``layer1.0.downsample.0.weight``. Flax's Dense after Flatten
already flattens in torch's C,H,W order, so Linear weights need no permutation. torch_ref/convert.py applies the
same rule to torch tensors (and checks it against torch's own module names).

A `.pth` from `torch.save(model.state_dict(), f)` is a zip archive: `data.pkl` (an OrderedDict of tensors, each
pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` with the storage a persistent id
naming `data/<key>`), the raw little-endian storages, `byteorder` and `version`. Reading allows only those
globals (a pickle can run code); writing emits the same records, which `torch.load(weights_only=True)` accepts.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
from flax import traverse_util

from jaxmnist import engine, models
from jaxmnist.cli import UsageError

FLAX_TO_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
TORCH_TO_FLAX_STAT = {"running_mean": "mean", "running_var": "var"}


# ---------------------------------------------------------------------------------- names and layouts
def torch_module_path(flax_modules) -> str:
    return ".".join(name.replace("_", ".") for name in flax_modules)


def flax_module_path(torch_modules) -> tuple[str, ...]:
    """Fuses each Sequential index onto its container's name: layer1.0.conv1 -> (layer1_0, conv1)."""
    path = []
    for name in torch_modules:
        if name.isdigit():
            path[-1] += "_" + name
        else:
            path.append(name)
    return tuple(path)


def to_flax_layout(leaf: str, array):
    if leaf == "weight" and array.ndim == 4:
        return "kernel", array.transpose(2, 3, 1, 0)
    if leaf == "weight" and array.ndim == 2:
        return "kernel", array.T
    if leaf == "weight":
        return "scale", array
    return leaf, array


def to_torch_layout(leaf: str, array):
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if leaf == "kernel":
        return array.T
    return array


@functools.lru_cache(maxsize=None)
def flax_shapes(name: str, num_classes: int | None = None) -> dict:
    """{(collection, *path): shape} of every variable of the flax model `name`; shapes need no compute."""
    variables = engine.variable_shapes(models.get_model(name, num_classes))
    return {path: tuple(v.shape) for path, v in traverse_util.flatten_dict(variables).items()}


def check_same(kind: str, expected, got) -> None:
    missing, unexpected = set(expected) - set(got), set(got) - set(expected)
    if missing or unexpected:
        raise ValueError(f"{kind} mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")


def torch_to_flax(name: str, state: dict, num_classes: int | None = None) -> dict:
    """A state_dict of torch_ref's `name` as numpy arrays -> {'params', 'batch_stats'}; every variable of the
    flax model and no other (ValueError otherwise)."""
    flat = {}
    for key, array in state.items():
        *modules, leaf = key.split(".")
        if leaf == "num_batches_tracked":
            continue
        if leaf in TORCH_TO_FLAX_STAT:
            collection, leaf = "batch_stats", TORCH_TO_FLAX_STAT[leaf]
        else:
            collection = "params"
            leaf, array = to_flax_layout(leaf, array)
        flat[(collection, *flax_module_path(modules), leaf)] = np.asarray(array, order="C")
    check_same(f"flax variables of {name!r}", flax_shapes(name, num_classes), flat)
    return traverse_util.unflatten_dict(flat)


def flax_to_torch(name: str, variables) -> dict[str, np.ndarray]:
    """Flax variables of `name` -> torch_ref's state_dict as numpy arrays (num_batches_tracked 0: flax does not
    count batches, and torch reads the count only when its momentum is None)."""
    state = {}
    for (collection, *modules, leaf), value in traverse_util.flatten_dict(variables).items():
        array = np.asarray(value)
        if collection == "params":
            array = to_torch_layout(leaf, array)
        module = torch_module_path(modules)
        state[f"{module}.{FLAX_TO_TORCH_LEAF[collection, leaf]}"] = np.asarray(array, order="C")
        if (collection, leaf) == ("batch_stats", "mean"):
            state[f"{module}.num_batches_tracked"] = np.zeros((), np.int64)
    return state


# ---------------------------------------------------------------------------------------- .pth files
_STORAGES = {  # torch's storage classes and the numpy dtypes of their little-endian bytes
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
}
_DTYPE_STORAGE = {dtype: name for name, dtype in _STORAGES.items()}


class _Storage(str):
    """A storage class, as unpickled: its name (a dtype to come)."""


def _rebuild_tensor(storage, offset, size, stride, *_):
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=[s * storage.itemsize for s in stride]
    ).copy()


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch.save'd state_dict into numpy arrays; refuses every other global."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGES:
            return _Storage(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        kind, storage, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return np.frombuffer(self.archive.read(f"{self.prefix}data/{key}"), _STORAGES[storage])


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state_dict in a `torch.save` zip file, as numpy arrays (ValueError in one line if it is not one)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if pkl is None:
                raise ValueError("no data.pkl: not a torch.save file (or a legacy, non-zip one)")
            prefix = pkl[: -len("data.pkl")]
            state = _StateDictUnpickler(io.BytesIO(archive.read(pkl)), archive, prefix).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, KeyError, EOFError) as e:
        raise ValueError(f"not a torch.save state_dict ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError(f"holds a {type(state).__name__}, not a state_dict of tensors")
    return dict(state)


class _Global:
    """A global to pickle by name (module, name) without importing it: torch is not needed to write."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's REDUCE wants a callable; it is only ever written, never called
        raise TypeError(f"{self.module}.{self.name} is a name to pickle")


class _StateDictPickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table takes _Global
    dispatch = pickle._Pickler.dispatch.copy()

    def save_named_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_Global] = save_named_global

    def persistent_id(self, obj):
        return obj if isinstance(obj, tuple) and obj and obj[0] == "storage" else None


class _Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2 of storage `key` (contiguous, C order)."""

    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array

    def __reduce__(self):
        a = self.array
        storage = ("storage", _Global("torch", _DTYPE_STORAGE[a.dtype.newbyteorder("<")]), self.key, "cpu", a.size)
        stride = tuple(int(np.prod(a.shape[i + 1 :])) for i in range(a.ndim))
        hooks = (_Global("collections", "OrderedDict"), ())
        return _Global("torch._utils", "_rebuild_tensor_v2"), (storage, 0, a.shape, stride, False, _Reduce(*hooks))


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def write_pth(path: str | os.PathLike, state: dict[str, np.ndarray]) -> Path:
    """`state` as a `torch.save` zip file that `torch.load(weights_only=True)` reads, written atomically."""
    path = Path(path)
    arrays = {k: np.asarray(v, dtype=np.dtype(v.dtype).newbyteorder("<"), order="C") for k, v in state.items()}
    payload = io.BytesIO()
    tensors = collections.OrderedDict((k, _Tensor(str(i), a)) for i, (k, a) in enumerate(arrays.items()))
    _StateDictPickler(payload, protocol=2).dump(
        _Reduce(_Global("collections", "OrderedDict"), (list(tensors.items()),))
    )
    root = path.stem or "archive"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr(f"{root}/data.pkl", payload.getvalue())
            archive.writestr(f"{root}/byteorder", "little")
            for i, a in enumerate(arrays.values()):
                archive.writestr(f"{root}/data/{i}", a.tobytes())
            archive.writestr(f"{root}/version", "3\n")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # a parent that is a file fails the clean-up too: report the write
            tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    return path


# ------------------------------------------------------------------------------- for the command lines
def load_torch(path: str | os.PathLike, name: str, flag: str = "--torch-state-dict", num_classes: int | None = None) -> dict:
    """{'params', 'batch_stats'} from a state_dict of torch_ref's `name` in a .pth file, loaded strictly: every
    key of the network and no other, every shape as the network's. Every failure is one line."""
    try:
        state = read_pth(path)
    except OSError as e:
        raise UsageError(f"cannot read {flag} {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"cannot read {flag} {path}: {e}") from None
    try:
        variables = torch_to_flax(name, state, num_classes)
    except ValueError:
        raise UsageError(f"{flag} {path} is not a {name} state_dict: {_whose(state, name)}") from None
    shapes = flax_shapes(name, num_classes)
    if any(v.shape != shapes[k] for k, v in traverse_util.flatten_dict(variables).items()):
        raise UsageError(f"{flag} {path}: the shapes are not {name}'s (another head or width?)")
    return variables


def _whose(state: dict, name: str) -> str:
    """Which of the blog's networks (at its own head) a state_dict that is not `name`'s belongs to, said as the flag
    that reads it; else how it differs. The listing of every missing key ran to hundreds of characters."""
    for other in (n for n in models.MODELS if n != name):
        with contextlib.suppress(ValueError):
            torch_to_flax(other, state)
            return f"it is {other}'s (--model {other})"
    return f"its {len(state)} tensors are none of the networks' ({', '.join(models.MODELS)}) at their own heads"


def save_torch(path: str | os.PathLike, name: str, variables: dict) -> Path:
    """Writes the state_dict of torch_ref's `name` holding `variables`, atomically."""
    return write_pth(path, flax_to_torch(name, variables))
