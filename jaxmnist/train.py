"""Training: a pure `train_step`, whole epochs under `jit`/`lax.scan` on device-resident data, and the CLI.

    python -m jaxmnist.train --model resnet            # the blog's ResNet preset
    python -m jaxmnist.train --preset cnn_cpu --epochs 3
    python -m jaxmnist.train --help

Design (why it is fast and exact):
- The uint8 dataset lives on the device; an epoch gathers its batches there from a permutation drawn from
  (seed, epoch). Every random draw of a step comes from (seed, step), so a resumed run repeats an
  uninterrupted one bit for bit.
- An epoch runs as a few chunks of `lax.scan` over steps: the host queues chunk k+1 before it waits on
  chunk k's per-batch metrics, so the progress bar moves without a host sync per step.
- The train state is donated to each chunk; its buffers are reused in place.
- Training drops the ragged last batch (60,000 = 117·512 + 96: the 96 are left out that epoch, a different 96
  every epoch). Evaluation covers every test image exactly once: full batches, then the rest as one small batch.
- Learning rates are applied after the optimiser's direction (torch's order), so the plateau schedule's
  changes match torch.optim exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxmnist import augment as augment_lib
from jaxmnist import data as data_lib
from jaxmnist import models, optim, runlog
from jaxmnist.presets import (
    Config,
    UsageError,
    add_config_arguments,
    config_from_args,
    split_train,
    tests_with_batch_statistics,
    trains_in_eval_mode,
    validate,
)


# ------------------------------------------------------------------------------------------- state
class TrainState(struct.PyTreeNode):
    """Everything that changes during training, as one pytree (vmap-able over seeds, shardable)."""

    step: jax.Array  # int32 []
    params: Any
    batch_stats: Any
    opt_state: Any
    lr: jax.Array  # float32 []: the current learning rate, set from the host by the plateau schedule
    rng: jax.Array  # the run's base key; each step folds in its step number
    apply_fn: Any = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """torch's update direction without the learning rate; train_step multiplies by state.lr."""
    hp = {"momentum": config.momentum}
    if config.optimizer == "rmsprop":
        hp.update(alpha=config.alpha, eps=config.eps)
    return optim.direction(config.optimizer, **hp)


def create_state(config: Config, key: jax.Array, dtype=jnp.float32, variables: dict | None = None) -> TrainState:
    """A fresh state; `variables` ({'params', 'batch_stats'}, e.g. transferred from torch) replace the init."""
    model = models.get_model(config.model, num_classes=config.num_classes, dtype=dtype)
    init_key, rng = jax.random.split(key)
    if variables is None:
        variables = jax.jit(functools.partial(model.init, train=False))(init_key, jnp.zeros((1, 28, 28, 1)))
    tx = make_optimizer(config)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(variables["params"]),
        lr=jnp.asarray(config.lr, jnp.float32),
        rng=rng,
        apply_fn=model.apply,
        tx=tx,
    )


def cross_entropy(logits, labels):
    """Per-example loss, computed in at least float32 (bf16 logits are promoted; float64 stays float64)."""
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), labels
    )


# -------------------------------------------------------------------------------------------- steps
def train_step(state: TrainState, batch: dict, train: bool = True) -> tuple[TrainState, dict]:
    """One SGD/RMSprop step on a normalised batch {'image': [B,28,28,1] float, 'label': [B] int}.

    `train=False` reproduces the blog's quirk of training in eval mode (BatchNorm frozen, dropout off).
    """
    dropout_key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        if train:
            logits, updates = state.apply_fn(
                variables, batch["image"], train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
            )
            batch_stats = updates["batch_stats"]
        else:
            logits, batch_stats = state.apply_fn(variables, batch["image"], train=False), state.batch_stats
        return cross_entropy(logits, batch["label"]).mean(), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    direction, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, d: p - state.lr * d, state.params, direction)
    accuracy = 100.0 * jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, {"loss": loss, "accuracy": accuracy}


