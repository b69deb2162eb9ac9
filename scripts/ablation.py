"""The ablations behind the `fast` preset and the `best` recipe: each variant trained by `python -m jaxmnist.train`
on 50,000 training images and scored on the 10,000 held out of them (`--val-size 10000`), never on the test set.

    python scripts/ablation.py fast                          # every variant of the fast study, seed 0
    python scripts/ablation.py best --variants base,epochs_30 --seeds 0,1
    python scripts/ablation.py fast --table                  # the table of what results/ablation/fast.json holds

Writes results/ablation/<study>.json (appending to what is there: a variant and seed already measured in the
study's current round is kept). The table: final validation accuracy per seed and their mean, wall time per run
(process start to exit, compile included), per round and variant. Test accuracy is recorded too, and chose
nothing. Each row names its machine and the largest share of the CPU other processes took in any of its epochs
(over `jaxmnist.host.SHARED_ABOVE`, 0.15: its wall time is not a quiet run's).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time


@dataclasses.dataclass(frozen=True)
class Study:
    """Variants as flag overrides of a sketch: `--preset <preset>` plus `sketch`; "base" is the sketch itself. A
    dict among a variant's flags holds arguments of the preset's network class (other widths or depths), set in the
    training process. `round` numbers the sketch: rows of earlier rounds stay in the JSON and the table."""

    preset: str
    round: int
    sketch: tuple[str, ...]
    variants: dict


STUDIES = {
    # Round 1 (recorded in results/ablation/fast.json) varied a first sketch of 6 epochs; round 2 varied the 8-epoch
    # preset; round 3 varies its length again after the fused first stage (models.stage_1ch_train) made an epoch
    # about a quarter cheaper.
    "fast": Study(
        preset="fast",
        round=3,
        sketch=(),
        variants={
            "base": [],
            "no_augment": ["--no-augment"],
            "no_label_smoothing": ["--label-smoothing", "0"],
            "widths_32_64_256": [{"widths": (32, 64, 256)}],
            "batch_512_lr_4e-3": ["--batch-size", "512", "--lr", "4e-3"],
            "ema_0.99": ["--ema", "0.99"],
            "epochs_6": ["--epochs", "6"],
            "epochs_10": ["--epochs", "10"],
            "epochs_12": ["--epochs", "12"],
            "convs_2": [{"convs_per_stage": 2}],
        },
    ),
    # Issue 23's "sooner": 99.5 % in half of fast's wall time, 99 % in a third of fast's time to 99 %. Round 1 (its
    # rows' flags apply to fast at batch 128 for 5 epochs) chose batch 32 for 4 epochs, the sprint preset, which
    # reaches 99 % only after its second epoch. Round 2 varied the preset itself, for a first epoch at 99 %: a
    # weight average (its warm-up, engine.ema_decay_at, caps the decay at 0.994 by the end of epoch 1), which the
    # preset took. Round 3: evaluations inside the epoch, which see 99 % before the epoch ends (the training is the
    # same bit for bit: its base is round 2's ema_0.998, flag for flag); on validation not soon enough on both seeds.
    # Round 4: the one-cycle's peak sooner (the preset's warm-up is 0.2 of 4 epochs: 0.8 of the first), watched four
    # times per epoch; round 3's evals_4 rows are its base. Round 5: narrower first and second stages, whose
    # convolutions cost more than their FLOPs (docs/experiments.md), for a cheaper first epoch; a fifth epoch buys
    # back the accuracy a narrower network loses at the end. Round 6: no augmentation, whose first epoch is also that
    # of any recipe that would augment only from epoch 2 (the batches' order and the steps' keys do not depend on it).
    # Round 7: the same, with the one-cycle's peak sooner or higher, for a first epoch at 99 % on both seeds.
    # Round 8, the average's own BatchNorm statistics, reads them beside the run's: scripts/bn_recal.py.
    "sprint": Study(
        preset="sprint",
        round=7,
        sketch=("--evals-per-epoch", "4"),
        variants={
            "base": [],  # not run again since round 3: its evals_4 rows are these flags
            "warmup_0.1": ["--warmup", "0.1"],
            "warmup_0.05": ["--warmup", "0.05"],
            "widths_24_48_128": [{"widths": (24, 48, 128)}],
            "widths_24_48_128_epochs_5": [{"widths": (24, 48, 128)}, "--epochs", "5"],
            "widths_24_48_96_epochs_5": [{"widths": (24, 48, 96)}, "--epochs", "5"],
            "no_augment": ["--no-augment"],
            "no_augment_warmup_0.05": ["--no-augment", "--warmup", "0.05"],
            "no_augment_lr_5e-3": ["--no-augment", "--lr", "5e-3"],
        },
    ),
    # Issue 23's single model at 99.7 %: the blog's section 4 network (cnn_deep: 99.74 % after 100 epochs of the
    # blog's RMSprop and plateau schedule) trained with the fast preset's recipe, in a fraction of the epochs.
    # Round 1 varied a 20-epoch sketch; round 2 varies the preset it chose (30 epochs), whose 5 seeds fell short of
    # a 99.70 % mean (docs/experiments.md). Its base is round 1's epochs_30, flag for flag.
    "best": Study(
        preset="cnn_deep",
        round=2,
        sketch=("--optimizer", "adamw", "--lr", "3e-3", "--weight-decay", "5e-4", "--schedule", "onecycle",
                "--label-smoothing", "0.1", "--no-plateau", "--epochs", "30"),  # fmt: skip
        variants={
            "base": [],
            "epochs_40": ["--epochs", "40"],
            "batch_256": ["--batch-size", "256"],  # twice the updates per epoch
            # Round 1's ema_0.999 (47 %) was measured before the average's warm-up (engine.ema_decay_at); these run
            # with it. Round 1's other rows (epochs_15/30, no_label_smoothing, elastic_50_5) chose the 30 epochs
            # and kept the rest of the sketch.
            "ema_warm_0.99": ["--ema", "0.99"],
            "ema_warm_0.998": ["--ema", "0.998"],
            # Elastic distortion after the affine steps at Simard et al.'s strength (alpha 34 px at sigma 4 in their
            # units, which scale the blurred field by alpha where torchvision's ElasticTransform scales it by
            # alpha / 2); torchvision's defaults (elastic_50_5) lost 0.12 points in round 1.
            "elastic_68_4": ["--elastic-alpha", "68", "--elastic-sigma", "4"],
            "lr_1e-3": ["--lr", "1e-3"],
            # The blog's dropout (0.25 after each stage, 0.5 before the last layer) on top of the fast recipe's own
            # regularisers (augmentation, label smoothing, weight decay): whether it still earns its place.
            "no_dropout": [{"conv_dropout_rate": 0.0, "fc_dropout_rate": 0.0}],
            # AdamW's decay is multiplied by the learning rate (optax and torch alike): 5e-4 at a peak of 3e-3 takes
            # under 1.5e-6 of each weight per step, about 0.3 % over the 3,510 steps: next to none. 0.05 is the
            # decay usual for AdamW on images (100x: a pull of about a quarter of each weight over the run).
            "wd_0.05": ["--weight-decay", "0.05"],
            # Wider stages (40 and 80 channels instead of the blog's 32 and 64: about 1.5x the convolutions'
            # work), the one direction of docs/experiments.md's list not yet run; on a Zen 4 a seed of the preset takes
            # about 20 minutes, so 1.5x stays near the 30 minutes a seed.
            "widths_40_80": [{"widths": (40, 80)}],
            # Random scale (issue 23's list; Deotte's 99.65 % nets train with a zoom of 0.1 beside shifts and
            # rotations like the §4 ones): RandomAffine's scale=(0.9, 1.1), on the device at no extra cost (the
            # same gather, another index map).
            "scale_0.1": ["--scale", "0.1"],
            # Twice the §4 ranges: shifts of up to 0.2 of the image, rotations of up to 20°, the augmentation An et
            # al. (2020) train their 99.70 % single models with (RandomRotation(20), RandomAffine(0, translate=(0.2,
            # 0.2)), with EMA, for 150 epochs); on the device at no extra cost (the same gather).
            "warp_0.2_20": ["--translate", "0.2", "--degrees", "20"],
        },
    ),
}
# Runs jaxmnist.train with a network's arguments replaced: argv[1] names the network, argv[2] is a JSON dict of its
# arguments (lists become tuples: a network is a static, hashed argument of its compiled init), the rest the
# trainer's flags.
_WITH_NETWORK = (
    "import functools, json, sys; from jaxmnist import models, train; "
    "args = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[2]).items()}; "
    "models.MODELS[sys.argv[1]] = functools.partial(models.MODELS[sys.argv[1]], **args); "
    "sys.exit(train.main(sys.argv[3:]))"
)
VAL_SIZE = 10_000


def run(study: Study, variant: str, seed: int) -> dict:
    from jaxmnist.presets import PRESETS  # the network the preset trains, for network arguments

    with tempfile.TemporaryDirectory() as logdir:
        flags = [f for f in study.variants[variant] if not isinstance(f, dict)]
        network = {k: v for f in study.variants[variant] if isinstance(f, dict) for k, v in f.items()}
        model = PRESETS[study.preset].model
        trainer = [sys.executable, "-c", _WITH_NETWORK, model, json.dumps(network)] if network else [
            sys.executable, "-m", "jaxmnist.train"]
        cmd = [*trainer, "--preset", study.preset, *study.sketch, "--val-size", str(VAL_SIZE), "--seed", str(seed),
               "--no-progress", "--logdir", logdir, *flags]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        with open(os.path.join(logdir, "metrics.json")) as f:
            metrics = json.load(f)
    last = metrics["epochs"][-1]
    return {"round": study.round, "variant": variant, "preset": study.preset, "sketch": list(study.sketch),
            "flags": study.variants[variant], "seed": seed,
            "val_acc": last["val_acc"], "test_acc": last["test_acc"], "wall_s": wall, "epochs": last["epoch"],
            "val_curve": [e["val_acc"] for e in metrics["epochs"]], "versions": metrics["versions"],
            "epoch_s": [e["time_s"] for e in metrics["epochs"]], "startup_s": metrics.get("startup_s"),
            **interim_curve(metrics),
            "machine": metrics.get("machine"), "convolutions": metrics.get("convolutions"),
            "others_cpu": max((e.get("others_cpu") or 0.0 for e in metrics["epochs"]), default=None)}  # fmt: skip


def interim_curve(metrics: dict) -> dict:
    """{'val_interim': per epoch, its evaluations before its end as [fraction, val accuracy, seconds into the
    epoch]} for a run with --evals-per-epoch; {} for one without."""
    from jaxmnist.runlog import interim_series

    series = interim_series(metrics, "fraction", "val_acc", "at_s")
    return {} if series is None else {"val_interim": series}


def shared(run: dict) -> bool:
    """Whether other processes took over 15 % of the CPU in one of the run's epochs (its wall time is not quiet)."""
    from jaxmnist import host

    return (run.get("others_cpu") or 0.0) > host.SHARED_ABOVE


