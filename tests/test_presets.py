"""jaxmnist.presets: the experiments as data, the lists derived from them, config checks, the CLI mapping."""


import numpy as np
import pytest

from jaxmnist import augment, optim, presets
from jaxmnist import data as data_lib
from jaxmnist.cli import UsageError
from jaxmnist.presets import MODEL_PRESET, NETWORKS, PRESETS, Config, interim_steps


def test_every_network_has_a_preset_and_every_preset_a_network():
    assert {c.model for c in PRESETS.values()} == set(NETWORKS)
    assert list(MODEL_PRESET) == list(NETWORKS)  # `--model NAME` works for every network, in the blog's order
    assert MODEL_PRESET["cnn"] == "cnn_tb"  # the blog's last experiment with its first network (§3)


def test_a_project_recipe_for_a_blog_network_does_not_take_over_its_model_flag():
    recipe = PRESETS["fast"].replace(model="cnn_deep")  # e.g. a `best` preset: the fast recipe on §4's network
    chosen = presets.model_presets({**PRESETS, "best": recipe})
    assert chosen["cnn_deep"] == "cnn_deep" and chosen["fast"] == "fast"
    assert presets.model_presets({"best": recipe})["cnn_deep"] == "best"  # the only preset of its network
    # Of this project's presets of its own network, the first: `--model fast` stays fast when sprint follows it.
    assert PRESETS["sprint"].model == "fast" and MODEL_PRESET["fast"] == "fast"
    assert presets.model_presets({"sprint": PRESETS["sprint"], "fast": PRESETS["fast"]})["fast"] == "sprint"


def parse(*argv):
    return presets.config_from_args(presets.trainer_parser("prog", "test").parse_args(list(argv)))


