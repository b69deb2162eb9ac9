"""torch's Conv2d on oneDNN, the library PyTorch's CPU convolutions run on, called from XLA programs: the `onednn`
formulation of `jaxmnist.convs`.

XLA:CPU runs convolutions on Eigen's or YNNPACK's kernels, 2-5x slower than oneDNN's for the blog's layers
(benchmarks/README.md, "oneDNN's convolutions in XLA"). Here the forward, the input's gradient and the kernel's
gradient are three calls into oneDNN (`csrc/onednn_conv.cc`) through XLA's FFI, joined by a custom VJP: float32,
NHWC x HWIO, on the CPU. The same function as `lax.conv` up to float32 rounding (tests/test_onednn.py);
`convs.conv_onednn` hands every other dtype and backend to XLA's convolution.

The kernels are compiled on first use, once per machine (g++, a few seconds), and cached beside the compilation
cache: $XDG_CACHE_HOME/jaxmnist/onednn (~/.cache/jaxmnist/onednn), keyed by the source, the compiler and its flags,
jaxlib's and oneDNN's versions (a temporary directory where the cache cannot be written). They need a C++ compiler
($CXX or g++) and oneDNN's wheels (`onednn-cpu-gomp`, `onednn-devel-cpu-gomp`, dependencies of jaxmnist on x86-64
Linux). Where any is missing, `unavailable()` says what, and the tuner leaves the
formulation out; JAXMNIST_ONEDNN=off does the same on purpose.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import cli, compile_cache

ENV = 'JAXMNIST_ONEDNN'  # 'off' (or 0, no, false): never use oneDNN
SOURCE = Path(__file__).with_name('csrc') / 'onednn_conv.cc'
TARGETS = {
    'forward': 'JaxmnistOnednnConv',
    'input_grad': 'JaxmnistOnednnConvInputGrad',
    'kernel_grad': 'JaxmnistOnednnConvKernelGrad',
}
LIBRARY = ('onednn-cpu-gomp', 'libdnnl.so')  # the wheels that hold oneDNN's library and its headers
HEADERS = ('onednn-devel-cpu-gomp', 'oneapi/dnnl/dnnl.hpp')


class Unavailable(cli.RunError):
    """oneDNN's convolutions cannot run in this process; the message says why (a command prints it as one line and
    exits 1)."""


def _installed(distribution: str, suffix: str) -> Path | None:
    """The file of an installed wheel whose path ends with `suffix` (wheels' data files land under sys.prefix)."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(suffix):
            path = Path(f.locate()).resolve()
            if path.exists():
                return path
    return None


def build_inputs() -> dict:
    """What building needs: compiler, the library, the two header roots; Unavailable naming what is missing."""
    if os.environ.get(ENV, '').strip().lower() in ('off', '0', 'no', 'false'):
        raise Unavailable(f'turned off by {ENV}')
    if sys.platform != 'linux':
        raise Unavailable('oneDNN kernels are built on Linux only')
    compiler = shutil.which(os.environ.get('CXX') or 'g++')
    if compiler is None:
        raise Unavailable('no C++ compiler (g++ or $CXX) to build them')
    library, header = _installed(*LIBRARY), _installed(*HEADERS)
    if library is None or header is None:
        raise Unavailable(f'oneDNN is not installed (pip install {LIBRARY[0]} {HEADERS[0]})')
    return {
        'compiler': compiler,
        'library': library,
        'include': header.parents[len(Path(HEADERS[1]).parts) - 1],
        'ffi_include': Path(jax.ffi.include_dir()),
    }


PRIVATE_PREFIX = 'jaxmnist-onednn-'  # a build for one process, in the temporary directory


def build(inputs: dict) -> Path:
    """The compiled kernels: from the cache, or built now (atomically: concurrent builders each write their own
    file and rename it into place)."""
    import jaxlib

    lib = inputs['library']
    flags = [
        '-O2', '-std=c++17', '-shared', '-fPIC', '-w', f'-I{inputs["include"]}', f'-I{inputs["ffi_include"]}',
        str(SOURCE), str(lib), f'-Wl,-rpath,{lib.parent}',
    ]  # fmt: skip
    versions = [jaxlib.__version__, *(importlib.metadata.version(d) for d in (LIBRARY[0], HEADERS[0]))]
    key = hashlib.sha256('\0'.join([SOURCE.read_text(), inputs['compiler'], *flags, *versions]).encode())
    target = compile_cache.default_dir().with_name('onednn') / f'onednn_conv-{key.hexdigest()[:16]}.so'
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(target.parent, os.W_OK):
            raise PermissionError(target.parent)
    except OSError:  # a read-only home: built for this process only (and deleted once loaded, _discard_private)
        target = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX)) / target.name
    tmp = target.with_name(f'.{target.name}.{os.getpid()}.{threading.get_ident()}.tmp')
    try:
        done = subprocess.run([inputs['compiler'], *flags, '-o', str(tmp)], capture_output=True, text=True,
                              timeout=600)  # fmt: skip
    except BaseException:  # a compiler that hangs, an interrupt: nothing left behind
        tmp.unlink(missing_ok=True)
        _discard_private(target)
        raise
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        _discard_private(target)
        first = next((line for line in done.stderr.splitlines() if 'error' in line), done.stderr.strip()[:300])
        raise Unavailable(f'building {SOURCE.name} failed: {first}')
    os.replace(tmp, target)
    return target