def short_machine(machine: str | None) -> str:
    """'AMD EPYC ..., family 25 model 1 ...' -> 'AMD 25/1': which CPU kind, in a table cell."""
    found = re.search(r"family (\d+) model (\d+)", machine or "")
    if not found:
        return "?"
    return f"{machine.split()[0].replace('(R)', '')} {found[1]}/{found[2]}"


def table(rows: list[dict], base: str = "(the preset)") -> str:
    """Markdown: one line per round and variant, seeds averaged; `base` stands for a variant without flags. Wall
    times are comparable only on one machine (its CPU named per line; seeds run on different machines get one
    each, never a mean) and marked * where other processes took over 15 % of the CPU in some epoch."""
    lines = [
        "| round | variant | flags | val accuracy per seed | mean val | wall time | machine | (test, not used) |",
        "|---|---|---|---|---:|---:|---|---:|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["round"], r["variant"]), []).append(r)
    for (round_, variant), runs in groups.items():
        runs.sort(key=lambda r: r["seed"])
        val = [r["val_acc"] for r in runs]
        machines = [short_machine(r.get("machine")) for r in runs]
        if len(set(machines)) == 1:  # one machine: the mean wall time, and the machine once
            wall = f"{sum(r['wall_s'] for r in runs) / len(runs):.0f} s{'*' if any(map(shared, runs)) else ''}"
            machines = machines[:1]
        else:  # no mean across machines: each seed's, in the machine column's order
            wall = ", ".join(f"{r['wall_s']:.0f} s{'*' if shared(r) else ''}" for r in runs)
        lines.append(
            f"| {round_} | {variant} | {' '.join(map(str, runs[0]['flags'])) or base} | "
            f"{', '.join(f'{v:.2f}' for v in val)} | {sum(val) / len(val):.2f} | {wall} | {', '.join(machines)} | "
            f"{sum(r['test_acc'] for r in runs) / len(runs):.2f} |"
        )
    return "\n".join(lines)


def read_rows(out: str, must_exist: bool) -> list[dict]:
    """The rows of an ablation results file; a one-line error for a file that is not one."""
    from jaxmnist.cli import UsageError

    if not os.path.exists(out):
        if must_exist:
            raise UsageError(f"no results file {out}")
        return []
    try:
        with open(out) as f:
            rows = json.load(f)["runs"]
        if not (isinstance(rows, list) and all({"variant", "seed", "round", "val_acc"} <= r.keys() for r in rows)):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"{out} is not an ablation results file ({type(e).__name__})") from None
    return rows


