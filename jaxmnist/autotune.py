"""Which convolution plan runs on this machine, measured: as cuDNN's autotuner does on GPUs, the first run on a CPU
times the candidates (`jaxmnist.convs`: XLA's convolution under each kernel library, im2col + one GEMM, GEMMs over
input rows for the input gradient, a strided layer's input gradient by phases, oneDNN's kernels where they build)
for every convolution shape its network needs, forward plus backward at the run's batch size, keeps the fastest,
and caches the timings by CPU identity in ~/.cache/jaxmnist/conv-timings.json. The candidates run interleaved, and
timings taken while other processes held over 15 % of the CPU (`host.SHARED_ABOVE`) serve that run only
(benchmarks/README.md, "The tuner's timings"). Off the CPU nothing is measured: XLA keeps its own choice.

    plan = plan_for('auto', model, batch_size=512)       # measured once per machine, cached
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import host, onednn
from jaxmnist.cli import UsageError
from jaxmnist.convs import (
    ENV_IMPL,
    FORMULATIONS,
    IMPLS,
    LIBRARIES,
    XLA,
    ConvPlan,
    Geometry,
    fixed_plan,
    geometries,
    library_options,
    same_program_as_conv,
)

ENV_CACHE = 'JAXMNIST_CONV_CACHE'  # the timings' file (default ~/.cache/jaxmnist/conv-timings.json)
# 6: the onednn candidate; 5: the phases candidate; 4: the rows candidate; 3: timed interleaved, cached from a quiet
# CPU only; 2: `eigen` keeps YNNPACK's reductions
CACHE_FORMAT = 6
TUNING_BATCH = 256  # measured at the run's batch size, or this if smaller


def cpu_identity() -> str:
    """What the timings are valid for: the machine (`host.machine`: CPU model, family/model/stepping, vector
    extensions, usable cores), the JAX version and the process's settings of XLA's and oneDNN's kernels (their
    vector extensions capped: an older CPU emulated)."""
    settings = [f'{name}={os.environ[name]}' for name in ('XLA_FLAGS', 'ONEDNN_MAX_CPU_ISA') if os.environ.get(name)]
    return ', '.join([f'{host.machine()}, jax {jax.__version__}', *settings])


def cache_path() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / '.cache' / 'jaxmnist' / 'conv-timings.json')


def _read_cache(path: Path) -> dict:
    """The cached timings, or {} when the file is missing, unreadable or of another format (it is rebuilt)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get('format') == CACHE_FORMAT else {}


