"""scripts/benchlib/plan.py: the plan's order, the budget runner's skips, failures and calibration."""

import json

from bench_docs import bench_doc

from benchlib import plan
from benchlib.settings import Settings


def test_runner_skips_over_budget_and_records_errors(tmp_path):
    doc = bench_doc([])
    out = tmp_path / "r.json"
    runner = plan.Runner(doc, out, budget_s=1e-9, log=lambda m: None)
    rec = runner.run(plan.Item("jax_step", "cnn", 8, lambda: {"step_ms": 1.0}))
    assert rec["status"] == "skipped" and "budget" in rec["reason"]
    runner.budget_s = None

    def oom():
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")

    def broken():
        raise ValueError("nope")

    assert runner.run(plan.Item("jax_step", "cnn", 16, oom))["status"] == "oom"
    assert runner.run(plan.Item("jax_step", "cnn", 32, broken))["status"] == "error"
    assert runner.run(plan.Item("jax_step", "cnn", 64, lambda: {"compile_s": 0.0}))["status"] == "ok"
    saved = json.loads(out.read_text())
    assert [r["status"] for r in saved["results"]] == ["skipped", "oom", "error", "ok"]
    # A kind measured on one network calibrates the estimate for a heavier one.
    assert runner.estimate(plan.Item("jax_step", "resnet101", 64, lambda: {})) >= runner.estimate(
        plan.Item("jax_step", "cnn", 64, lambda: {})
    )


def test_plan_orders_core_measurements_first():
    settings = Settings(batch_sizes=(512, 64), torch_compile=True)
    items = plan.build_plan(settings, None, {}, "cpu", {"results": []})  # planning reads no data
    first = [(i.kind, i.network, i.batch_size) for i in items[:4]]
    assert first == [
        ("jax_step", "cnn", 512),
        ("torch_tuned", "cnn", 512),
        ("torch_blog_step", "cnn", 512),
        ("torch_tuned_compiled", "cnn", 512),
    ]
    tiers = [plan.priority(i.kind, i.network, i.batch_size, settings) for i in items]
    assert tiers == sorted(tiers)
    assert not any(i.kind == "jax_step_bf16" for i in items)  # CPU: bf16 is n/a
    assert {i.batch_size for i in items if i.kind in plan.EPOCH_KINDS} == {512}
    paired = {(i.kind, i.batch_size) for i in items if i.kind.startswith("paired_")}
    assert paired == {("paired_step", 512), ("paired_epoch", 512)}  # at the epoch batch sizes only
    assert {plan.priority(k, "cnn", b, settings) for k, b in paired} == {1}
    none = Settings(batch_sizes=(512,), pair_rounds=0)
    assert not any(i.kind.startswith("paired_") for i in plan.build_plan(none, None, {}, "cpu", {"results": []}))
    assert not any(i.kind.startswith("paired_") for i in plan.build_plan(settings, None, {}, None, {"results": []}))
    assert {i.network for i in items if i.kind == "torch_tuned_compiled" and i.batch_size == 512} == set(
        plan.SMALL_NETWORKS + ("resnet18", "resnet101")
    )
    assert plan.SMALL_NETWORKS == ("cnn", "cnn_deep", "resnet", "fast")
