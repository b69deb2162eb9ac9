"""BatchNorm's statistics recomputed for the weights a run evaluates, measured on its validation split (issue 23,
the sprint's round 8 in docs/experiments.md): does a weight average read higher with statistics of its own?

    python scripts/bn_recal.py OUT.json --preset sprint --val-size 10000 --evals-per-epoch 4 --seed 0

The arguments after OUT.json are jaxmnist.train's (--val-size is required); the run trains exactly as without this
script. At each of its evaluations it also reads the validation split with
- `ema_recal_clean`, `ema_recal_aug`: the evaluated weights (the average, with --ema) and BatchNorm statistics
  recomputed for them in train mode over 10,000 training images, clean or augmented as training augments them
  (torch.optim.swa_utils.update_bn's population statistics: the mean over batches of 500 of each batch's mean and
  unbiased variance);
- `raw`, `raw_recal_clean`: the last weights with their running statistics, and with statistics recomputed on
  clean images.
`ema` is the run's own validation reading. OUT.json gets one row per evaluation, and the run's machine, commit,
versions and convolution plan.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import needs_jaxmnist  # noqa: F401  (before jax and jaxmnist: one line, not a traceback, where either is missing)

# isort: split
import jax
import jax.numpy as jnp

from jaxmnist import data as data_lib
from jaxmnist import engine, train, trainer
from jaxmnist.layers import BatchNorm
from jaxmnist.runlog import atomic_write

IMAGES, BATCH = 10_000, 500
MOMENTUM = BatchNorm.momentum  # the weight of a batch in the running statistics: from zeros, a batch's value x it


def population_stats(apply_fn, variables: dict, batches) -> dict:
    """BatchNorm's statistics for `variables`' weights over `batches` (normalised images [k, B, 28, 28, 1]): each
    layer's mean over the batches of its batch mean and unbiased variance, the layers before it normalising with
    their batch's own statistics (train mode, as update_bn runs)."""
    zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])

    def of_batch(x):
        _, new = apply_fn({"params": variables["params"], "batch_stats": zeros}, x, train=True,
                          rngs={"dropout": jax.random.PRNGKey(0)}, mutable=["batch_stats"])  # fmt: skip
        return jax.tree.map(lambda v: v / MOMENTUM, new["batch_stats"])

    return jax.tree.map(lambda s: s.mean(0), jax.lax.map(of_batch, batches))


@functools.partial(jax.jit, static_argnames=("augment", "elastic", "warp"))
def drawn_batches(train_u8, augment: bool, elastic=None, warp=None):
    """A fixed draw of IMAGES training images as normalised batches [k, BATCH, 28, 28, 1]: clean, or augmented as
    the run's training augments them (engine.prepare_images with its Config.elastic and Config.warp)."""
    n = min(IMAGES, train_u8.shape[0] // BATCH * BATCH)
    drawn = jax.random.permutation(jax.random.PRNGKey(123), train_u8.shape[0])[:n]
    images = train_u8[drawn].reshape(-1, BATCH, 28, 28)
    if not augment:
        return data_lib.normalize(images)
    prepare = functools.partial(engine.prepare_images, augment=True, elastic=elastic, warp=warp)
    return jax.vmap(prepare)(images, jax.random.split(jax.random.PRNGKey(7), n // BATCH))


_population_stats = jax.jit(population_stats, static_argnums=0)


def readings(evals, state, data, val: dict, clean, augmented) -> dict:
    """One evaluation's row: the run's reading and the four others on the validation split, the statistics
    recomputed over `clean` and `augmented` (drawn_batches': the same images at every evaluation)."""
    evaluated = state.eval_variables()
    last = {"params": state.params, "batch_stats": state.batch_stats}

    def accuracy(params, stats) -> float:  # the weights where the compiled pass reads them (eval_variables)
        if state.ema is None:
            variables = state.replace(params=params, batch_stats=stats)
        else:
            variables = state.replace(ema={"params": params, "batch_stats": stats})
        return round(float(jax.device_get(evals.val(variables, *data.val, None))["accuracy"]), 2)

    def recomputed(variables, batches):
        return variables["params"], _population_stats(state.apply_fn, variables, batches)

    return {"step": int(state.step), "ema": round(float(val["accuracy"]), 2),
            "ema_recal_clean": accuracy(*recomputed(evaluated, clean)),
            "ema_recal_aug": accuracy(*recomputed(evaluated, augmented)),
            "raw": accuracy(state.params, state.batch_stats),
            "raw_recal_clean": accuracy(*recomputed(last, clean))}  # fmt: skip


def usage_error(argv: list[str]) -> str | None:
    """Why these arguments cannot run, in one line, before anything trains; or None."""
    if len(argv) < 2 or not any(a == "--val-size" or a.startswith("--val-size=") for a in argv[1:]):
        return "usage: bn_recal.py OUT.json JAXMNIST_TRAIN_FLAGS... (with --val-size)"
    if any(a == "--seeds" or a.startswith("--seeds=") for a in argv[1:]):
        return "bn_recal.py reads one seed per run: give --seed, not --seeds"
    out = Path(argv[0]).resolve()
    if out.is_dir() or not os.access(out.parent, os.W_OK):
        return f"bn_recal.py: cannot write {argv[0]}"
    return None


def main(argv: list[str]) -> int:
    if (error := usage_error(argv)) is not None:
        print(error, file=sys.stderr)
        return 2
    out, flags, rows = argv[0], argv[1:], []
    compile_programs = trainer.compile_programs

    def wrapped(run, opts, cache):
        training, evals, seconds = compile_programs(run, opts, cache)
        train_u8, config = run.data.train[0], run.config  # the draws, once per run: every evaluation reads the same
        clean, augmented = drawn_batches(train_u8, False), drawn_batches(train_u8, True, config.elastic, config.warp)

        def evaluate(state, data, epoch):
            test, val = evals(state, data, epoch)
            t0 = time.perf_counter()
            row = readings(evals, state, data, val, clean, augmented)
            rows.append({"epoch": epoch + 1, **row, "s": time.perf_counter() - t0})
            return test, val

        return training, evaluate, seconds

    trainer.compile_programs = wrapped
    try:
        with tempfile.TemporaryDirectory() as logdir:
            if code := train.main([*flags, "--logdir", logdir, "--no-progress"]):
                return code
            record = json.loads(Path(logdir, "metrics.json").read_text())
    finally:  # the trainer as it was, for whatever runs next in this process (the tests)
        trainer.compile_programs = compile_programs
    keep = ("machine", "commit", "versions", "convolutions", "final_acc")
    result = {"flags": flags, **{k: record.get(k) for k in keep}, "evaluations": rows}
    atomic_write(Path(out), json.dumps(result, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