def _write_cache(path: Path, machine: str, timings: dict) -> None:
    """Merges `timings` into the file under `machine`, atomically (a concurrent writer can lose an entry, never
    corrupt the file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path) or {'format': CACHE_FORMAT, 'machines': {}}
        data['machines'].setdefault(machine, {}).update(timings)
        tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the next run measures again


# What is timed per layer: XLA's convolution in each library, and each other formulation once, under Eigen's library
# (matmul's GEMMs and copies are XLA's own code whatever the library; rows's and phases's forward and kernel gradient
# are XLA's convolution, so under XLA's default kernels their time is Eigen's: a plan on that library counts it so;
# onednn's calls are oneDNN's whatever the library).
CANDIDATES = {
    'xla/conv': ('xla', 'conv'),
    'eigen/conv': ('eigen', 'conv'),
    'matmul': ('eigen', 'matmul'),
    'rows': ('eigen', 'rows'),
    'phases': ('eigen', 'phases'),
    'onednn': ('eigen', 'onednn'),
}


def candidates() -> dict[str, tuple[str, str]]:
    """The CANDIDATES that can run in this process: `onednn` only where its kernels build (`onednn.unavailable`)."""
    return {n: c for n, c in CANDIDATES.items() if c[1] != 'onednn' or onednn.unavailable() is None}


def candidate_name(library: str, formulation: str) -> str:
    """A candidate's name in the timings: 'library/conv' for the convolution, else the formulation's name."""
    return f'{library}/{formulation}' if formulation == 'conv' else formulation


def _complete(times) -> bool:
    """Whether a cached entry holds a time for every candidate that can run (an older or damaged one is measured
    again)."""
    return isinstance(times, dict) and all(isinstance(times.get(c), (int, float)) for c in candidates())


def _is_stem(i: int, geometry: Geometry) -> bool:
    """Whether the i-th convolution reads the images (no input gradient): the first, on a 28x28 map of 1 channel
    (or torchvision's 3 copies of it)."""
    return i == 0 and geometry.h == 28 and geometry.cin <= 3


def _timing_key(geometry: Geometry, batch_size: int, first: bool) -> str:
    return f'{geometry.key} batch {batch_size}' + (' no-input-grad' if first else '')


# Rounds per layer, one call of each candidate in each: at least MIN_ROUNDS, and more while a layer has been timed
# for under MIN_LAYER_S (calls of a few ms vary up to 2x from call to call), at most MAX_ROUNDS.
MIN_ROUNDS, MIN_LAYER_S, MAX_ROUNDS = 3, 0.25, 20


def _compiled_candidate(geometry: Geometry, batch_size: int, library: str, formulation: str, stem: bool):
    """One layer's forward plus backward (the kernel's gradient; the input's too unless `stem`) at `batch_size` as
    `library` and `formulation` run it: compiled, bound to its inputs, ready to call."""
    g = geometry
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch_size, g.h, g.w, g.cin)), g.dtype)
    w = jnp.asarray(rng.standard_normal((g.k, g.k, g.cin, g.cout)) / g.k, g.dtype)
    conv = FORMULATIONS[formulation]
    loss = lambda x, w: jnp.sum(jnp.square(conv(x, w, g.stride, g.padding)))
    grad = jax.jit(jax.grad(loss, argnums=1 if stem else (0, 1)), compiler_options=library_options(library))
    return functools.partial(grad.lower(x, w).compile(), x, w)


def time_candidates(geometry: Geometry, batch_size: int, stem: bool) -> dict[str, float]:
    """Seconds per call of each candidate for one layer: all compiled first, then rounds of one call each (at least
    MIN_ROUNDS, more for cheap layers), the best call kept. Interleaved, so that a burst of other work slows every
    candidate alike, not one (benchmarks/README.md, "The tuner's timings"); from the second round on, a candidate
    over twice the fastest is not called again (the slowest cost seconds a call)."""
    runnable = candidates()
    timed = {name: c for name, c in runnable.items() if not same_program_as_conv(c[1], geometry, not stem)}
    calls = {name: _compiled_candidate(geometry, batch_size, lib, f, stem) for name, (lib, f) in timed.items()}
    best, start = dict.fromkeys(calls, float('inf')), time.perf_counter()
    for i in range(MAX_ROUNDS):
        for name, call in calls.items():
            t = time.perf_counter()
            jax.block_until_ready(call())
            best[name] = min(best[name], time.perf_counter() - t)
        if i:
            calls = {name: call for name, call in calls.items() if best[name] <= 2 * min(best.values())}
        if i + 1 >= MIN_ROUNDS and time.perf_counter() - start >= MIN_LAYER_S:
            break
    conv = max(best['eigen/conv'], best['xla/conv'])  # the convolution under another name: never chosen over it
    return best | dict.fromkeys(runnable.keys() - timed.keys(), conv)


