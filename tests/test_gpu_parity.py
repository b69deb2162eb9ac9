"""scripts/gpu_parity.py on the CPU: the bridge's JAX network errs from the float64 reference as torch_ref's does,
predicts as it does, and without TF32 (a GPU's) the 'fp32' variants are the defaults. Real MNIST, a reduced run."""

import json

import gpu_parity
import pytest


def test_on_a_cpu_jax_errs_as_torch_does_and_predicts_the_same(mnist, tmp_path, capsys):
    out = tmp_path / "parity.json"
    assert gpu_parity.main(["--networks", "cnn", "--images", "300", "--steps", "4", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["env"]["platform"] == "cpu" and [r["network"] for r in doc["results"]] == ["cnn"]
    for r in doc["results"]:
        jax_err, torch_err = r["jax"]["max_abs"], r["torch"]["max_abs"]
        # Measured (Zen 4): 7.7e-07 against 7.5e-07 (cnn; resnet 9.8e-07 against 1.2e-06).
        assert 0 < jax_err <= max(2 * torch_err, 1e-6) and jax_err < 1e-4, r
        assert r["jax_vs_torch_predictions_differ"] == 0 and r["jax"]["predictions_changed"] == 0
        assert abs(r["jax_fp32"]["max_abs"] - jax_err) < 1e-7 and r["torch_fp32"] == r["torch"]  # no TF32 here
        assert r["reference_accuracy"] > 20  # 4 steps of 64: better than chance, so the predictions mean something
    assert "| cnn | 300 (" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [(["--networks", "vgg"], "unknown network(s) vgg"),
                                           (["--images", "0"], "--images must be 1-10000")])  # fmt: skip
def test_bad_arguments_fail_in_one_line(argv, message, capsys):
    assert gpu_parity.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
