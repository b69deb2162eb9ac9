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


def test_the_average_is_read_apart_from_the_last_weights_which_train_alike(mnist, tmp_path):
    """Without a weight average (--ema 0) the run evaluates its last weights: `raw` reads what the run read, and the
    statistics recomputed for the evaluated weights are those for the last ones. With one (--ema 0.9) the last
    weights train to the same accuracies (the average changes no step), and the average reads otherwise."""
    flags = ["--preset", "cnn_cpu", "--train-size", "1500", "--val-size", "500", "--epochs", "1",
             "--evals-per-epoch", "2", "--batch-size", "64", "--seed", "3", "--chunk-steps", "1",
             "--no-report"]  # fmt: skip  (the blog's small cnn: compiled in 0.6x the sprint network's time)
    compile_programs, rows = trainer.compile_programs, {}
    for ema in ("0", "0.9"):
        assert bn_recal.main([str(tmp_path / f"{ema}.json"), *flags, "--ema", ema]) == 0
        result = json.loads((tmp_path / f"{ema}.json").read_text())
        assert result["convolutions"] and result["flags"] == [*flags, "--ema", ema]
        rows[ema] = result["evaluations"]
        assert [r["step"] for r in rows[ema]] == [7, 15]
    assert trainer.compile_programs is compile_programs  # the trainer is left as it was
    for alone, averaged in zip(rows["0"], rows["0.9"]):
        assert alone["raw"] == alone["ema"] and alone["raw_recal_clean"] == alone["ema_recal_clean"], alone
        assert (averaged["raw"], averaged["raw_recal_clean"]) == (alone["raw"], alone["raw_recal_clean"])
    assert any(r["ema"] != r["raw"] for r in rows["0.9"]), rows["0.9"]


def test_it_refuses_what_it_cannot_run_in_one_line(tmp_path, capsys):
    """No --val-size, several seeds, an output it cannot write: one line and exit 2, before anything trains."""
    for argv, says in [(["out.json", "--preset", "sprint"], "with --val-size"),
                       (["out.json", "--val-size=100", "--seeds", "0,1"], "give --seed, not --seeds"),
                       ([str(tmp_path), "--val-size", "100"], "cannot write")]:  # fmt: skip
        assert bn_recal.main(argv) == 2
        assert says in capsys.readouterr().err
