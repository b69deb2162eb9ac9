"""scripts/benchlib/report.py: the tables name the winner, failures, the device and the run's state."""

from bench_docs import bench_doc

from benchlib import report


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
    text = report.report(bench_doc(results))
    assert "| cnn | 512 | 2.60 | 1.00 | 2.00 | 256000 |" in text
    assert "JAX 4.00x faster" in text and "torch 2.00x faster" in text
    assert "driver 999.1" in text and "PARTIAL" in text
    assert "| resnet101 | 4096 |" in text and "oom" in text and "failed (see notes)" in text
    assert "torch.compile failed for cnn" in text and "H100 SXM" in text
    assert report.ratio_text(None, 1.0) == "-"


def test_profile_report_rows():
    rows = [{"op": "conv1 fwd", "shape": "x[B,28,28,1]", "jax_ms": 2.0, "jax_min_ms": 1.5, "torch_ms": 1.0,
             "torch_min_ms": 0.9}, {"op": "whole", "shape": "B=512", "jax_ms": 9.0, "jax_min_ms": 8.0}]  # fmt: skip
    lines = report.profile_report(rows).splitlines()
    assert lines[2] == "| conv1 fwd | x[B,28,28,1] | 2.00 (1.50) | 1.00 (0.90) |"
    assert lines[3] == "| whole | B=512 | 9.00 (8.00) | - |"


def test_epoch_table_sets_the_epochs_step_against_tuned_torchs():
    """The trainer's chunks allocate their temporaries once for several steps: the epoch's time per step is its own
    column, compared with tuned torch's step (the faster of eager and compiled)."""
    results = [
        {"kind": "jax_epoch", "network": "cnn_deep", "batch_size": 512, "status": "ok", "step_ms": 487.0,
         "full_epoch_s_estimate": 57.0, "compile_s": 18.0},
        {"kind": "torch_blog_epoch", "network": "cnn_deep", "batch_size": 512, "status": "ok",
         "full_epoch_s_estimate": 62.7, "test_images_per_s": 3058.0},
        {"kind": "torch_tuned", "network": "cnn_deep", "batch_size": 512, "status": "ok", "step_ms": 451.0},
        {"kind": "torch_tuned_compiled", "network": "cnn_deep", "batch_size": 512, "status": "ok", "step_ms": 974.0},
    ]  # fmt: skip
    rows = [line for line in report.report(bench_doc(results)).splitlines() if line.startswith("| cnn_deep |")]
    assert len(rows) == 2  # the step table's, then the epoch table's
    assert "| 57.00 | 18.00 | 62.70 | JAX 1.10x faster | 487.00 | torch 1.08x faster |" in rows[1]


def test_paired_table_gives_the_ratio_its_interval_and_verdict():
    results = [
        {"kind": "paired_step", "network": "resnet", "batch_size": 512, "status": "ok", "rounds": 10,
         "step_ms": 600.0, "torch_step_ms": 620.0, "ratio": 0.968, "ratio_interval_95": [0.94, 1.01],
         "verdict": "level"},
        {"kind": "paired_epoch", "network": "resnet", "batch_size": 512, "status": "error", "reason": "boom"},
    ]  # fmt: skip
    rows = [line for line in report.report(bench_doc(results)).splitlines() if line.startswith("| resnet |")]
    assert rows == [
        "| resnet | 512 | step | 10 | 600.00 | 620.00 | 0.968 | 0.940-1.010 | level |",
        "| resnet | 512 | epoch | - | error | - | - | - | - |",
    ]


def test_autotune_table_puts_level_0_beside_the_default():
    step = {"network": "cnn", "batch_size": 512, "status": "ok"}
    results = [
        {**step, "kind": "jax_step", "compile_s": 12.0, "step_ms": 0.5},
        {**step, "kind": "jax_step_autotune0", "compile_s": 3.0, "step_ms": 0.6, "xla_options": {"x": 0}},
        {**step, "kind": "jax_step", "network": "resnet", "compile_s": 30.0, "step_ms": 5.0},
        {**step, "kind": "jax_step_autotune0", "network": "resnet", "status": "error", "reason": "boom"},
    ]
    text = report.report(bench_doc(results))
    assert "| cnn | 512 | 12.00 | 3.00 | 0.50 | 0.60 | 0.25 | 1.20 |" in text
    assert "| resnet | 512 | 30.00 | error | 5.00 | error | - | - |" in text
    assert "Autotuning." not in report.report(bench_doc(results[:1]))  # no such measurement: no table
    results[0]["session"] = {"created": "earlier", "commit": "abc"}  # the default kept from another run (--resume)
    assert "| cnn | 512 | 12.00 | 3.00 | 0.50 | 0.60 | 0.25* | 1.20* |" in report.report(bench_doc(results))
