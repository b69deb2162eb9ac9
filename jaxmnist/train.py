"""Training on the host: the epoch loop around jaxmnist.engine's compiled programs, checkpoints, logs, the CLI.

    python -m jaxmnist.train --model resnet            # the blog's ResNet preset
    python -m jaxmnist.train --preset cnn_cpu --epochs 3
    python -m jaxmnist.train --help

Why it is fast: the uint8 dataset is put on the device once; every program the run needs is compiled before
the first epoch (the time is reported apart); an epoch runs as a few chunks of steps with the state donated,
and the host queues chunk k+1 before it waits on chunk k's per-batch metrics, so there is no host sync per
step. After the first epoch nothing compiles again (counted, and reported).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import cli, engine, optim, runlog
from jaxmnist import data as data_lib
from jaxmnist.checkpoint import Checkpointer
from jaxmnist.cli import UsageError
from jaxmnist.presets import (
    Config,
    config_from_args,
    plateau_arguments,
    split_train,
    tests_with_batch_statistics,
    trainer_parser,
    trains_in_eval_mode,
    validate,
)


# ------------------------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class DeviceData:
    """A run's splits on the device: uint8 images [n,28,28] and int32 labels [n]; `val` only with --val-size."""

    train: tuple[jax.Array, jax.Array]
    test: tuple[jax.Array, jax.Array]
    val: tuple[jax.Array, jax.Array] | None
    source: str

    @property
    def n_train(self) -> int:
        return int(self.train[1].shape[0])


def put_on_device(data: data_lib.Dataset, config: Config) -> DeviceData:
    """The training split (after --train-size and --val-size), the test set and the validation split."""

    def put(images, labels):
        return jax.device_put(images), jax.device_put(labels.astype(np.int32))

    train, val = split_train(data, config)
    return DeviceData(
        train=put(*train),
        test=put(data.test_images, data.test_labels),
        val=put(*val) if val is not None else None,
        source=data.source,
    )


def epoch_steps(config: Config, n_train: int) -> int:
    """Full batches per epoch (the ragged tail is dropped), at most --max-steps."""
    steps = n_train // config.batch_size
    if steps == 0:
        raise UsageError(f"--batch-size {config.batch_size} exceeds the {n_train} training images")
    return min(steps, config.max_steps) if config.max_steps else steps


# ------------------------------------------------------------------------------------- programs
@dataclasses.dataclass
class Training:
    """An epoch's compiled programs: a chunk of steps per (train mode, length), and the epoch's batch indices."""

    chunks: dict[tuple[bool, int], Callable]
    indices: Callable  # epoch (int32) -> one [steps, B] index array per chunk


def compile_training(config: Config, state, train, bounds, unroll: bool) -> Training:
    """Every chunk variant the run will call: both train modes if the blog's quirk 1 (docs/experiments.md)
    switches to eval mode, and each chunk length of `bounds` (at most two)."""
    jit_chunk = jax.jit(engine.train_chunk, donate_argnums=0, static_argnames=("augment", "train", "unroll"))
    modes = sorted({not trains_in_eval_mode(config, e) for e in range(config.epochs)})
    chunks = {}
    for mode in modes:
        for size in sorted({e - s for s, e in bounds}):
            idx = jax.ShapeDtypeStruct((size, config.batch_size), jnp.int32)
            lowered = jit_chunk.lower(state, *train, idx, augment=config.augment, train=mode, unroll=unroll)
            chunks[mode, size] = lowered.compile()
    n_train = train[1].shape[0]
    indices = jax.jit(engine.epoch_indices, static_argnums=(0, 2, 3, 4)).lower(
        config.seed, jnp.int32(0), n_train, config.batch_size, tuple(bounds)
    )
    return Training(chunks, indices.compile())