def eval_step(state: TrainState, batch: dict, batch_statistics: bool = False, dropout_key=None) -> dict:
    """Sums of loss and correct predictions over the batch. `batch_statistics` runs the model in train mode, as a
    torch model left in train mode does (the blog's quirk 4): BatchNorm on the batch's own statistics (the running
    ones stay as they are) and dropout, if any, drawn from `dropout_key`."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if batch_statistics:
        logits, _ = state.apply_fn(
            variables, batch["image"], train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
        )
    else:
        logits = state.apply_fn(variables, batch["image"], train=False)
    return {
        "loss": jnp.sum(cross_entropy(logits, batch["label"])),
        "correct": jnp.sum(jnp.argmax(logits, -1) == batch["label"]),
        "count": jnp.asarray(batch["label"].shape[0], jnp.int32),
    }


def prepare_images(images_u8, key, augment: bool):
    """uint8 [B,28,28] -> normalised float [B,28,28,1], augmented first (on raw pixels) when asked."""
    if augment:
        images_u8 = augment_lib.augment(key, images_u8)
    return data_lib.normalize(images_u8)


# Augmentation keys must differ from dropout keys of the same step, and a test pass's dropout keys (quirk 4) from both.
_AUGMENT_STREAM = 1 << 30
_EVAL_STREAM = (1 << 30) + 1


def train_chunk(state: TrainState, images, labels, idx, *, augment: bool, train: bool, unroll: bool = False):
    """Runs len(idx) steps; idx [steps, B] indexes the device-resident uint8 images. Returns per-step metrics.

    `unroll=True` traces the steps one after another instead of as a `lax.scan` (a while loop): XLA's CPU
    backend runs convolution gradients inside a while loop 4-5x slower (cnn, batch 512: ~800 vs ~200 ms per
    step; see benchmarks/README.md), and even a length-1 scan stays a loop. So CPU runs use short unrolled chunks.
    """

    def body(state, batch_idx):
        key = jax.random.fold_in(jax.random.fold_in(state.rng, _AUGMENT_STREAM), state.step)
        batch = {"image": prepare_images(images[batch_idx], key, augment), "label": labels[batch_idx]}
        return train_step(state, batch, train=train)

    if not unroll:
        return jax.lax.scan(body, state, idx)
    metrics = []
    for i in range(idx.shape[0]):
        state, m = body(state, idx[i])
        metrics.append(m)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs), *metrics)


def chunk_bounds(steps: int, chunk_steps: int | None, unroll: bool) -> list[tuple[int, int]]:
    """How an epoch of `steps` is cut into compiled chunks (start, end): full chunks of `chunk_steps` (default 8
    unrolled steps on CPU, an eighth of the epoch as a rolled scan elsewhere), then single steps for the rest,
    so at most two chunk lengths are ever compiled."""
    chunk = min(steps, chunk_steps or (8 if unroll else math.ceil(steps / 8)))
    full = steps - steps % chunk
    return [(s, s + chunk) for s in range(0, full, chunk)] + [(s, s + 1) for s in range(full, steps)]


def evaluate(
    state: TrainState, images, labels, augment_key=None, *, batch_size: int, batch_statistics: bool = False
) -> dict:
    """Loss and accuracy over every example exactly once: the full batches in a scan, then the remainder as one
    smaller batch, unpadded (padding would change the statistics of a `batch_statistics` pass, quirk 4).
    An `augment_key` augments the images first (the blog's quirk 2, on the test set)."""
    n = labels.shape[0]
    full = n // batch_size

    def sums(i, image, label):
        key = None if augment_key is None else jax.random.fold_in(augment_key, i)
        batch = {"image": prepare_images(image, key, augment_key is not None), "label": label}
        dropout_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(state.rng, _EVAL_STREAM), state.step), i)
        return eval_step(state, batch, batch_statistics, dropout_key)

    parts = []
    if full:
        shape = (full, batch_size)
        batches = (
            jnp.arange(full),
            images[: full * batch_size].reshape(*shape, 28, 28),
            labels[: full * batch_size].reshape(shape),
        )
        _, scanned = jax.lax.scan(lambda _, xs: (None, sums(*xs)), None, batches)
        parts.append(jax.tree.map(jnp.sum, scanned))
    if n % batch_size:
        parts.append(sums(full, images[full * batch_size :], labels[full * batch_size :]))
    total = jax.tree.map(lambda *xs: sum(xs), *parts)
    return {"loss": total["loss"] / total["count"], "accuracy": 100.0 * total["correct"] / total["count"]}


