"""The ablation behind the `fast` preset: each variant trained by `python -m jaxmnist.train` on 50,000 training
images and scored on the 10,000 held out of them (`--val-size 10000`), never on the test set.

    python scripts/fast_ablation.py                          # every variant, seed 0
    python scripts/fast_ablation.py --variants base,no_augment --seeds 0,1
    python scripts/fast_ablation.py --table                 # the table of what results/ablation/fast.json holds

Writes results/ablation/fast.json (appending to what is there: a variant and seed already measured is kept). The
table: final validation accuracy per seed and their mean, wall time per run (process start to exit, compile
included), per round and variant. Test accuracy is recorded too, and chose nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# Variants as flag overrides of the fast preset; "base" is the preset itself. A dict among a variant's flags holds
# jaxmnist.models.FastNet arguments (other widths or depths), set in the training process. Round 1 (recorded in
# results/ablation/fast.json) varied a first sketch of 6 epochs; round 2 varied the 8-epoch preset; round 3 varies its
# length again after the fused first stage (models.stage_1ch_train) made an epoch about a quarter cheaper.
ROUND = 3
VARIANTS = {
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
}
# Runs jaxmnist.train with FastNet's arguments replaced: argv[1] is a JSON dict of them, the rest the trainer's flags.
_WITH_NETWORK = (
    "import functools, json, sys; from jaxmnist import models, train; "
    "models.MODELS['fast'] = functools.partial(models.FastNet, **json.loads(sys.argv[1])); "
    "sys.exit(train.main(sys.argv[2:]))"
)
VAL_SIZE = 10_000


def run(variant: str, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as logdir:
        flags = [f for f in VARIANTS[variant] if not isinstance(f, dict)]
        network = {k: v for f in VARIANTS[variant] if isinstance(f, dict) for k, v in f.items()}
        trainer = [sys.executable, "-c", _WITH_NETWORK, json.dumps(network)] if network else [
            sys.executable, "-m", "jaxmnist.train"]
        cmd = [*trainer, "--preset", "fast", "--val-size", str(VAL_SIZE), "--seed", str(seed), "--no-progress",
               "--logdir", logdir, *flags]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        with open(os.path.join(logdir, "metrics.json")) as f:
            metrics = json.load(f)
    last = metrics["epochs"][-1]
    return {"round": ROUND, "variant": variant, "flags": VARIANTS[variant], "seed": seed, "val_acc": last["val_acc"],
            "test_acc": last["test_acc"], "wall_s": wall, "epochs": last["epoch"],
            "val_curve": [e["val_acc"] for e in metrics["epochs"]], "versions": metrics["versions"]}


def table(rows: list[dict]) -> str:
    lines = [
        "| round | variant | flags | val accuracy per seed | mean val | mean wall time | (test, not used) |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["round"], r["variant"]), []).append(r)
    for (round_, variant), runs in groups.items():
        runs.sort(key=lambda r: r["seed"])
        val = [r["val_acc"] for r in runs]
        lines.append(
            f"| {round_} | {variant} | {' '.join(map(str, runs[0]['flags'])) or '(the preset)'} | "
            f"{', '.join(f'{v:.2f}' for v in val)} | {sum(val) / len(val):.2f} | "
            f"{sum(r['wall_s'] for r in runs) / len(runs):.0f} s | "
            f"{sum(r['test_acc'] for r in runs) / len(runs):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", default="results/ablation/fast.json")
    p.add_argument("--table", action="store_true", help="only print the table of --out")
    args = p.parse_args()
    rows = json.load(open(args.out))["runs"] if os.path.exists(args.out) else []
    if args.table:
        print(table(rows))
        return
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    done = {(r["variant"], r["seed"]) for r in rows if r["round"] == ROUND}
    for variant in args.variants.split(","):
        for seed in map(int, args.seeds.split(",")):
            if (variant, seed) in done:
                continue
            rows.append(run(variant, seed))
            r = rows[-1]
            print(f"{variant:24s} seed {seed}: val {r['val_acc']:.2f} %, {r['wall_s']:.0f} s", flush=True)
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"val_size": VAL_SIZE, "runs": rows}, f, indent=1)
            os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
