"""scripts/benchlib/timing.py: sample counts and bounds, round-robin timing, XLA's FLOP count."""

import time

import jax
import jax.numpy as jnp

from benchlib import timing


def test_measure_takes_warmup_then_bounded_samples():
    calls = []
    t = timing.measure(lambda: calls.append(time.sleep(0.002)), lambda _: None, warmup=2, iters=7, max_s=10.0)
    assert len(calls) == 9 and t.summary()["n"] == 7
    assert min(t.samples) >= 0.002  # each sample spans its call, sync included
    few = timing.measure(lambda: time.sleep(0.01), lambda _: None, warmup=0, iters=50, max_s=0.03, min_iters=2)
    assert 2 <= len(few.samples) <= 4  # stops once max_s of samples are in
    assert timing.pipelined_count(0.5, 50, 3.0) == 6 and timing.pipelined_count(1e-9, 50, 3.0) == 50


def test_interleaved_timing_runs_round_robin():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    timings = timing.measure_interleaved(fns, lambda _: None, rounds=3, warmup=1)
    assert order == ["a", "b"] + ["a", "b"] * 3 and [len(t.samples) for t in timings.values()] == [3, 3]


def test_median_interval_is_the_order_statistics_of_95_percent():
    # n = 10: k = 2 covers 1 - 2 * 11/1024 = 97.9 %, k = 3 only 89 %; n = 100: the textbook 40th and 61st.
    assert timing.median_interval([10, 1, 9, 2, 8, 3, 7, 4, 6, 5]) == (2, 9)
    assert timing.median_interval(list(range(1, 101))) == (40, 61)
    assert timing.median_interval([1, 2, 3, 4, 5, 6]) == (1, 6)  # 2/64 outside: 96.9 %
    assert timing.median_interval([1, 2, 3, 4, 5]) is None  # 2/32 outside: 93.8 %, too few


def test_xla_flops_counts_a_matmul():
    a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
    lowered = jax.jit(lambda a, b: a @ b).lower(a, b)
    assert timing.xla_flops(lowered) == 2 * 8 * 16 * 4
    assert timing.xla_flops(object()) is None