@dataclasses.dataclass
class Evaluation:
    """The compiled passes over the test set and the validation split, once per epoch."""

    test: Callable
    val: Callable | None
    test_augment_key: jax.Array | None  # the blog's quirk 2: the test set augmented, fresh every epoch

    def __call__(self, state, data: DeviceData, epoch: int) -> tuple[dict, dict | None]:
        key = None if self.test_augment_key is None else jax.random.fold_in(self.test_augment_key, epoch)
        test = jax.device_get(self.test(state, *data.test, key))
        val = jax.device_get(self.val(state, *data.val, None)) if self.val else None
        return test, val


def compile_evaluation(config: Config, state, data: DeviceData) -> Evaluation:
    jit_eval = jax.jit(engine.evaluate, static_argnames=("batch_size", "batch_statistics"))
    kwargs = {"batch_size": config.eval_batch_size, "batch_statistics": tests_with_batch_statistics(config)}
    key = jax.random.PRNGKey(config.seed ^ 0x7E57) if config.blog_quirks and config.augment else None
    return Evaluation(
        test=jit_eval.lower(state, *data.test, key, **kwargs).compile(),
        val=jit_eval.lower(state, *data.val, None, **kwargs).compile() if data.val else None,
        test_augment_key=key,
    )


class Diverged(Exception):
    """The loss or the state stopped being finite in epoch `epoch` (from 0), at step `step` of it (from 1)."""

    def __init__(self, epoch: int, step: int, loss: float):
        what = f"loss {loss}" if not np.isfinite(loss) else f"loss {loss:.3g}, then non-finite parameters"
        super().__init__(f"training diverged in epoch {epoch + 1} at step {step} ({what})")
        self.epoch, self.step = epoch, step


def train_epoch(training: Training, state, train, epoch: int, mode: bool, bar=None):
    """One epoch of chunks; returns (state, per-batch accuracy, per-batch loss) as host arrays. The host waits on
    a chunk's metrics only once the next chunk is queued, and checks them then: a non-finite loss or state
    raises Diverged at the end of the chunk where it appeared."""
    metrics, pending, done = [], None, 0
    for idx in training.indices(jnp.int32(epoch)):
        state, m = training.chunks[mode, idx.shape[0]](state, *train, idx)
        if pending is not None:
            metrics.append(_fetch(pending, bar, epoch, done))
            done += len(metrics[-1]["loss"])
        pending = m
    metrics.append(_fetch(pending, bar, epoch, done))
    return state, np.concatenate([m["accuracy"] for m in metrics]), np.concatenate([m["loss"] for m in metrics])


def _fetch(metrics, bar, epoch: int, done: int):
    metrics = jax.device_get(metrics)
    bad = np.flatnonzero(~np.isfinite(metrics["loss"]))
    if len(bad) or not metrics["finite"]:
        step = int(bad[0]) if len(bad) else len(metrics["loss"]) - 1
        raise Diverged(epoch, done + step + 1, float(metrics["loss"][step]))
    if bar is not None:
        bar.update(len(metrics["loss"]))
    return metrics


# ------------------------------------------------------------------------------- compile accounting
_COMPILES = [0]