def test_model_picks_its_preset_and_flags_override():
    assert parse("--model", "resnet", "--epochs", "3") == ("resnet", PRESETS["resnet"].replace(epochs=3))
    preset, config = parse("--preset", "cnn_deep", "--no-plateau", "--blog-quirks")
    assert (config.plateau, config.augment, config.blog_quirks, config.optimizer) == (False, True, True, "rmsprop")
    assert parse() == ("cnn_tb", PRESETS["cnn_tb"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "vgg"], "unknown model 'vgg'"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--optimizer", "adam"], "unknown optimizer 'adam'"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--eval-batch-size", "-1"], "--eval-batch-size must be > 0"),
        (["--val-size", "-1"], "--val-size must be >= 0"),
        (["--momentum", "1"], "--momentum must be in [0, 1)"),
        (["--epochs", "1.5"], "invalid int value"),
        (["--schedule", "cosine"], "unknown schedule 'cosine'; choose from constant, onecycle"),
        (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
        (["--warmup", "-0.1"], "--warmup must be in [0, 1)"),
        (["--ema", "1"], "--ema must be in [0, 1)"),
        (["--elastic-alpha", "-1"], "--elastic-alpha must be >= 0"),
        (["--elastic-alpha", "34", "--elastic-sigma", "7"], "--elastic-sigma must be in (0, 6.875)"),
        (["--weight-decay", "-1", "--optimizer", "adamw"], "--weight-decay must be >= 0"),
        (["--weight-decay", "0.1"], "--weight-decay is AdamW's; sgd takes none"),
        (["--preset", "fast", "--plateau"], "--plateau and --schedule onecycle both set the learning rate"),
        (["--evals-per-epoch", "0"], "--evals-per-epoch must be > 0"),
        (["--evals-per-epoch", "2", "--blog-quirks"], "--evals-per-epoch: the blog's loop (--blog-quirks) evaluates"),
        (["--preset", "fast", "--scale", "1"], "--scale must be in [0, 1), got 1"),
        (["--preset", "fast", "--scale", "0.1", "--no-augment"], "--scale sets the §4 augmentation's ranges; it needs"),
        (["--preset", "cnn_deep", "--scale", "0.1", "--blog-quirks"], "--scale 0.1 is not the blog's"),
        (["--preset", "fast", "--degrees", "20", "--no-augment"], "--degrees sets the §4 augmentation's ranges"),
        (["--preset", "cnn_deep", "--translate", "0.2", "--blog-quirks"], "--translate 0.2 is not the blog's"),
        (["--preset", "fast", "--translate", "1.5"], "--translate must be in [0, 1], got 1.5"),
        (["--preset", "fast", "--degrees", "-1"], "--degrees must be in [0, 180], got -1"),
    ],
)
def test_bad_settings_are_usage_errors(argv, message):
    with pytest.raises(UsageError) as e:
        parse(*argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_interim_steps_split_the_epoch_evenly_and_never_at_its_ends():
    assert interim_steps(PRESETS["fast"], 234) == []  # one evaluation per epoch: at its end only
    assert interim_steps(PRESETS["fast"].replace(evals_per_epoch=4), 1875) == [468, 937, 1406]
    assert interim_steps(PRESETS["fast"].replace(evals_per_epoch=8), 3) == [1, 2]  # fewer steps than evaluations


def test_plateau_arguments_build_the_rule_of_section_4():
    config = PRESETS["cnn_deep"]
    args = presets.plateau_arguments(config)
    assert args == {"mode": "max", "factor": 0.5, "patience": 3, "threshold": 5e-5, "threshold_mode": "rel"}
    rule = optim.ReduceLROnPlateau(config.lr, **args)
    lrs = [rule.step(acc) for acc in (98.0, 98.0, 98.0, 98.0, 98.0)]  # no improvement: the 4th bad epoch halves
    assert lrs == [1e-3, 1e-3, 1e-3, 1e-3, 5e-4]


def test_quirks_follow_where_the_blog_called_eval():
    """Quirk 1 (eval-mode training from epoch 2) only where test() calls model.eval() (§3 on); quirk 4 (test
    batches on their own statistics) only where it never does (§1/§2); neither without --blog-quirks."""
    for name, config in PRESETS.items():
        quirky = config.replace(blog_quirks=True)
        assert not presets.trains_in_eval_mode(config, 5) and not presets.tests_with_batch_statistics(config)
        assert not presets.trains_in_eval_mode(quirky, 0)  # epoch 1 trains in train mode everywhere
        assert presets.trains_in_eval_mode(quirky, 1) == (name not in ("cnn_cpu", "cnn_gpu")), name
        assert presets.tests_with_batch_statistics(quirky) == (name in ("cnn_cpu", "cnn_gpu")), name


def fake_dataset(n=50):
    images = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    empty = np.zeros((0, 28, 28), np.uint8)
    return data_lib.Dataset("mnist", images, np.arange(n) % 10, empty, np.zeros(0, np.int64), "fake")


def test_split_train_holds_out_a_seeded_validation_split():
    data = fake_dataset()
    (x, y), val = presets.split_train(data, Config(train_size=40, val_size=10, seed=3))
    assert len(y) == 30 and len(val[1]) == 10
    train_ids, val_ids = set(x[:, 0, 0].tolist()), set(val[0][:, 0, 0].tolist())
    assert not train_ids & val_ids and train_ids | val_ids == set(range(40))  # the first 40, split disjointly
    assert list(x[:, 0, 0]) == sorted(train_ids)  # training images keep their order
    (_, _), val_again = presets.split_train(data, Config(train_size=40, val_size=10, seed=3))
    (_, _), val_other = presets.split_train(data, Config(train_size=40, val_size=10, seed=4))
    assert np.array_equal(val[0], val_again[0]) and not np.array_equal(val[0], val_other[0])
    assert presets.split_train(data, Config())[1] is None
    with pytest.raises(UsageError, match="--val-size 50 leaves no training images"):
        presets.split_train(data, Config(val_size=50))


def test_the_default_ranges_are_section_4s():
    """Config's translate and degrees are augment.Warp's defaults (the blog's §4), so a run without the flags
    augments as the blog does: both trainers take config.warp."""
    assert Config().warp == augment.Warp() == augment.Warp(translate=0.1, degrees=10.0, scale=0.0)


def test_describe_names_the_experiment():
    assert presets.describe(PRESETS["cnn_deep"].replace(blog_quirks=True)) == (
        "cnn_deep, batch 512, RMSprop lr 0.001, alpha 0.99, momentum 0.5, 100 epochs, augmentation, "
        "ReduceLROnPlateau, blog quirks"
    )
    assert presets.describe(PRESETS["best"].replace(scale=0.1)).endswith("augmentation with scales of ±0.1")
    assert presets.describe(PRESETS["best"].replace(translate=0.2, degrees=20.0)).endswith(
        "augmentation with shifts of ±0.2, rotations of ±20°"
    )
