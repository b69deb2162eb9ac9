"""scripts/benchlib/paired.py: the alternation's order, its per-round ratios and their verdict (a virtual clock)."""

from benchlib import paired


def test_alternate_swaps_the_order_and_pairs_each_round():
    now, order = [0.0], []

    def call(name, seconds):
        def run():
            order.append(name)
            now[0] += seconds[len([n for n in order if n == name]) - 1]

        return run

    # JAX: 1 s per call (warm-up, then rounds), torch: 2 s except one 20 s hiccup in round 3.
    jax_s, torch_s = [5.0] + [1.0] * 10, [5.0] + [2, 2, 20, 2, 2, 2, 2, 2, 2, 2]
    out = paired.alternate(call("jax", jax_s), call("torch", torch_s), rounds=10, warmup=1, clock=lambda: now[0])
    assert order[2:8] == ["jax", "torch", "torch", "jax", "jax", "torch"]  # after the warm-ups, swapped per round
    assert out["ratios"] == [0.5, 0.5, 0.05] + [0.5] * 7 and out["ratio"] == 0.5
    # 10 rounds: the interval drops the lowest and highest ratio, so the hiccup is outside it.
    assert out["ratio_interval_95"] == (0.5, 0.5) and out["verdict"] == "JAX faster"
    assert out["jax"]["n"] == out["torch"]["n"] == 10 and out["torch"]["median_s"] == 2


def test_verdict_says_level_where_the_interval_holds_one():
    assert paired.verdict((0.97, 1.02)) == "level"
    assert paired.verdict((1.01, 1.2)) == "torch faster" and paired.verdict((0.8, 0.99)) == "JAX faster"
    assert paired.verdict(None) == "too few rounds"
