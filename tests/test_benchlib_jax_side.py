"""scripts/benchlib/jax_side.py: the JAX measurements run jaxmnist's own programs (tiny, fake data)."""

import numpy as np
import pytest
from helpers import fake_data

from benchlib import jax_side
from benchlib.settings import quick_settings


def test_epoch_and_eval_count_what_they_ran():
    data = fake_data(n=40)
    settings = quick_settings(train_size=36, eval_size=10, epoch_repeats=2, chunk_steps=2)
    epoch = jax_side.jax_epoch("cnn", 8, data, settings)
    assert (epoch["steps"], epoch["images"], epoch["chunks"]) == (4, 32, [2, 2])  # 36 // 8 steps, tail dropped
    assert len(epoch["epoch_s_each"]) == 2 and epoch["full_epoch_s_estimate"] == epoch["epoch_s"] * 5 / 4
    seeds = jax_side.jax_epoch("cnn", 8, data, settings, n_seeds=3)  # three vmapped seeds
    assert seeds["seeds"] == 3 and seeds["seed_epoch_s"] == seeds["full_epoch_s_estimate"] / 3
    assert seeds["images_per_s"] == 3 * 32 / seeds["epoch_s"]
    evaluation = jax_side.jax_eval("cnn", 4, data, settings)
    assert evaluation["images"] == 10 and evaluation["pass"]["n"] >= 2


def test_step_reports_flops_and_a_finite_loss():
    step = jax_side.jax_step("cnn", 8, fake_data(), quick_settings(), peak={"fp32": 1.0, "tf32": 1.0, "bf16": 1.0})
    assert np.isfinite(step["last_loss"]) and step["dtype"] == "f32"
    assert 2e6 < step["flops_per_image"] < 4e6  # the cnn: ~2.6 MFLOP per image, forward and backward
    assert step["peak_kind"] in ("fp32", "tf32") and step["fraction_of_peak"] > 0
    assert step["xla_options"] == {}


def test_a_step_compiles_with_the_xla_options_it_is_given_and_records_them():
    """jax_step_autotune0's options reach XLA: a name XLA does not know fails the compile (on a CPU, where the GPU
    option itself changes nothing, it still has to be accepted)."""
    peak = {"fp32": 1.0, "tf32": 1.0, "bf16": 1.0}
    step = jax_side.jax_step("cnn", 8, fake_data(), quick_settings(), peak, options=jax_side.NO_AUTOTUNING)
    assert step["xla_options"] == {"xla_gpu_autotune_level": 0} and np.isfinite(step["last_loss"])
    with pytest.raises(Exception, match="No such compile option"):
        jax_side.jax_step("cnn", 8, fake_data(), quick_settings(), peak, options={"xla_gpu_autotune_levels": 0})
