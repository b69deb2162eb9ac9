"""Timing and FLOP counting: the measuring instruments of the benchmarks.

Times are wall-clock seconds on the host around calls that end with a device sync (`jax.block_until_ready`
for JAX, `torch.cuda.synchronize()` for torch on a GPU; torch on the CPU is synchronous).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Callable


@dataclasses.dataclass
class Timing:
    """Seconds per call, one sample per call."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def summary(self) -> dict:
        s = sorted(self.samples)
        q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731 (a nearest-rank quantile)
        return {
            "median_s": self.median,
            "min_s": s[0],
            "p10_s": q(0.1),
            "p90_s": q(0.9),
            "mean_s": statistics.fmean(s),
            "n": len(s),
            "samples_s": [round(x, 7) for x in self.samples],
        }


def measure(
    fn: Callable[[], Any],
    sync: Callable[[Any], Any],
    *,
    warmup: int = 3,
    iters: int = 50,
    max_s: float = 3.0,
    min_iters: int = 5,
) -> Timing:
    """Times `iters` calls of `fn`, each followed by `sync(result)`, after `warmup` untimed ones.

    Stops early once `max_s` seconds of samples are in and at least `min_iters` were taken, so a slow network
    at a large batch costs a bounded time.
    """
    for _ in range(warmup):
        sync(fn())
    samples, spent = [], 0.0
    while len(samples) < iters and (spent < max_s or len(samples) < min_iters):
        t0 = time.perf_counter()
        sync(fn())
        samples.append(time.perf_counter() - t0)
        spent += samples[-1]
    return Timing(samples)


def measure_pipelined(fn: Callable[[], Any], sync: Callable[[Any], Any], n: int) -> float:
    """Seconds per call of `n` back-to-back calls with one sync at the end: what a loop that never waits on the
    device achieves (dispatch overlaps compute)."""
    t0 = time.perf_counter()
    out = None
    for _ in range(n):
        out = fn()
    sync(out)
    return (time.perf_counter() - t0) / n


def pipelined_count(median_s: float, iters: int, max_s: float) -> int:
    """How many pipelined calls fit in about `max_s` seconds (at least 3, at most `iters`)."""
    return max(3, min(iters, int(max_s / max(median_s, 1e-6))))


# ------------------------------------------------------------------------------------------- FLOPs
def flops_on_cpu(fn: Callable, *args) -> float | None:
    """FLOPs of `fn(*args)` lowered for the host CPU: the fallback for a backend without a cost analysis of
    unoptimised HLO (the count is the same math on any device)."""
    import jax

    try:
        cpu = jax.devices("cpu")[0]
    except RuntimeError:
        return None
    return xla_flops(jax.jit(fn).lower(*jax.device_put(args, cpu)))


def xla_flops(stage) -> float | None:
    """FLOPs of a `jax.stages.Lowered` or `Compiled` from XLA's cost analysis (None if it has none).

    Prefer a Lowered: its unoptimised HLO holds plain convolutions on every backend, whereas a GPU's compiled
    HLO turns them into cuDNN custom calls that the cost analysis may count as zero.
    """
    try:
        cost = stage.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def measure_interleaved(
    fns: dict[str, Callable[[], Any]], sync: Callable[[Any], Any], *, rounds: int, warmup: int = 1
) -> dict[str, Timing]:
    """Times several functions round-robin, one call of each per round: on a shared, loaded machine every one of
    them then sees the same mix of quiet and busy moments, so their ratios stay meaningful."""
    for fn in fns.values():
        for _ in range(warmup):
            sync(fn())
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            sync(fn())
            samples[name].append(time.perf_counter() - t0)
    return {name: Timing(v) for name, v in samples.items()}


def median_interval(samples: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median: the order statistics (k, n+1-k) of the sorted
    samples with the largest k whose coverage, from the binomial(n, 1/2) count of samples below the median, is at
    least `level`. None where too few samples for that level (under 6 at 95 %)."""
    s, n = sorted(samples), len(samples)
    tail, k = 0.0, 0  # tail: P(fewer than k+1 of n samples lie below the median)
    while True:
        tail += math.comb(n, k) / 2**n
        if 1 - 2 * tail < level:
            break
        k += 1
    return (s[k - 1], s[n - k]) if k >= 1 else None