def _main(argv: list[str] | None) -> None:
    from jaxmnist import cli
    from jaxmnist.seeds import seed_list

    p = cli.script_parser("scripts/ablation.py", __doc__)
    p.add_argument("study", choices=sorted(STUDIES))
    p.add_argument("--variants", help="comma-separated (default: all of the study's)")
    p.add_argument("--seeds", default="0", help="a seed, or several: 0,1 or 0-2 (default 0)")
    p.add_argument("--out", help="default: results/ablation/<study>.json")
    p.add_argument("--table", action="store_true", help="only print the table of --out")
    args = p.parse_args(argv)
    study = STUDIES[args.study]
    out = args.out or f"results/ablation/{args.study}.json"
    rows = read_rows(out, must_exist=args.table)
    if args.table:
        print(table(rows, base="(the preset)" if not study.sketch else "(the sketch)"))
        return
    seeds = seed_list(args.seeds) or ((int(args.seeds),) if args.seeds.isascii() and args.seeds.isdigit() else ())
    if not seeds:
        raise cli.UsageError(f"--seeds {args.seeds!r}: expected a seed (0) or several distinct ones (0,1 or 0-2)")
    variants = [v for v in args.variants.split(",") if v] if args.variants is not None else list(study.variants)
    unknown = [v for v in variants if v not in study.variants]
    if unknown or not variants:
        raise cli.UsageError(f"--variants {args.variants!r}: the {args.study} study has {', '.join(study.variants)}")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    done = {(r["variant"], r["seed"]) for r in rows if r["round"] == study.round}
    for variant in variants:
        for seed in seeds:
            if (variant, seed) in done:
                continue
            try:
                rows.append(run(study, variant, seed))
            except subprocess.CalledProcessError as e:
                raise cli.RunError(f"variant {variant} seed {seed}: training failed (exit {e.returncode})") from None
            r = rows[-1]
            print(f"{variant:24s} seed {seed}: val {r['val_acc']:.2f} %, {r['wall_s']:.0f} s", flush=True)
            tmp = out + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"val_size": VAL_SIZE, "preset": study.preset, "sketch": list(study.sketch), "runs": rows},
                          f, indent=1)  # fmt: skip
            os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    import needs_jaxmnist  # noqa: F401  (one line, not a traceback, where jaxmnist is missing)

    from jaxmnist import cli

    return cli.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
