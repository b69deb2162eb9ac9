"""JAX against tuned torch, paired: both compiled in one process, then their calls alternate, one of each per round,
and each round gives one ratio. On a machine whose speed drifts (a shared VM: the same step 630-1,036 ms in one
process) both frameworks see the same moments, so the ratio's confidence interval is narrow where the separate
medians of `jax_step` and `torch_tuned` move by more than the gap between them.

`paired_step` pairs a jitted step with a tuned torch step; `paired_epoch` pairs a JAX epoch over the bench's
training images (as jaxmnist.train runs it: chunks, batch preparation, metrics fetched) with as many tuned torch
steps. The ratio is JAX's time over torch's: under 1, JAX is faster.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax

from benchlib import jax_side, torch_side
from benchlib.settings import Settings
from benchlib.timing import Timing, median_interval
from jaxmnist import data as data_lib


def verdict(interval: tuple[float, float] | None) -> str:
    """Plain words for the ratio's 95 % interval: who is faster, or level where the interval holds 1."""
    if interval is None:
        return "too few rounds"
    lo, hi = interval
    if hi < 1:
        return "JAX faster"
    if lo > 1:
        return "torch faster"
    return "level"


def alternate(
    jax_call: Callable[[], Any],
    torch_call: Callable[[], Any],
    rounds: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """`rounds` rounds of one synced call each, the first framework swapped every round (so neither always runs
    right after the other's threads went idle); the per-round ratios with their median's 95 % interval."""
    calls = {"jax": jax_call, "torch": torch_call}
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {"jax": [], "torch": []}
    for r in range(rounds):
        for name in ("jax", "torch") if r % 2 == 0 else ("torch", "jax"):
            t0 = clock()
            calls[name]()
            samples[name].append(clock() - t0)
    ratios = [j / t for j, t in zip(samples["jax"], samples["torch"])]
    interval = median_interval(ratios)
    return {
        "rounds": rounds,
        "jax": Timing(samples["jax"]).summary(),
        "torch": Timing(samples["torch"]).summary(),
        "ratios": [round(r, 5) for r in ratios],
        "ratio": Timing(ratios).median,
        "ratio_interval_95": interval,
        "verdict": verdict(interval),
    }


def _tuned(network: str, batch_size: int, data: data_lib.Dataset, device: str, steps: int) -> Callable[[], Any]:
    """`steps` tuned torch steps, synced."""
    loop = torch_side.TunedLoop(network, batch_size, data, device)

    def run():
        for _ in range(steps):
            out = loop.step()
        loop.sync(out)

    return run


def paired_step(network: str, batch_size: int, data: data_lib.Dataset, settings: Settings, device: str) -> dict:
    """A jitted JAX train step against a tuned torch step, alternating."""
    program = jax_side.step_program(network, batch_size, data, settings)
    torch_step = _tuned(network, batch_size, data, device, steps=1)
    with torch_side.cudnn_benchmark():
        jax_step = lambda: jax.block_until_ready(program.step())  # noqa: E731
        out = alternate(jax_step, torch_step, settings.pair_rounds, settings.warmup)
    return {
        "compile_s": program.compile_s,
        "step_ms": 1e3 * out["jax"]["median_s"],
        "torch_step_ms": 1e3 * out["torch"]["median_s"],
        **out,
        **jax_side.plan_record(program.plan),
    }


def paired_epoch(network: str, batch_size: int, data: data_lib.Dataset, settings: Settings, device: str) -> dict:
    """A JAX epoch over the bench's training images against the same number of tuned torch steps, alternating."""
    program = jax_side.epoch_program(network, batch_size, data, settings)
    torch_steps = _tuned(network, batch_size, data, device, steps=program.steps)
    with torch_side.cudnn_benchmark():
        out = alternate(program.run, torch_steps, settings.pair_rounds, warmup=1)
    return {
        "compile_s": program.compile_s,
        "steps": program.steps,
        "chunks": [e - s for s, e in program.bounds],
        "step_ms": 1e3 * out["jax"]["median_s"] / program.steps,
        "torch_step_ms": 1e3 * out["torch"]["median_s"] / program.steps,
        **out,
        **jax_side.plan_record(program.plan),
    }