def epoch_indices(seed: int, epoch, n: int, batch_size: int, bounds: tuple[tuple[int, int], ...]):
    """The epoch's shuffled batches, one [steps, B] array per chunk (start, end) of `bounds`: a fresh
    permutation from (seed, epoch), ragged tail dropped."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed ^ 0x5EED), epoch)
    steps = bounds[-1][1]
    order = jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)
    return tuple(order[s:e] for s, e in bounds)


# ------------------------------------------------------------------------------- compile accounting
_COMPILES = [0]


def _count_compiles(event: str, *args, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def compile_count() -> int:
    """Backend compilations so far in this process (every jit variant, eager op and AOT compile counts)."""
    return _COMPILES[0]


# ---------------------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class Result:
    state: TrainState
    record: dict


def _device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', d.platform)}"


def train_and_evaluate(
    config: Config,
    *,
    preset: str | None = None,
    data: data_lib.Dataset | None = None,
    data_dir: str | None = None,
    logdir: str | None = None,
    workdir: str | None = None,
    resume: bool = False,
    chunk_steps: int | None = None,
    unroll: bool | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    out=sys.stdout,
) -> Result:
    """Trains `config` and evaluates after every epoch; prints the blog's lines; returns the final state and
    the metrics record.

    An epoch runs as the chunks of `chunk_bounds` (default: 8 unrolled steps on CPU, an eighth of the epoch as
    a rolled scan elsewhere).
    `stop_after_epoch` simulates a killed run (for tests).
    """
    validate(config)
    say = functools.partial(print, file=out, flush=True)
    if data is None:
        data = data_lib.load(config.dataset, data_dir, progress=progress)
    (train_x, train_y), val = split_train(data, config)
    n_train = len(train_y)
    steps = n_train // config.batch_size
    if steps == 0:
        raise UsageError(f"--batch-size {config.batch_size} exceeds the {n_train} training images")
    if config.max_steps:
        steps = min(steps, config.max_steps)
    if unroll is None:
        unroll = jax.default_backend() == "cpu"
    bounds = chunk_bounds(steps, chunk_steps, unroll)

    # Data on the device once, as uint8.
    train_x, train_y = jax.device_put(train_x), jax.device_put(train_y.astype(np.int32))
    test_x, test_y = jax.device_put(data.test_images), jax.device_put(data.test_labels.astype(np.int32))
    if val is not None:
        val_x, val_y = jax.device_put(val[0]), jax.device_put(val[1].astype(np.int32))

    state = create_state(config, jax.random.PRNGKey(config.seed))
    plateau = optim.ReduceLROnPlateau(
        config.lr,
        mode="max",
        factor=config.plateau_factor,
        patience=config.plateau_patience,
        threshold=config.plateau_threshold,
        threshold_mode="rel",
    )
    monitor = "validation accuracy" if val is not None else "test accuracy"
    logdir = Path(logdir) if logdir else None
    log = (
        runlog.RunLog(logdir, framework="jax", preset=preset, config=config, device=_device_name(), n_train=n_train)
        if logdir
        else None
    )
    ckpt = Checkpointer(workdir) if workdir else None
    first_epoch = 0
    if resume:
        if ckpt is None:
            raise UsageError("--resume needs --workdir")
        restored = ckpt.restore_latest(state)
        if restored is None:
            say(f"no checkpoint in {workdir}: starting from scratch")
        else:
            state, meta = restored
            if meta["config"] != dataclasses.asdict(config):
                changed = sorted(k for k, v in meta["config"].items() if dataclasses.asdict(config).get(k) != v)
                raise UsageError(f"checkpoint in {workdir} was made with different settings: {', '.join(changed)}")
            first_epoch = meta["epoch"]
            plateau.load_state_dict(meta["plateau"])
            if log and meta.get("record"):
                log.record = meta["record"]
            say(f"resumed from {workdir} after epoch {first_epoch}")

    # Compile every variant the run needs, up front: the time is reported apart from the epochs.
    jit_chunk = jax.jit(train_chunk, donate_argnums=0, static_argnames=("augment", "train", "unroll"))
    jit_eval = jax.jit(evaluate, static_argnames=("batch_size", "batch_statistics"))
    eval_args = {"batch_size": config.eval_batch_size, "batch_statistics": tests_with_batch_statistics(config)}
    train_modes = sorted({not trains_in_eval_mode(config, e) for e in range(config.epochs)})
    t0 = time.perf_counter()
    sizes = sorted({e - s for s, e in bounds})
    compiled = {}
    for mode in train_modes:
        for size in sizes:
            idx = jax.ShapeDtypeStruct((size, config.batch_size), jnp.int32)
            compiled[mode, size] = jit_chunk.lower(
                state, train_x, train_y, idx, augment=config.augment, train=mode, unroll=unroll
            ).compile()
    # Quirk 2: the blog's test set goes through the training augmentation, fresh every epoch.
    test_aug_key = jax.random.PRNGKey(config.seed ^ 0x7E57) if config.blog_quirks and config.augment else None
    eval_test = jit_eval.lower(state, test_x, test_y, test_aug_key, **eval_args).compile()
    eval_val = jit_eval.lower(state, val_x, val_y, None, **eval_args).compile() if val is not None else None
    indices = (
        jax.jit(epoch_indices, static_argnums=(0, 2, 3, 4))
        .lower(config.seed, jnp.int32(0), n_train, config.batch_size, tuple(bounds))
        .compile()
    )
    compile_s = time.perf_counter() - t0

    say(f"device: {_device_name()} ({jax.default_backend()}), jax {jax.__version__}")
    for line in runlog.preamble_lines(
        config,
        preset,
        data.source,
        n_train=n_train,
        steps=steps,
        tail="ragged tail dropped",
        n_test=len(test_y),
        n_val=len(val[1]) if val is not None else None,
        monitor=monitor,
    ):
        say(line)
    say(f"compile: {compile_s:.2f} s (kept out of the epoch times)")
    say(runlog.header_line(config.epochs))

    epoch_times, compiles_after_first, compiles_at_epoch_2 = [], None, None
    for epoch in range(first_epoch, config.epochs):
        if epoch == first_epoch + 1:
            compiles_at_epoch_2 = compile_count()
        t_start = time.perf_counter()
        mode = not trains_in_eval_mode(config, epoch)
        chunks = indices(jnp.int32(epoch))
        metrics = []
        with runlog.epoch_bar(epoch, config.epochs, steps, progress) as bar:
            pending = None
            for idx in chunks:
                state, m = compiled[mode, idx.shape[0]](state, train_x, train_y, idx)
                if pending is not None:  # wait on the previous chunk while this one runs
                    metrics.append(jax.device_get(pending[0]))
                    bar.update(pending[1])
                pending = (m, idx.shape[0])
            metrics.append(jax.device_get(pending[0]))
            bar.update(pending[1])
        test_key = None if test_aug_key is None else jax.random.fold_in(test_aug_key, epoch)
        test = jax.device_get(eval_test(state, test_x, test_y, test_key))
        val_m = jax.device_get(eval_val(state, val_x, val_y, None)) if eval_val else None
        epoch_s = time.perf_counter() - t_start
        epoch_times.append(epoch_s)
        acc = np.concatenate([m["accuracy"] for m in metrics])
        loss = np.concatenate([m["loss"] for m in metrics])
        lr_used = float(state.lr)
        say(runlog.epoch_line(epoch + 1, float(test["accuracy"])))
        if config.plateau and not config.blog_quirks:  # quirk 3: the blog never calls scheduler.step()
            new_lr = plateau.step(float((val_m or test)["accuracy"]))
            if new_lr != lr_used:
                say(f"    learning rate {lr_used:g} -> {new_lr:g}")
            state = state.replace(lr=jnp.asarray(new_lr, jnp.float32))
        if log:
            log.add_batches(epoch, acc, loss)
            log.add_epoch(
                epoch + 1,
                test_acc=float(test["accuracy"]),
                test_loss=float(test["loss"]),
                val_acc=None if val_m is None else float(val_m["accuracy"]),
                val_loss=None if val_m is None else float(val_m["loss"]),
                train_acc=float(acc.mean()),
                train_loss=float(loss.mean()),
                lr=lr_used,
                time_s=epoch_s,
            )
        if ckpt:
            ckpt.save(
                state,
                epoch + 1,
                float(test["accuracy"]),
                meta={
                    "config": dataclasses.asdict(config),
                    "epoch": epoch + 1,
                    "plateau": plateau.state_dict(),
                    "record": log.record if log else None,
                },
            )
        if epoch >= first_epoch + 1:
            compiles_after_first = compile_count() - compiles_at_epoch_2
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break

    avg = float(np.mean(epoch_times)) if epoch_times else 0.0
    say(runlog.average_line(avg))
    record = {"compile_s": compile_s, "avg_epoch_s": avg, "recompiles_after_first_epoch": compiles_after_first}
    if log:
        record = log.finish(**record)
        s = log.summary()
        say(f"final: {s['final_acc']:.2f} %, best: {s['best_acc']:.2f} % (epoch {s['best_epoch']}); logs in {logdir}")
    if compiles_after_first is not None:
        say(f"recompilations after the first epoch: {compiles_after_first}")
    if ckpt:
        ckpt.close()
    return Result(state=state, record=record)


# ------------------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """orbax checkpoints of the train state plus host-side state (JSON): `latest` every epoch, `best` on a new
    best test accuracy, one of each kept. orbax writes to a temporary directory and renames: atomic."""

    def __init__(self, workdir: str | os.PathLike):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        root = Path(workdir).absolute()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create --workdir {root}: {e.strerror}") from None
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
        self.latest = ocp.CheckpointManager(root / "latest", options=options)
        self.best = ocp.CheckpointManager(root / "best", options=options)
        self.best_acc = self._best_so_far()

    def _best_so_far(self) -> float:
        step = self.best.latest_step()
        if step is None:
            return -1.0
        meta = self.best.restore(step, args=self.ocp.args.Composite(meta=self.ocp.args.JsonRestore()))["meta"]
        return meta["test_acc"]

    def _args(self, state, meta):
        arrays = {k: v for k, v in state.__dict__.items() if k not in ("apply_fn", "tx")}
        return self.ocp.args.Composite(state=self.ocp.args.StandardSave(arrays), meta=self.ocp.args.JsonSave(meta))

    def save(self, state: TrainState, epoch: int, test_acc: float, meta: dict) -> None:
        meta = {**meta, "test_acc": test_acc}
        self.latest.save(epoch, args=self._args(state, meta))
        if test_acc > self.best_acc:
            self.best.save(epoch, args=self._args(state, meta))
            self.best_acc = test_acc

    def restore_latest(self, like: TrainState):
        step = self.latest.latest_step()
        if step is None:
            return None
        target = {k: v for k, v in like.__dict__.items() if k not in ("apply_fn", "tx")}
        out = self.latest.restore(
            step,
            args=self.ocp.args.Composite(state=self.ocp.args.StandardRestore(target), meta=self.ocp.args.JsonRestore()),
        )
        return like.replace(**out["state"]), out["meta"]

    def close(self) -> None:
        self.latest.close()
        self.best.close()


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxmnist.train",
        description="Train one of the blog's networks on MNIST with JAX/Flax.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument("--logdir", help="TensorBoard events, metrics.json, curves.png (default runs/<preset>)")
    p.add_argument("--workdir", help="checkpoints (latest and best, every epoch)")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --workdir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        preset, config = config_from_args(args)
        logdir = args.logdir or os.path.join("runs", preset)
        try:
            Path(logdir).mkdir(parents=True, exist_ok=True)
            probe = Path(logdir) / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UsageError(f"cannot write to --logdir {logdir}: {e.strerror}") from None
        train_and_evaluate(
            config,
            preset=preset,
            data_dir=args.data_dir,
            logdir=logdir,
            workdir=args.workdir,
            resume=args.resume,
            progress=not args.no_progress,
        )
    except (UsageError, data_lib.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted" + (f"; continue with --resume --workdir {args.workdir}" if args.workdir else ""),
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