def _count_compiles(event: str, *args, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def compile_count() -> int:
    """Backend compilations so far in this process (every jit variant, eager op and AOT compile counts)."""
    return _COMPILES[0]


class RecompileWatch:
    """Counts compilations from the start of the second epoch run; None until that epoch has ended."""

    def __init__(self, first_epoch: int):
        self.first_epoch, self.start, self.after_first = first_epoch, None, None

    def epoch_started(self, epoch: int) -> None:
        if epoch == self.first_epoch + 1:
            self.start = compile_count()

    def epoch_ended(self, epoch: int) -> None:
        if epoch > self.first_epoch:
            self.after_first = compile_count() - self.start


# ------------------------------------------------------------------------------------- checkpoints
# What a resumed run may change: a lower learning rate after a divergence, more epochs.
RESUMABLE_CHANGES = ("lr", "epochs")


def resume_from(ckpt: Checkpointer, state, config: Config, plateau, report: runlog.Report):
    """(state, epochs done) from the newest intact checkpoint, with the plateau rule and the run log restored;
    (state, 0) when there is none. Other settings than RESUMABLE_CHANGES are a usage error; with a new --lr,
    training continues at it."""
    restored = ckpt.restore_latest(state)
    if restored is None:
        if ckpt.damaged:
            raise cli.RunError(f"no intact checkpoint is left in {ckpt.workdir}; remove it to start over")
        report.say(f"no checkpoint in {ckpt.workdir}: starting from scratch")
        return state, 0
    state, meta = restored
    current = dataclasses.asdict(config)
    changed = sorted(k for k in meta["config"].keys() | current.keys() if meta["config"].get(k) != current.get(k))
    if set(changed) - set(RESUMABLE_CHANGES):
        raise UsageError(f"checkpoint in {ckpt.workdir} was made with different settings: {', '.join(changed)}")
    plateau.load_state_dict(meta["plateau"])
    if report.log and meta.get("record"):
        report.log.record = meta["record"]
    report.say(f"resumed from {ckpt.workdir} after epoch {meta['epoch']}")
    if "lr" in changed:
        report.say(f"learning rate {meta['config']['lr']:g} -> {config.lr:g} (--lr)")
        plateau.lr = config.lr
        state = state.replace(lr=jnp.asarray(config.lr, jnp.float32))
    return state, meta["epoch"]


def diverged_error(e: Diverged, ckpt: Checkpointer | None, workdir) -> cli.RunError:
    """The one line a divergence ends the run with: where, the last good checkpoint, what to try."""
    last = ckpt.latest_epoch() if ckpt else None
    if last:
        where = (
            f"the last good checkpoint is epoch {last} in {workdir}: "
            f"continue from it with --resume --workdir {workdir} and a lower --lr"
        )
    elif ckpt:
        where = f"no epoch was checkpointed yet in {workdir}; start again with a lower --lr"
    else:
        where = "no checkpoint was kept (--workdir keeps one per epoch); start again with a lower --lr"
    return cli.RunError(f"{e}; {where}")


def save(ckpt: Checkpointer, state, config: Config, epoch: int, test_acc: float, plateau, report) -> None:
    meta = {
        "config": dataclasses.asdict(config),
        "epoch": epoch + 1,
        "plateau": plateau.state_dict(),
        "record": report.log.record if report.log else None,
    }
    ckpt.save(state, epoch + 1, test_acc, meta)


# ---------------------------------------------------------------------------------------- the loop
def announce(report: runlog.Report, config: Config, preset, data: DeviceData, steps: int, compile_s: float) -> None:
    """The lines before the first epoch: device, experiment, data, schedule, compile time, the blog's header."""
    report.preamble(
        f"device: {device_name()} ({jax.default_backend()}), jax {jax.__version__}",
        config,
        preset,
        data.source,
        n_train=data.n_train,
        steps=steps,
        tail="ragged tail dropped",
        n_test=int(data.test[1].shape[0]),
        n_val=int(data.val[1].shape[0]) if data.val else None,
        monitor="validation accuracy" if data.val else "test accuracy",
        notes=(f"compile: {compile_s:.2f} s (kept out of the epoch times)",),
    )


@dataclasses.dataclass
class Result:
    state: engine.TrainState
    record: dict


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', d.platform)}"


def train_and_evaluate(
    config: Config,
    *,
    preset: str | None = None,
    data: data_lib.Dataset | None = None,
    data_dir: str | None = None,
    logdir: str | os.PathLike | None = None,
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    chunk_steps: int | None = None,
    unroll: bool | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    out=None,
) -> Result:
    """Trains `config`, evaluating after every epoch; prints the blog's lines; returns the final state and the
    run record. An epoch runs as the chunks of `engine.chunk_bounds` (`chunk_steps`, `unroll`: default 8
    unrolled steps on CPU, an eighth of the epoch as a rolled scan elsewhere). `stop_after_epoch` simulates a
    killed run (for tests)."""
    validate(config)
    if resume and not workdir:
        raise UsageError("--resume needs --workdir")
    if logdir:
        runlog.writable_logdir(logdir)
    unroll = jax.default_backend() == "cpu" if unroll is None else unroll

    # Data, state, schedule, logs: everything the loop works on.
    data = put_on_device(data or data_lib.load(config.dataset, data_dir, progress=progress), config)
    steps = epoch_steps(config, data.n_train)
    bounds = engine.chunk_bounds(steps, chunk_steps, unroll)
    state = engine.create_state(config, jax.random.PRNGKey(config.seed), total_steps=steps * config.epochs)
    plateau = optim.ReduceLROnPlateau(config.lr, **plateau_arguments(config))
    report = runlog.Report.for_run(
        out, logdir, framework="jax", preset=preset, config=config, device=device_name(), n_train=data.n_train
    )
    ckpt = Checkpointer(workdir) if workdir else None
    for note in ckpt.damaged if ckpt else ():
        report.say(note)
    state, first_epoch = resume_from(ckpt, state, config, plateau, report) if resume else (state, 0)

    # Compile everything up front, then say what will run.
    t0 = time.perf_counter()
    training = compile_training(config, state, data.train, bounds, unroll)
    evaluation = compile_evaluation(config, state, data)
    compile_s = time.perf_counter() - t0
    announce(report, config, preset, data, steps, compile_s)

    # The epochs.
    epoch_times, watch = [], RecompileWatch(first_epoch)
    for epoch in range(first_epoch, config.epochs):
        watch.epoch_started(epoch)
        t_start = time.perf_counter()
        with runlog.epoch_bar(epoch, config.epochs, steps, progress) as bar:
            mode = not trains_in_eval_mode(config, epoch)
            try:
                state, batch_acc, batch_loss = train_epoch(training, state, data.train, epoch, mode, bar)
            except Diverged as e:  # nothing of this epoch is saved: latest and best stay the last good ones
                raise diverged_error(e, ckpt, workdir) from None
        test, val = evaluation(state, data, epoch)
        epoch_times.append(time.perf_counter() - t_start)
        lr = float(state.step_lr())  # the rate the next step will use: with a per-step schedule, the epoch's last
        if config.plateau and not config.blog_quirks:  # quirk 3: the blog never steps its scheduler
            state = state.replace(lr=jnp.asarray(plateau.step(float((val or test)["accuracy"])), jnp.float32))
        report.epoch(
            epoch,
            test=test,
            val=val,
            batch_acc=batch_acc,
            batch_loss=batch_loss,
            lr=lr,
            next_lr=float(state.step_lr()),
            time_s=epoch_times[-1],
        )
        if ckpt:
            save(ckpt, state, config, epoch, float(test["accuracy"]), plateau, report)
        watch.epoch_ended(epoch)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break

    record = report.finish(epoch_times, compile_s=compile_s, recompiles=watch.after_first)
    if watch.after_first is not None:
        report.say(f"recompilations after the first epoch: {watch.after_first}")
    if ckpt:
        ckpt.close()
    return Result(state=state, record=record)


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> cli.ArgumentParser:
    p = trainer_parser("python -m jaxmnist.train", "Train one of the blog's networks on MNIST with JAX/Flax.")
    p.add_argument("--logdir", help="TensorBoard events, metrics.json, curves.png (default runs/<preset>)")
    p.add_argument("--workdir", help="checkpoints (latest and best, every epoch)")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --workdir")
    return p


def _main(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    preset, config = config_from_args(args)
    cli.stop_on_sigterm()
    try:
        train_and_evaluate(
            config,
            preset=preset,
            data_dir=args.data_dir,
            logdir=args.logdir or os.path.join("runs", preset),
            workdir=args.workdir,
            resume=args.resume,
            progress=not args.no_progress,
        )
    except (KeyboardInterrupt, cli.Terminated) as e:
        if not args.workdir:
            raise
        hint = f"continue with --resume --workdir {args.workdir}"
        raise cli.Interrupted(hint, terminated=isinstance(e, cli.Terminated)) from None


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv), user_errors=(data_lib.DataError,))


if __name__ == "__main__":
    sys.exit(main())
