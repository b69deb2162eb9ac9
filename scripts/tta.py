"""Test-time augmentation measured where it may choose (issue 23): a trained model's accuracy on the split its run
held out of the training set, per warped view and averaged over sets of views, as a TTA evaluation would average.

    python -m jaxmnist.train --preset sprint --val-size 10000 --seed 0 --workdir /tmp/s0
    python scripts/tta.py --workdir /tmp/s0 --which latest                  # its held-out split, as it recorded it
    python scripts/tta.py --workdir /tmp/s0 --which latest --split test      # the test set: read, chooses nothing

The views are the §4 augmentation's own warps (jaxmnist.augment.warp: whole-pixel shifts, rotations about the
centre, PIL's nearest-neighbour arithmetic). The held-out images are the run's: its checkpoint's --val-size,
--train-size and seed (presets.split_train draws the split from them); for a --torch-state-dict, --val-size and
--split-seed say which.
"""

from __future__ import annotations

import sys

import needs_jaxmnist  # noqa: F401  (before jax and jaxmnist: one line, not a traceback, where either is missing)

# isort: split
import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import augment, cli, weights
from jaxmnist import data as data_lib
from jaxmnist.checkpoint import Checkpointer
from jaxmnist.presets import Config, split_train

# name -> (shift right, shift down, counter-clockwise degrees)
VIEWS = {
    "identity": (0, 0, 0.0),
    "right": (1, 0, 0.0),
    "left": (-1, 0, 0.0),
    "down": (0, 1, 0.0),
    "up": (0, -1, 0.0),
    "ccw 5": (0, 0, 5.0),
    "cw 5": (0, 0, -5.0),
    "ccw 10": (0, 0, 10.0),
    "cw 10": (0, 0, -10.0),
}
SHIFTS = ["identity", "right", "left", "down", "up"]
SETS = {
    "identity": ["identity"],
    "1-pixel shifts": SHIFTS,
    "rotations 5°": ["identity", "ccw 5", "cw 5"],
    "rotations 10°": ["identity", "ccw 10", "cw 10"],
    "shifts + rotations 5°": [*SHIFTS, "ccw 5", "cw 5"],
    "all views": list(VIEWS),
}


# The augmentation's warp as one compiled program, as training runs it (op by op it compiled a few dozen small
# programs per set of images).
_warp = jax.jit(augment.warp)


def warped(images: np.ndarray, view: tuple[int, int, float]) -> np.ndarray:
    """Every uint8 [N, 28, 28] image under one view."""
    tx, ty, angle = (np.full((len(images),), v, dtype) for v, dtype in zip(view, (np.int32, np.int32, np.float32)))
    return np.asarray(_warp(jnp.asarray(images), tx, ty, angle))


def view_probabilities(model: weights.Model, images: np.ndarray) -> dict[str, np.ndarray]:
    """The model's softmax over the images under each view of VIEWS."""
    return {name: model.probabilities(warped(images, view)) for name, view in VIEWS.items()}


def accuracies(probs: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Accuracy (%) of each view alone and of each set of SETS, its views' probabilities averaged."""
    acc = {f"view: {name}": p for name, p in probs.items()}
    acc |= {f"set: {name}": np.mean([probs[v] for v in views], axis=0) for name, views in SETS.items()}
    return {name: 100.0 * float(np.mean(p.argmax(-1) == labels)) for name, p in acc.items()}


def held_out(data: data_lib.Dataset, args):
    """(images, labels) of the test set, or of the validation split the run held out: as its checkpoint records it
    (--val-size, --train-size, the seed) for one run's --workdir, else as --val-size and --split-seed say."""
    check_split_flags(args)
    if args.split == "test":
        return data.test_images, data.test_labels
    recorded = recorded_split(args)
    if recorded is None:
        if not args.val_size:
            raise cli.UsageError("--split val needs the run's --val-size (and --split-seed, its seed)")
        return split_train(data, Config(val_size=args.val_size, seed=args.split_seed or 0))[1]
    where, config = recorded
    if not config.val_size:
        raise cli.UsageError(f"{where} was trained without --val-size: nothing was held out (--split test reads "
                             "the test set)")  # fmt: skip
    for flag, value, own in (("--val-size", args.val_size, config.val_size), ("--split-seed", args.split_seed,
                                                                              config.seed)):  # fmt: skip
        if value is not None and value != own:
            raise cli.UsageError(f"{flag} {value}: the run in {where} held out its split with {own} (its "
                                 "checkpoint says so); leave the flag out")  # fmt: skip
    return split_train(data, config)[1]


def check_split_flags(args) -> None:
    """The split's flags on their own: in range, and only with --split val."""
    flags = {"--val-size": args.val_size, "--split-seed": args.split_seed}
    if args.split == "test" and (given := [f for f, v in flags.items() if v is not None]):
        raise cli.UsageError(f"{', '.join(given)} choose the val split; --split test takes neither")
    for flag, value in flags.items():
        if value is not None and value < (1 if flag == "--val-size" else 0):
            raise cli.UsageError(f"{flag} must be {'> 0' if flag == '--val-size' else '>= 0'}, got {value}")


def recorded_split(args) -> tuple[str, Config] | None:
    """(workdir, the settings that drew its split) of a single run's --workdir, from its checkpoint; else None."""
    if args.torch_state_dict or len(args.workdir or ()) != 1:
        return None
    meta = Checkpointer(args.workdir[0], read_only=True).read_meta(args.which)
    if meta is None:
        return None
    return args.workdir[0], weights.saved_config(meta)


def table(acc: dict[str, float]) -> str:
    base = acc["set: identity"]
    rows = [f"| {name} | {a:.2f} % | {a - base:+.2f} |" for name, a in acc.items()]
    return "\n".join(["| views | accuracy | vs identity |", "|---|---:|---:|", *rows])


def build_parser() -> cli.ArgumentParser:
    p = cli.script_parser("scripts/tta.py", __doc__)
    weights.add_flags(p)
    p.add_argument("--split", choices=("val", "test"), default="val", help="where to measure (default val)")
    p.add_argument("--val-size", type=int, help="the run's --val-size (with --split val; a --workdir's checkpoint "
                   "records it)")  # fmt: skip
    p.add_argument("--split-seed", type=int, help="the seed the run was trained with (default 0; a --workdir's "
                   "checkpoint records it)")  # fmt: skip
    p.add_argument("--data-dir", help="a directory holding the four IDX files")
    return p


def _main(argv) -> None:
    args = build_parser().parse_args(argv)
    check_split_flags(args)
    model = weights.load(args)
    data = data_lib.load("mnist", args.data_dir, progress=False)
    images, labels = held_out(data, args)
    print(f"{model.name} from {model.source}, on {len(labels)} images of the {args.split} split")
    print(table(accuracies(view_probabilities(model, images), labels)))


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv), user_errors=(data_lib.DataError,))


if __name__ == "__main__":
    sys.exit(main())
