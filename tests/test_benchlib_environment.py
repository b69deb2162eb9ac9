"""scripts/benchlib/environment.py: device peaks, the CPU estimate, utilisation, the captured environment."""

import jax
import pytest

from benchlib import environment


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
    assert environment.peak_key(kind) == key
    peak = environment.device_peak("gpu", kind)
    assert (peak["tf32"] is not None) == (key is not None)
    if key:
        assert peak["bf16"] == pytest.approx(2 * peak["tf32"], rel=0.01)  # dense bf16 is twice dense TF32


def test_cpu_peak_is_labelled_an_estimate():
    peak = environment.device_peak("cpu", "cpu")
    assert peak["key"] == "cpu" and "estimate" in peak["source"] and peak["cpu"]["estimate"]


@pytest.mark.parametrize(
    "model, family, flags, per_cycle",
    [
        ("AMD EPYC", "25", "fma avx2", 32),  # Zen 3
        ("AMD EPYC", "25", "fma avx2 avx512f", 32),  # Zen 4: AVX-512 at the AVX2 rate
        ("AMD EPYC", "26", "fma avx2 avx512f avx512_bf16", 64),  # Zen 5: full-width 512-bit units
        ("Intel(R) Xeon(R) Processor", "6", "fma avx2 avx512f amx_tile", 64),
        ("Intel(R) Core(TM) i7", "6", "sse4_2 avx", 8),
    ],
)
def test_flop_per_cycle_by_vector_width(model, family, flags, per_cycle):
    assert environment.flop_per_cycle(model, family, flags) == per_cycle


def test_utilisation_against_the_peak():
    fields = environment.utilisation(2e6, 1e6, 4.0, "tf32")  # 2 MFLOP x 1 M images/s = 2 TFLOP/s of 4
    assert fields == {"achieved_tflops": 2.0, "peak_tflops": 4.0, "peak_kind": "tf32", "fraction_of_peak": 0.5}
    assert environment.utilisation(None, 1e6, 4.0, "tf32") == {}
    assert environment.peak_for({"bf16": 9, "tf32": 5, "fp32": 1}, "gpu", "f32") == (5, "tf32")
    assert environment.peak_for({"bf16": 9, "tf32": 5, "fp32": 1}, "cpu", "f32") == (1, "fp32")


def test_environment_names_versions_and_commit():
    env = environment.environment(None)
    assert env["platform"] == jax.devices()[0].platform and env["versions"]["jax"] and env["commit"]
    assert "torch" not in env  # not asked for
    assert environment.first_line(ValueError("one\ntwo")) == "ValueError: one"


def test_environment_records_the_vector_isa_caps(monkeypatch):
    """A run that emulates an older CPU (benchmarks/README.md, "A Zen 5 ..., and AVX2 emulated on it") says so."""
    import torch

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    env = environment.environment("cpu")
    assert env["env_vars"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""
    assert environment.isa_caps() == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
