"""scripts/benchlib/plan.py: the plan's order, the budget runner's skips, failures and calibration."""

import json

from bench_docs import bench_doc

from benchlib import plan, report
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
    assert not any(i.kind in ("jax_step_bf16", "jax_step_autotune0") for i in items)  # CPU: bf16, autotuning n/a
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


def test_a_resumed_run_keeps_what_the_same_device_measured_and_measures_the_rest(tmp_path):
    out = tmp_path / "gpu.json"
    first = bench_doc([])
    runner = plan.Runner(first, out, budget_s=None, log=lambda m: None)
    runner.run(plan.Item("jax_step", "cnn", 512, lambda: {"step_ms": 1.0, "compile_s": 4.0}))

    def broken():
        raise ValueError("nope")

    def oom():
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")

    runner.run(plan.Item("torch_tuned", "cnn", 512, broken))
    runner.run(plan.Item("jax_step", "resnet101", 4096, oom))
    second = bench_doc([])
    second["settings"]["budget_s"] = 200.0  # how much to measure may differ; how to measure may not
    kept, why_not = plan.earlier_results(out, second)
    # Errors are measured again (a fix may have come since); out of memory is kept: it would fail again.
    assert why_not is None and [(r["kind"], r["status"]) for r in kept] == [("jax_step", "ok"), ("jax_step", "oom")]
    assert kept[0]["session"] == {"created": first["created"], "commit": "abc"}
    second["results"] = kept
    kept[0]["wall_s"] = 10.0  # as if measured on a GPU: 4 s of compiling, 6 s of steps
    measured = []
    runner = plan.Runner(second, out, budget_s=None, log=lambda m: None)
    assert runner.run(plan.Item("jax_step", "cnn", 512, lambda: measured.append(1) or {}))["step_ms"] == 1.0
    runner.run(plan.Item("torch_tuned", "cnn", 512, lambda: measured.append(2) or {"step_ms": 2.0}))
    assert runner.run(plan.Item("jax_step", "resnet101", 4096, lambda: measured.append(3) or {}))["status"] == "oom"
    runner.run(plan.Item("torch_tuned", "cnn", 512, lambda: measured.append(4) or {}))  # asked twice: measured again
    assert measured == [2, 4]  # only what the first run did not measure
    saved = [r["kind"] for r in json.loads(out.read_text())["results"]]
    assert saved == ["jax_step", "jax_step", "torch_tuned", "torch_tuned"]
    assert "kept (--resume: the same device, versions, driver, precision settings, environment variables and " \
        f"settings): 2 measurement(s) from the run of " \
        f"{first['created']} (commit abc)" in report.report(second)
    # The kept measurement's cost calibrates the estimates: at twice the batch, its compile once and its steps twice.
    assert runner.estimate(plan.Item("jax_step", "cnn", 1024, lambda: {})) == 4.0 + 2 * 6.0
    other_device, other_settings, other_tf32, other_flags = (bench_doc([]) for _ in range(4))
    other_device["env"]["device_kind"] = "NVIDIA H200"
    other_settings["settings"]["iters"] = 7
    other_tf32["env"]["torch"]["cudnn_allow_tf32"] = False
    other_flags["env"]["env_vars"] = {"XLA_FLAGS": "--xla_gpu_autotune_level=0"}
    for doc, why in ((other_device, "another device_kind"), (other_settings, "other settings"),
                     (other_tf32, "another torch"), (other_flags, "another env_vars")):  # fmt: skip
        assert plan.earlier_results(out, doc)[0] == [] and why in plan.earlier_results(out, doc)[1]
    assert plan.earlier_results(tmp_path / "none.json", second) == ([], f"no {tmp_path / 'none.json'} yet")


def test_on_a_gpu_the_step_without_autotuning_joins_the_first_batch_size(monkeypatch):
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # planning only: nothing compiles
    settings = Settings(batch_sizes=(512, 64), networks=("cnn", "resnet"))
    items = plan.build_plan(settings, None, {}, None, {"results": []})
    untuned = [(i.network, i.batch_size) for i in items if i.kind == "jax_step_autotune0"]
    assert untuned == [("cnn", 512), ("resnet", 512)]
    assert {plan.priority("jax_step_autotune0", n, b, settings) for n, b in untuned} == {1}
