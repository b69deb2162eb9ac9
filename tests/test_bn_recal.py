"""scripts/bn_recal.py: BatchNorm's statistics recomputed for the evaluated weights, read beside a run's own."""

import json

import jax
import numpy as np

import bn_recal
from jaxmnist import engine, models, trainer


def test_population_stats_are_the_batches_mean_and_unbiased_variance():
    """The first BatchNorm's recomputed statistics equal its convolution's output moments over each batch (mean and
    unbiased variance over images and pixels), averaged over the batches: the zeros-and-momentum readout is exact."""
    model = models.get_model("fast")
    variables = engine.init_variables(model, jax.random.PRNGKey(0))
    batches = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 28, 28, 1))
    stats = bn_recal.population_stats(models.Apply(model), variables, batches)["features_1"]
    kernel = variables["params"]["features_0"]["kernel"]
    out = jax.vmap(lambda x: jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                                          dimension_numbers=("NHWC", "HWIO", "NHWC")))(batches)
    n = 8 * 28 * 28
    mean, var = out.mean((1, 2, 3)), out.var((1, 2, 3)) * n / (n - 1)
    np.testing.assert_allclose(stats["mean"], mean.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"], var.mean(0), rtol=1e-4)


def test_without_an_average_the_evaluated_weights_are_the_last(mnist, tmp_path):
    """With no weight average (--ema 0) the run evaluates its last weights: `raw` reads what the run read, and the
    statistics recomputed for the evaluated weights are those recomputed for the last ones."""
    out = tmp_path / "out.json"
    flags = ["--preset", "cnn_cpu", "--ema", "0", "--train-size", "1500", "--val-size", "500", "--epochs", "1",
             "--evals-per-epoch", "2", "--batch-size", "64", "--seed", "3", "--chunk-steps", "1",
             "--no-report"]  # fmt: skip  (the blog's small cnn: compiled in 0.6x the sprint network's time)
    compile_programs = trainer.compile_programs
    assert bn_recal.main([str(out), *flags]) == 0
    assert trainer.compile_programs is compile_programs  # the trainer is left as it was
    result = json.loads(out.read_text())
    rows = result["evaluations"]
    assert [r["step"] for r in rows] == [7, 15] and result["convolutions"] and result["flags"] == flags
    for r in rows:
        assert r["raw"] == r["ema"] and r["raw_recal_clean"] == r["ema_recal_clean"], r
        assert 10 < r["ema_recal_aug"] <= 100


def test_without_val_size_it_says_how_to_run_it(capsys):
    assert bn_recal.main(["out.json", "--preset", "sprint"]) == 2
    assert "with --val-size" in capsys.readouterr().err
