"""scripts/ablation.py: its table groups runs by round and variant (no training: the rows are made up); its studies
name flags the trainer knows and a preset that exists."""

import pytest

import ablation
from jaxmnist import presets, train


def test_table_groups_seeds_and_averages_validation_accuracy():
    zen3 = "AMD EPYC, family 25 model 1 stepping 1, avx2+fma, 2 cores"
    xeon = "Intel(R) Xeon(R) Processor, family 6 model 167 stepping 1, avx2+fma+avx512f, 2 cores"

    def row(round_, variant, seed, val, wall, machine=zen3, others_cpu=0.01):
        return {"round": round_, "variant": variant, "flags": ablation.STUDIES["fast"].variants.get(variant, []),
                "seed": seed, "val_acc": val, "test_acc": 99.0, "wall_s": wall, "machine": machine,
                "others_cpu": others_cpu}  # fmt: skip

    rows = [row(2, "base", 1, 99.40, 200.0), row(2, "base", 0, 99.20, 220.0), row(2, "epochs_10", 1, 99.5, 90.0),
            row(2, "epochs_10", 0, 99.4, 150.0, xeon), row(2, "no_augment", 0, 99.3, 180.0, others_cpu=0.4)]  # fmt: skip
    lines = ablation.table(rows).splitlines()
    assert lines[2] == "| 2 | base | (the preset) | 99.20, 99.40 | 99.30 | 210 s | AMD 25/1 | 99.00 |"
    # Two machines: no mean wall time, each seed's beside its machine
    assert lines[3] == "| 2 | epochs_10 | --epochs 10 | 99.40, 99.50 | 99.45 | 150 s, 90 s | Intel 6/167, AMD 25/1 | 99.00 |"
    assert lines[4].startswith("| 2 | no_augment | --no-augment | 99.30 | 99.30 | 180 s* | AMD 25/1 |")  # shared
    assert len(lines) == 5
    assert ablation.table(rows[:1], base="(the sketch)").splitlines()[2].startswith("| 2 | base | (the sketch) |")


@pytest.mark.parametrize("name", sorted(ablation.STUDIES))
def test_every_variant_parses_into_a_valid_config(name):
    """Each variant's command line (without the network arguments, set in the training process) is one the trainer
    accepts: a misspelt flag or value fails here, not an hour into a study."""
    study = ablation.STUDIES[name]
    assert "base" in study.variants and study.preset in presets.PRESETS
    for variant, flags in study.variants.items():
        assert all(isinstance(f, (str, dict)) for f in flags), variant
        argv = ["--preset", study.preset, *study.sketch, "--val-size", "10000", *[f for f in flags if isinstance(f, str)]]
        _, config = presets.config_from_args(train.build_parser().parse_args(argv))
        presets.validate(config)  # raises UsageError, naming the flag
        assert config.val_size == 10000 and config.model == presets.PRESETS[study.preset].model


@pytest.mark.parametrize(
    "argv, message",
    [(["fast", "--seeds", "x"], "--seeds 'x': expected a seed (0) or several distinct ones"),
     (["fast", "--seeds", "-1"], "--seeds '-1': expected"),
     (["fast", "--variants", ""], "--variants '': the fast study has base"),
     (["fast", "--table", "--out", "/nonexistent/a.json"], "no results file /nonexistent/a.json"),
     (["fast", "--table", "--out", "pyproject.toml"], "pyproject.toml is not an ablation results file")],
)  # fmt: skip
def test_bad_input_is_one_line_and_starts_nothing(argv, message, capsys):
    assert ablation.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
