"""scripts/fast_ablation.py: its table groups runs by round and variant (no training: the rows are made up)."""

import fast_ablation


def test_table_groups_seeds_and_averages_validation_accuracy():
    def row(round_, variant, seed, val, wall):
        return {"round": round_, "variant": variant, "flags": fast_ablation.VARIANTS.get(variant, []), "seed": seed,
                "val_acc": val, "test_acc": 99.0, "wall_s": wall}  # fmt: skip

    rows = [row(2, "base", 1, 99.40, 200.0), row(2, "base", 0, 99.20, 220.0), row(2, "no_augment", 0, 99.3, 180.0)]
    lines = fast_ablation.table(rows).splitlines()
    assert lines[2] == "| 2 | base | (the preset) | 99.20, 99.40 | 99.30 | 210 s | 99.00 |"
    assert lines[3].startswith("| 2 | no_augment | --no-augment | 99.30 | 99.30 | 180 s |")
    assert len(lines) == 4


def test_every_variant_is_flags_or_network_arguments():
    for flags in fast_ablation.VARIANTS.values():
        assert all(isinstance(f, (str, dict)) for f in flags)