def measured_plan(model, batch_size: int, say: Callable = print) -> ConvPlan:
    """The fastest library and per-layer formulations for `model` on this machine, from the cache where it has
    the timings, else measured now (and cached). Timed at `batch_size`, at most TUNING_BATCH: a few seconds per
    network on 2 cores, where the slowest candidates cost seconds a call."""
    batch_size = min(batch_size, TUNING_BATCH)
    layers = [(g, _is_stem(i, g)) for i, g in enumerate(geometries(model, batch_size))]
    keys = {g: _timing_key(g, batch_size, stem) for g, stem in layers}
    machine, path = cpu_identity(), cache_path()
    known = _read_cache(path).get('machines', {}).get(machine, {})
    missing = [(g, stem) for g, stem in layers if not _complete(known.get(keys[g]))]
    fresh = {}
    if missing:
        if (reason := onednn.unavailable()) is not None:
            say(f'oneDNN\'s convolutions left out: {reason}')
        say(f'timing {len(candidates())} ways to run each of {len(missing)} convolution shapes on this CPU ({machine})')
        t0, others = time.perf_counter(), host.OthersCpu()
        fresh = {keys[g]: time_candidates(g, batch_size, stem) for g, stem in missing}
        took, shared = time.perf_counter() - t0, others.share()
        if shared is not None and shared > host.SHARED_ABOVE:  # this run uses them; the next measures again
            say(f'convolution timings: {took:.1f} s, not cached (other processes took {shared:.0%} of the CPU)')
        else:
            _write_cache(path, machine, fresh)
            say(f'convolution timings: {took:.1f} s, cached in {path}')
    timings = {g: fresh.get(keys[g]) or known[keys[g]] for g, _ in layers}
    return choose(timings, 'cached' if not fresh else 'measured')


# How much faster than the rest a formulation must be alone to be chosen. `rows` pays in a whole step for copies that
# a layer alone does not show: the fast network's 14x14 32->64 3x3, 1.08x and 1.16x faster alone at batch 256 and 32,
# made the step 1.10x and 1.19x slower; the cnn's 12x12 10->20 5x5, 1.7x faster alone, made it 0.70x as long
# (paired steps on a Zen 4; benchmarks/README.md, "Row GEMMs for an input gradient").
# `phases` (a strided layer's input gradient): resnet's 28x28 16->32 3x3/2, 1.43x faster alone at batch 256, made
# its step 0.93x as long; its 14x14 32->64 3x3/2, 1.14x alone, left it level (1.005x; "Strided input gradients by
# phases").
ALONE_MARGIN = {'rows': 1.5, 'phases': 1.2}


def choose(timings: dict, source: str) -> ConvPlan:
    """The plan from per-layer timings ({Geometry: {candidate: seconds}}): the library whose layers, each in its
    fastest formulation, cost least in all (a library is a whole program's), then each layer's formulation. A
    formulation's time counts times its ALONE_MARGIN in both choices (what it is expected to cost in a step), so a
    formulation too slow for one library does not win the other."""

    runnable = candidates()

    def price(lib, t, f):
        name = candidate_name(lib, f)
        return t[name] * ALONE_MARGIN.get(f, 1.0) if name in runnable and name in t else float('inf')

    def best(lib, t):
        return min(FORMULATIONS, key=lambda f: price(lib, t, f))

    def cost(lib):
        """The layers' total, then (a tie: GEMM formulations cost the same under both libraries) its convolutions':
        the library also runs what the plan does not time (the fused first layers' weight gradients)."""
        return (
            sum(price(lib, t, best(lib, t)) for t in timings.values()),
            sum(t[candidate_name(lib, 'conv')] for t in timings.values()),
        )

    library = min(LIBRARIES, key=cost)
    layers = sorted((g.key, f) for g, t in timings.items() if (f := best(library, t)) != 'conv')
    return ConvPlan(library, 'conv', tuple(layers), source)


def plan_for(impl: str | None, model, batch_size: int, say: Callable = print) -> ConvPlan:
    """The plan of `--conv-impl impl` (None: $JAXMNIST_CONV_IMPL, else auto) for `model` at `batch_size`. Off
    the CPU `auto` is XLA's own choice; on the CPU it is `measured_plan`."""
    where = f'--conv-impl {impl!r}' if impl else f'${ENV_IMPL}={os.environ.get(ENV_IMPL)!r}'
    impl = impl or os.environ.get(ENV_IMPL) or 'auto'
    if impl not in IMPLS:
        raise UsageError(f'unknown {where}; choose from {", ".join(IMPLS)}')
    if impl != 'auto':
        return fixed_plan(impl).require_runnable(f'--conv-impl {impl}: ')
    if jax.default_backend() != 'cpu':
        return XLA
    return measured_plan(model, batch_size, say)
