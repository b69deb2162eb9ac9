"""The benchmark tooling: a smoke run of scripts/bench.py --quick on the CPU, and its pieces. No timing assertions."""

import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from jaxmnist import bench

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.realdata
def test_quick_cli_writes_json_and_table(tmp_path, mnist):
    """`--quick` end to end (cnn only, to stay well under a minute on a loaded 2-core box; the CLI's own --quick
    adds resnet): every measurement runs, the JSON holds raw timings, the table names the winner."""
    pytest.importorskip("torch")
    out = tmp_path / "quick.json"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--networks", "cnn", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["finished"] and doc["settings"]["quick"]
    kinds = {r["kind"]: r for r in doc["results"]}
    assert set(kinds) == {
        "jax_step",
        "torch_tuned",
        "torch_blog_step",
        "jax_epoch",
        "jax_eval",
        "torch_blog_epoch",
        "torch_tuned_eval",
    }, kinds
    assert all(r["status"] == "ok" for r in doc["results"]), [r.get("reason") for r in doc["results"]]
    step = kinds["jax_step"]
    assert step["flops_per_image"] > 1e6 and step["step"]["n"] >= 2 and step["compile_s"] > 0
    assert kinds["torch_blog_step"]["num_workers"] == 0
    assert doc["env"]["versions"]["jax"] == jax.__version__ and doc["env"]["commit"]
    assert "| cnn | 8 |" in proc.stdout and "QUICK SMOKE RUN" in proc.stdout
    assert "JAX " in proc.stdout and "x faster" in proc.stdout
    print(f"quick run: {time.perf_counter() - t0:.1f} s")
    # --table reprints a saved run without measuring anything.
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--table", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0 and "| cnn | 8 |" in table.stdout


def test_bad_arguments_fail_cleanly():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--batch-sizes", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "positive integers" in proc.stderr


def test_measure_takes_warmup_then_bounded_samples():
    calls = []
    t = bench.measure(lambda: calls.append(1), lambda _: None, warmup=2, iters=7, max_s=10.0)
    assert len(calls) == 9 and t.summary()["n"] == 7 and t.median >= 0
    assert bench.pipelined_count(0.5, 50, 3.0) == 6 and bench.pipelined_count(1e-9, 50, 3.0) == 50


def test_xla_flops_counts_a_matmul():
    a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
    lowered = jax.jit(lambda a, b: a @ b).lower(a, b)
    assert bench.xla_flops(lowered) == 2 * 8 * 16 * 4
    assert bench.xla_flops(object()) is None


@pytest.mark.parametrize(
    "kind, key",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("Tesla T4", None),
    ],
)
def test_peak_table_lookup(kind, key):
    assert bench.peak_key(kind) == key
    peak = bench.device_peak("gpu", kind)
    assert (peak["tf32"] is not None) == (key is not None)
    if key:
        assert peak["bf16"] == pytest.approx(2 * peak["tf32"], rel=0.01)  # dense bf16 is twice dense TF32


def test_cpu_peak_is_labelled_an_estimate():
    peak = bench.device_peak("cpu", "cpu")
    assert peak["key"] == "cpu" and "estimate" in peak["source"] and peak["cpu"]["estimate"]


def _doc(results, platform="gpu"):
    settings = bench.Settings(batch_sizes=(512, 64), num_workers=4, pin_memory=True)
    env = {
        "platform": platform,
        "device_kind": "NVIDIA H100 80GB HBM3",
        "versions": {"jax": "x", "flax": "y"},
        "commit": "abc",
        "torch": {"version": "t", "device": "cuda"},
        "load_avg_start": (0.1, 0.1, 0.1),
        "nvidia_smi": {"gpus": [{"driver_version": "999.1"}]},
    }
    doc = bench.new_doc(settings, env, bench.device_peak(platform, env["device_kind"]))
    doc["results"] = results
    return doc