def _discard_private(built: Path) -> None:
    """Deletes a build made for this process alone (its temporary directory) once it is loaded (the library stays
    mapped) or when it fails: no process leaves a copy, or an empty directory, in the temporary directory."""
    if built.parent.name.startswith(PRIVATE_PREFIX) and built.parent.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(built.parent, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
    """Builds (once per machine), loads and registers the kernels with XLA once per process; the reason they
    cannot run, or None."""
    import ctypes

    try:
        inputs = build_inputs()
        built = build(inputs)
        try:
            library = ctypes.cdll.LoadLibrary(str(built))
        except OSError:  # a damaged cache entry (a killed copy, a full disk): built again, once
            built.unlink(missing_ok=True)
            _discard_private(built)
            library = ctypes.cdll.LoadLibrary(str(built := build(inputs)))
        _discard_private(built)
        for name in TARGETS.values():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform='cpu')
    except Unavailable as e:
        return str(e)
    except Exception as e:  # a library that does not load, an older jax without jax.ffi, a compiler that hangs
        return f'the oneDNN kernels cannot be loaded: {type(e).__name__}: {e}'
    return None


def unavailable() -> str | None:
    """Why oneDNN's convolutions cannot run here (None: they can). The first call may build them (seconds)."""
    return _load()


def ffi(target: str, shape, a, b, stride: int, padding: int):
    """One oneDNN kernel (`target`: forward, input_grad, kernel_grad) as an XLA FFI call writing float32 `shape`."""
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    # A vmapped call (seeds side by side) runs once per seed: each has its own kernel.
    call = jax.ffi.ffi_call(TARGETS[target], out, vmap_method='sequential')
    return call(a, b, stride=np.int64(stride), padding=np.int64(padding))


def _out_shape(x, kernel, stride: int, padding: int) -> tuple[int, ...]:
    n, h, w, _ = x.shape
    kh, kw, _, features = kernel.shape
    return n, (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1, features


def runs(x, kernel) -> bool:
    """Whether oneDNN computes this convolution: float32 on the CPU."""
    return x.dtype == jnp.float32 and kernel.dtype == jnp.float32 and jax.default_backend() == 'cpu'


def _require() -> None:
    reason = _load()
    if reason is not None:
        raise Unavailable(f'the onednn convolution formulation cannot run: {reason}')


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, stride: int, padding: int):
    return ffi('forward', _out_shape(x, kernel, stride, padding), x, kernel, stride, padding)


def _conv_fwd(x, kernel, stride, padding):
    return _conv(x, kernel, stride, padding), (x, kernel)


def _conv_bwd(stride, padding, residuals, dy):
    """Two calls, so that XLA drops the input's gradient where nothing needs it (the first layer's)."""
    x, kernel = residuals
    return (
        ffi('input_grad', x.shape, dy, kernel, stride, padding),
        ffi('kernel_grad', kernel.shape, x, dy, stride, padding),
    )


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv(x, kernel, stride: int, padding: int):
    """torch's Conv2d on NHWC x HWIO through oneDNN, where `runs(x, kernel)`. Unavailable where the kernels cannot
    be built or loaded."""
    _require()
    return _conv(x, kernel, stride, padding)