def test_report_states_the_winner_and_failures():
    results = [
        {
            "kind": "jax_step",
            "network": "cnn",
            "batch_size": 512,
            "status": "ok",
            "step_ms": 2.0,
            "compile_s": 1.0,
            "images_per_s": 256000.0,
            "flops_per_image": 2.6e6,
            "achieved_tflops": 0.67,
            "fraction_of_peak": 0.00135,
            "peak_kind": "tf32",
        },
        {"kind": "torch_blog_step", "network": "cnn", "batch_size": 512, "status": "ok", "step_ms": 8.0},
        {"kind": "torch_tuned", "network": "cnn", "batch_size": 512, "status": "ok", "step_ms": 1.0, "mode": "eager"},
        {
            "kind": "torch_tuned_compiled",
            "network": "cnn",
            "batch_size": 512,
            "status": "ok",
            "step_ms": 1.0,
            "mode": "eager",
            "compile_error": "BackendCompilerFailed: no gcc",
        },
        {
            "kind": "jax_step",
            "network": "resnet101",
            "batch_size": 4096,
            "status": "oom",
            "reason": "RESOURCE_EXHAUSTED: out of memory",
        },
        {"kind": "jax_epoch", "network": "cnn", "batch_size": 512, "status": "skipped", "reason": "budget"},
    ]
    text = bench.report(_doc(results))
    assert "| cnn | 512 | 2.60 | 1.00 | 2.00 | 256000 |" in text
    assert "JAX 4.00x faster" in text and "torch 2.00x faster" in text
    assert "driver 999.1" in text and "PARTIAL" in text
    assert "| resnet101 | 4096 |" in text and "oom" in text and "failed (see notes)" in text
    assert "torch.compile failed for cnn" in text and "H100 SXM" in text
    assert bench.ratio_text(None, 1.0) == "-"


def test_runner_skips_over_budget_and_records_errors(tmp_path):
    doc = _doc([])
    out = tmp_path / "r.json"
    runner = bench.Runner(doc, out, budget_s=1e-9, log=lambda m: None)
    rec = runner.run(bench.Item("jax_step", "cnn", 8, lambda: {"step_ms": 1.0}))
    assert rec["status"] == "skipped" and "budget" in rec["reason"]
    runner.budget_s = None

    def oom():
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")

    def broken():
        raise ValueError("nope")

    assert runner.run(bench.Item("jax_step", "cnn", 16, oom))["status"] == "oom"
    assert runner.run(bench.Item("jax_step", "cnn", 32, broken))["status"] == "error"
    assert runner.run(bench.Item("jax_step", "cnn", 64, lambda: {"compile_s": 0.0}))["status"] == "ok"
    saved = json.loads(out.read_text())
    assert [r["status"] for r in saved["results"]] == ["skipped", "oom", "error", "ok"]
    # A kind measured on one network calibrates the estimate for a heavier one.
    assert runner.estimate(bench.Item("jax_step", "resnet101", 64, lambda: {})) >= runner.estimate(
        bench.Item("jax_step", "cnn", 64, lambda: {})
    )


def test_plan_orders_core_measurements_first(mnist):
    settings = bench.Settings(batch_sizes=(512, 64), torch_compile=True)
    plan = bench.build_plan(settings, mnist, {}, "cpu", {"results": []})
    first = [(i.kind, i.network, i.batch_size) for i in plan[:4]]
    assert first == [
        ("jax_step", "cnn", 512),
        ("torch_tuned", "cnn", 512),
        ("torch_blog_step", "cnn", 512),
        ("torch_tuned_compiled", "cnn", 512),
    ]
    tiers = [bench.priority(i.kind, i.network, i.batch_size, settings) for i in plan]
    assert tiers == sorted(tiers)
    assert not any(i.kind == "jax_step_bf16" for i in plan)  # CPU: bf16 is n/a
    assert {i.batch_size for i in plan if i.kind in bench.EPOCH_KINDS} == {512}


def test_conv_sliced_matches_xla_convolution(rng):
    x = jnp.asarray(rng.standard_normal((3, 12, 12, 4), dtype="float32"))
    k = jnp.asarray(rng.standard_normal((5, 5, 4, 6), dtype="float32"))
    ref = lambda x, k: jax.lax.conv_general_dilated(
        x,
        k,
        (1, 1),
        "VALID",  # noqa: E731
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    assert jnp.allclose(bench.conv_sliced(x, k), ref(x, k), atol=1e-4)
    loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))  # noqa: E731
    for a, b in zip(jax.grad(loss(bench.conv_sliced), (0, 1))(x, k), jax.grad(loss(ref), (0, 1))(x, k)):
        assert jnp.allclose(a, b, atol=1e-3)
