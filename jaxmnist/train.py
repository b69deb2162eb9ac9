"""Training on the host: the epoch loop around jaxmnist.engine's compiled programs, checkpoints, logs, the CLI.

    python -m jaxmnist.train --model resnet            # the blog's ResNet preset
    python -m jaxmnist.train --preset cnn_cpu --epochs 3
    python -m jaxmnist.train --preset cnn_tb --seeds 8          # 8 seeds: vmapped on a GPU, in turn on a CPU
    python -m jaxmnist.train --help

Why it is fast: the uint8 dataset is put on the device once; every program the run needs is compiled before
the first epoch (the time is reported apart); an epoch runs as a few chunks of steps with the state donated,
and the host queues chunk k+1 before it waits on chunk k's per-batch metrics, so there is no host sync per
step. After the first epoch nothing compiles again (counted, and reported).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import cli, convs, distributed, engine, evaluate, interop, models, optim, predict, runlog
from jaxmnist import data as data_lib
from jaxmnist.checkpoint import Checkpointer
from jaxmnist.cli import UsageError
from jaxmnist.convs import ConvPlan
from jaxmnist.distributed import Placement
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


def put_on_device(data: data_lib.Dataset, config: Config, placement: Placement = Placement()) -> DeviceData:
    """The training split (after --train-size and --val-size), the test set and the validation split: on the
    default device, or replicated on every device of the placement's mesh."""

    def put(images, labels):
        if placement.mesh is not None:
            return placement.replicate((images, labels.astype(np.int32)))
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


# ------------------------------------------------------------------------------------------- seeds
SEED_MODES = ("auto", "vmap", "sequential")


@dataclasses.dataclass(frozen=True)
class Seeds:
    """The seeds one program trains: one alone (`vmapped=False`), or several whose states are stacked on a
    leading axis and vmapped through the chunk, the step and the evaluation."""

    seeds: tuple[int, ...]
    vmapped: bool = False

    def __post_init__(self):
        if not self.vmapped and len(self.seeds) != 1:
            raise ValueError("several seeds in one program must be vmapped")

    def map(self, fn: Callable, in_axes) -> Callable:
        """`fn` over the stack (the axis 0 of the arguments `in_axes` marks 0), or `fn` itself for one seed."""
        return jax.vmap(fn, in_axes=in_axes) if self.vmapped else fn

    def array(self, values, dtype=None) -> jax.Array:
        """Per-seed values (as many as seeds) as the program takes them: stacked, or the one value."""
        return jnp.asarray(values if self.vmapped else values[0], dtype)

    def take(self, tree, i: int):
        """Seed i's part of a host or device tree the program returned."""
        return jax.tree.map(lambda x: x[i], tree) if self.vmapped else tree

    def create_state(
        self, config: Config, total_steps: int, variables: dict | None = None, conv_plan: ConvPlan = convs.XLA
    ) -> engine.TrainState:
        """Each seed's fresh state (its own initialisation and keys), stacked when vmapped: vmap draws every
        seed's initial weights exactly as the seed alone would. `variables` (e.g. from --init-from) replace the
        initialisation, the same for every seed."""
        keys = jnp.stack([jax.random.PRNGKey(s) for s in self.seeds])
        create = functools.partial(
            engine.create_state, config, variables=variables, total_steps=total_steps, conv_plan=conv_plan
        )
        return jax.vmap(create)(keys) if self.vmapped else create(keys[0])


def parse_seeds(text: str) -> tuple[int, ...]:
    """'8' -> seeds 0..7; '3-5' -> 3, 4, 5; '0,4,9' -> those."""
    try:
        if "," in text:
            seeds = tuple(int(t) for t in text.split(","))
        elif "-" in text.strip()[1:]:
            first, last = (int(t) for t in text.split("-", 1))
            seeds = tuple(range(first, last + 1))
        else:
            seeds = tuple(range(int(text)))
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r}: expected a count (8), a range (0-7) or distinct seeds (0,3,5), all >= 0")
    return seeds


def choose_seed_mode(mode: str, config: Config, n: int) -> tuple[str, str]:
    """(mode, why): how to train n seeds. 'auto' vmaps them on accelerators and runs them one after another on
    the CPU, where vmapped convolutions become grouped ones and run slower than the seeds in turn
    (benchmarks/README.md)."""
    if mode not in SEED_MODES:
        raise UsageError(f"--seed-mode {mode!r}: choose from {', '.join(SEED_MODES)}")
    if n == 1:
        return "sequential", "one seed"
    if config.val_size and mode == "vmap":
        raise UsageError("--seed-mode vmap cannot hold out --val-size: each seed holds out its own validation images")
    if mode != "auto":
        return mode, f"--seed-mode {mode}"
    if config.val_size:
        return "sequential", "each seed holds out its own --val-size images"
    if jax.default_backend() == "cpu":
        return "sequential", "vmapped convolutions are slower than sequential ones on the CPU"
    return "vmap", f"vmapped on {jax.default_backend()}"


# ------------------------------------------------------------------------------------- programs
@dataclasses.dataclass
class Training:
    """An epoch's compiled programs: a chunk of steps per (train mode, length), and the epoch's batch indices."""

    chunks: dict[tuple[bool, int], Callable]
    indices: Callable  # epoch (int32) -> one [steps, B] index array per chunk ([seeds, steps, B] vmapped)
    seeds: Seeds

    def epoch_indices(self, epoch: int):
        return self.indices(self.seeds.array(self.seeds.seeds), jnp.int32(epoch))


def shardings(placement: Placement, inputs: tuple, outputs) -> dict:
    """jit's in_shardings and out_shardings on a mesh (None: replicated); nothing on one device."""
    if placement.mesh is None:
        return {}

    def fill(sharding):
        return placement.replicated() if sharding is None else sharding

    return {
        "in_shardings": tuple(map(fill, inputs)),
        "out_shardings": jax.tree.map(fill, outputs, is_leaf=lambda x: x is None),
    }


def compile_training(
    config: Config,
    state,
    train,
    bounds,
    unroll: bool,
    seeds: Seeds | None = None,
    placement: Placement = Placement(),
    conv_plan: ConvPlan = convs.XLA,
) -> Training:
    """Every chunk variant the run will call: both train modes if the blog's quirk 1 (docs/experiments.md)
    switches to eval mode, and each chunk length of `bounds` (at most two). On a mesh, the indices' batch axis
    is sharded, all else replicated. `conv_plan`: the state's network's, for its compiler options."""
    seeds = seeds or Seeds((config.seed,))
    stack = (len(seeds.seeds),) if seeds.vmapped else ()
    placement.check_batch(config.batch_size)
    batch = placement.batch(leading=len(stack) + 1)  # [(seeds,) steps, B]
    modes = sorted({not trains_in_eval_mode(config, e) for e in range(config.epochs)})
    chunks = {}
    for mode in modes:
        chunk = functools.partial(engine.train_chunk, augment=config.augment, train=mode, unroll=unroll)
        sharded = shardings(placement, (None, None, None, batch), (None, None))
        options = conv_plan.compiler_options
        jit_chunk = jax.jit(seeds.map(chunk, (0, None, None, 0)), donate_argnums=0, compiler_options=options, **sharded)
        for size in sorted({e - s for s, e in bounds}):
            idx = jax.ShapeDtypeStruct((*stack, size, config.batch_size), jnp.int32, sharding=batch)
            chunks[mode, size] = jit_chunk.lower(state, *train, idx).compile()
    shuffle = functools.partial(
        engine.epoch_indices, n=int(train[1].shape[0]), batch_size=config.batch_size, bounds=tuple(bounds)
    )
    sharded = shardings(placement, (None, None), batch)
    indices = jax.jit(seeds.map(shuffle, (0, None)), **sharded).lower(seeds.array(seeds.seeds), jnp.int32(0))
    return Training(chunks, indices.compile(), seeds)


@dataclasses.dataclass
class Evaluation:
    """The compiled passes over the test set and the validation split, once per epoch."""

    test: Callable
    val: Callable | None
    test_augment_key: jax.Array | None  # the blog's quirk 2: the test set augmented, fresh every epoch
    seeds: Seeds

    def __call__(self, state, data: DeviceData, epoch: int) -> tuple[dict, dict | None]:
        key = self.test_augment_key
        if key is not None:
            key = self.seeds.map(jax.random.fold_in, (0, None))(key, epoch)
        test = jax.device_get(self.test(state, *data.test, key))
        val = jax.device_get(self.val(state, *data.val, None)) if self.val else None
        return test, val


def test_augment_key(config: Config, seeds: Seeds) -> jax.Array | None:
    """The blog's quirk 2 augments the test set: from each seed's own key."""
    if not (config.blog_quirks and config.augment):
        return None
    return seeds.array(jnp.stack([jax.random.PRNGKey(s ^ 0x7E57) for s in seeds.seeds]))


def compile_evaluation(
    config: Config,
    state,
    data: DeviceData,
    seeds: Seeds | None = None,
    placement: Placement = Placement(),
    conv_plan: ConvPlan = convs.XLA,
) -> Evaluation:
    """The test and validation passes. On a mesh every device evaluates the whole split (replicated): about a
    twentieth of an epoch's work, left unsharded. `conv_plan`: the state's network's, for its compiler options."""
    seeds = seeds or Seeds((config.seed,))
    kwargs = {"batch_size": config.eval_batch_size, "batch_statistics": tests_with_batch_statistics(config)}
    pass_ = functools.partial(engine.evaluate, **kwargs)
    key = placement.replicate(test_augment_key(config, seeds))
    sharded = shardings(placement, (None,) * 4, None)
    options = conv_plan.compiler_options
    jit_test = jax.jit(
        seeds.map(pass_, (0, None, None, None if key is None else 0)), compiler_options=options, **sharded
    )
    jit_val = jax.jit(seeds.map(pass_, (0, None, None, None)), compiler_options=options, **sharded)
    return Evaluation(
        test=jit_test.lower(state, *data.test, key).compile(),
        val=jit_val.lower(state, *data.val, None).compile() if data.val else None,
        test_augment_key=key,
        seeds=seeds,
    )


class Diverged(Exception):
    """The loss or the state stopped being finite in epoch `epoch` (from 0), at step `step` of it (from 1);
    `seed` says which of vmapped seeds did (None for one seed alone)."""

    def __init__(self, epoch: int, step: int, loss: float, seed: int | None = None):
        what = f"loss {loss}" if not np.isfinite(loss) else f"loss {loss:.3g}, then non-finite parameters"
        who = "" if seed is None else f"seed {seed}: "
        super().__init__(f"{who}training diverged in epoch {epoch + 1} at step {step} ({what})")
        self.epoch, self.step, self.seed = epoch, step, seed


def train_epoch(training: Training, state, train, epoch: int, mode: bool, bar=None):
    """One epoch of chunks; returns (state, per-batch accuracy, per-batch loss) as host arrays ([seeds, steps]
    when vmapped). The host waits on a chunk's metrics only once the next chunk is queued, and checks them then:
    a non-finite loss or state raises Diverged at the end of the chunk where it appeared."""
    metrics, pending, done = [], None, 0
    for idx in training.epoch_indices(epoch):
        state, m = training.chunks[mode, idx.shape[-2]](state, *train, idx)
        if pending is not None:
            metrics.append(_fetch(pending, bar, epoch, done, training.seeds))
            done += metrics[-1]["loss"].shape[-1]
        pending = m
    metrics.append(_fetch(pending, bar, epoch, done, training.seeds))
    return (
        state,
        np.concatenate([m["accuracy"] for m in metrics], axis=-1),
        np.concatenate([m["loss"] for m in metrics], axis=-1),
    )


def _fetch(metrics, bar, epoch: int, done: int, seeds: Seeds):
    metrics = jax.device_get(metrics)
    losses, finite = np.atleast_2d(metrics["loss"]), np.atleast_1d(metrics["finite"])  # [seeds, steps], [seeds]
    for i, seed in enumerate(seeds.seeds):
        bad = np.flatnonzero(~np.isfinite(losses[i]))
        if len(bad) or not finite[i]:
            step = int(bad[0]) if len(bad) else losses.shape[1] - 1
            raise Diverged(epoch, done + step + 1, float(losses[i, step]), seed if seeds.vmapped else None)
    if bar is not None:
        bar.update(losses.shape[1])
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


@dataclasses.dataclass
class SeedRun:
    """One seed's host side: its plateau rule (stepped on its own accuracy) and its report (lines, logs)."""

    seed: int
    plateau: optim.ReduceLROnPlateau
    report: runlog.Report


def host_meta(runs: list[SeedRun], seeds: Seeds) -> dict:
    """What a checkpoint keeps of the host side: each seed's plateau rule and run log (one seed: unlisted)."""
    plateau = [r.plateau.state_dict() for r in runs]
    record = [r.report.log.record if r.report.log else None for r in runs]
    if not seeds.vmapped:
        return {"plateau": plateau[0], "record": record[0]}
    return {"seeds": list(seeds.seeds), "plateau": plateau, "record": record}


def resume_from(ckpt: Checkpointer, state, config: Config, runs: list[SeedRun], seeds: Seeds, say: Callable):
    """(state, epochs done) from the newest intact checkpoint, with each seed's plateau rule and run log
    restored; (state, 0) when there is none. Other settings than RESUMABLE_CHANGES are a usage error; with a
    new --lr, training continues at it."""
    restored = ckpt.restore_latest(state)
    if restored is None:
        if ckpt.damaged:
            raise cli.RunError(f"no intact checkpoint is left in {ckpt.workdir}; remove it to start over")
        say(f"no checkpoint in {ckpt.workdir}: starting from scratch")
        return state, 0
    state, meta = restored
    current = dataclasses.asdict(config)
    changed = sorted(k for k in meta["config"].keys() | current.keys() if meta["config"].get(k) != current.get(k))
    if meta.get("seeds", [config.seed]) != list(seeds.seeds):
        changed.append("seeds")
    if set(changed) - set(RESUMABLE_CHANGES):
        raise UsageError(f"checkpoint in {ckpt.workdir} was made with different settings: {', '.join(changed)}")
    listed = (lambda x: x) if seeds.vmapped else (lambda x: [x])
    for run, plateau, record in zip(runs, listed(meta["plateau"]), listed(meta.get("record"))):
        run.plateau.load_state_dict(plateau)
        if run.report.log and record:
            run.report.log.record = record
    say(f"resumed from {ckpt.workdir} after epoch {meta['epoch']}")
    if "lr" in changed:
        say(f"learning rate {meta['config']['lr']:g} -> {config.lr:g} (--lr)")
        for run in runs:
            run.plateau.lr = config.lr
        state = state.replace(lr=seeds.array([config.lr] * len(runs), jnp.float32))
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


def save(ckpt: Checkpointer, state, config: Config, epoch: int, test_acc: float, meta: dict) -> None:
    """The epoch's checkpoint; `test_acc` (the mean over vmapped seeds) decides whether it is the best."""
    ckpt.save(state, epoch + 1, test_acc, {"config": dataclasses.asdict(config), "epoch": epoch + 1, **meta})


def choose_conv_plan(
    config: Config, impl: str | None, resuming: Checkpointer | None, placement: Placement, say: Callable
) -> ConvPlan:
    """How the run's convolutions run: a resumed run's as its checkpoint recorded them (so that it continues bit
    for bit), else `--conv-impl` (`convs.plan_for`: on the CPU `auto` times the candidates once per machine)."""
    meta = resuming.read_meta() if resuming and resuming.latest_epoch() else None
    if meta and "conv_plan" in meta:
        return ConvPlan.from_json(meta["conv_plan"])
    model = models.get_model(config.model, num_classes=config.num_classes)
    return convs.plan_for(impl, model, config.batch_size // placement.size, say)


# ---------------------------------------------------------------------------------------- the loop
def announce(out, config: Config, preset, data: DeviceData, steps: int, notes: tuple[str, ...]) -> None:
    """The lines before the first epoch: device, experiment, data, schedule, `notes`, the blog's header."""
    runlog.Report(out).preamble(
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
        notes=notes,
    )


@dataclasses.dataclass
class Result:
    state: engine.TrainState
    record: dict


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', d.platform)}"


def train_and_evaluate(config: Config, **kwargs) -> Result:
    """Trains `config` (its one seed), evaluating after every epoch; prints the blog's lines; returns the final
    state and the run record. Keyword arguments: `_train`'s (data, logdir, workdir, resume, placement, init, ...)."""
    return _train(config, Seeds((config.seed,)), **kwargs)[0]


def train_seeds(
    config: Config,
    seeds: tuple[int, ...],
    mode: str = "auto",
    *,
    data: data_lib.Dataset | None = None,
    data_dir: str | None = None,
    logdir: str | os.PathLike | None = None,
    workdir: str | os.PathLike | None = None,
    out=None,
    progress: bool = True,
    **kwargs,
) -> list[Result]:
    """Trains `config` once per seed, each run as `train_and_evaluate` trains it alone: all in one vmapped
    program, or one after another (`mode`, see `choose_seed_mode`). With several seeds, each logs to
    LOGDIR/seed<k>; vmapped seeds checkpoint together in WORKDIR, sequential ones in WORKDIR/seed<k>; a mean ± std
    line and LOGDIR/seeds.json end the run. Other keyword arguments: `_train`'s."""
    validate(config)
    if kwargs.get("resume") and not workdir:
        raise UsageError("--resume needs --workdir")
    if len(seeds) == 1:
        run = dict(data=data, data_dir=data_dir, logdir=logdir, workdir=workdir, out=out, progress=progress)
        return _train(config.replace(seed=seeds[0]), Seeds(tuple(seeds)), **run, **kwargs)

    def per_seed(root, seed):
        return None if root is None else os.path.join(root, f"seed{seed}")

    mode, why = choose_seed_mode(mode, config, len(seeds))
    say = runlog.Report(out).say
    data = data or data_lib.load(config.dataset, data_dir, progress=progress)
    listed = ", ".join(map(str, seeds))
    t0 = time.perf_counter()
    if mode == "vmap":
        say(f"seeds {listed}: in one vmapped program ({why})")
        logdirs = [per_seed(logdir, s) for s in seeds]
        run = dict(data=data, logdirs=logdirs, workdir=workdir, out=out, progress=progress)
        results = _train(config.replace(seed=seeds[0]), Seeds(tuple(seeds), vmapped=True), **run, **kwargs)
    else:
        say(f"seeds {listed}: one after another ({why})")
        programs: dict = {}  # compiled once, for every seed
        results = []
        for seed in seeds:
            say(f"--- seed {seed}")
            run = dict(data=data, logdir=per_seed(logdir, seed), workdir=per_seed(workdir, seed), out=out)
            results += _train(
                config.replace(seed=seed), Seeds((seed,)), **run, progress=progress, programs=programs, **kwargs
            )
    summary = seeds_summary(results, seeds, mode, time.perf_counter() - t0)
    say(summary["line"])
    if logdir:
        runlog.atomic_write(Path(logdir) / "seeds.json", json.dumps(summary, indent=1).encode())
    return results


def seeds_summary(results: list[Result], seeds, mode: str, wall_s: float) -> dict:
    """Mean ± std of the final and best test accuracy over the seeds, and the wall time per seed."""
    final = [r.record.get("final_acc") for r in results]
    best = [r.record.get("best_acc") for r in results]
    stats = lambda xs: {"mean": float(np.mean(xs)), "std": float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0}  # noqa: E731
    summary = {"seeds": list(seeds), "mode": mode, "wall_s": wall_s, "wall_s_per_seed": wall_s / len(seeds)}
    if None not in final:
        summary.update(final_acc={**stats(final), "each": final}, best_acc={**stats(best), "each": best})
    acc = (
        f"final {summary['final_acc']['mean']:.2f} ± {summary['final_acc']['std']:.2f} %, " if None not in final else ""
    )
    summary["line"] = f"{len(seeds)} seed(s), {mode}: {acc}{wall_s:.1f} s in all, {wall_s / len(seeds):.1f} s per seed"
    return summary


def write_reports(runs: list[SeedRun], state, seeds: Seeds, data: DeviceData, config: Config) -> None:
    """Each logged seed's evaluation report (jaxmnist.evaluate) of its final weights on the test set, into its
    logdir and its TensorBoard events."""
    logged = [(i, run) for i, run in enumerate(runs) if run.report.log]
    if not logged:
        return
    # Everything on the host first: on a mesh of several processes only process 0 writes reports, and a program
    # over the mesh's global arrays (even a slice) would wait for the others.
    images, labels = np.asarray(data.test[0]), np.asarray(data.test[1])
    weights = jax.device_get(state.eval_variables())
    for i, run in logged:
        variables = seeds.take(weights, i)
        probs = predict.probabilities(state.apply_fn, variables, images, config.eval_batch_size)
        summary = evaluate.summarise(probs, labels)
        log = run.report.log
        evaluate.write(summary, images, log.dir, log.writer, step=len(log.record["epochs"]))
        run.report.say(f"report: {len(summary['misclassified'])} test digits misclassified; in {log.dir}: "
                       "report.json, confusion.png, misclassified.png")  # fmt: skip


def _train(
    config: Config,
    seeds: Seeds,
    *,
    preset: str | None = None,
    data: data_lib.Dataset | None = None,
    data_dir: str | None = None,
    logdir: str | os.PathLike | None = None,
    logdirs: list | None = None,
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    chunk_steps: int | None = None,
    unroll: bool | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    programs: dict | None = None,
    placement: Placement = Placement(),
    init: dict | None = None,
    report: bool = True,
    conv_impl: str | None = None,
    out=None,
) -> list[Result]:
    """The training loop, for one seed or for vmapped seeds (`seeds`). An epoch runs as the chunks of
    `engine.chunk_bounds` (`chunk_steps`, `unroll`: default 8 unrolled steps on CPU, an eighth of the epoch as
    a rolled scan elsewhere). `logdirs` are the vmapped seeds' (`logdir` one seed's); `programs`, a dict shared
    by runs of the same shapes, keeps the compiled programs for the next; `stop_after_epoch` simulates a killed
    run (for tests). `placement`: the devices (one by default; a mesh for data parallelism). `init`: weights to
    start from ({'params', 'batch_stats'}, e.g. a PyTorch state_dict's, `--init-from`) instead of the init. `report`:
    the evaluation report into each logdir at the end (`write_reports`). `conv_impl`: how the convolutions run
    (`--conv-impl`, `choose_conv_plan`)."""
    validate(config)
    placement.check_batch(config.batch_size)
    if resume and not workdir:
        raise UsageError("--resume needs --workdir")
    logdirs = logdirs or [logdir]
    for d in logdirs:
        if d:
            runlog.writable_logdir(d)
    unroll = jax.default_backend() == "cpu" if unroll is None else unroll
    say = runlog.Report(out).say

    # Data, states, schedules, logs: everything the loop works on.
    data = put_on_device(data or data_lib.load(config.dataset, data_dir, progress=progress), config, placement)
    steps = epoch_steps(config, data.n_train)
    bounds = engine.chunk_bounds(steps, chunk_steps, unroll)
    ckpt = Checkpointer(workdir) if workdir else None
    plan = choose_conv_plan(config, conv_impl, ckpt if resume else None, placement, say)
    state = seeds.create_state(config, total_steps=steps * config.epochs, variables=init, conv_plan=plan)
    state = placement.replicate(state)
    prefix = (lambda seed: f"seed {seed} ") if seeds.vmapped else (lambda seed: "")
    runs = [
        SeedRun(
            seed,
            optim.ReduceLROnPlateau(config.lr, **plateau_arguments(config)),
            runlog.Report.for_run(
                out,
                d,
                framework="jax",
                preset=preset,
                config=config.replace(seed=seed),
                device=device_name(),
                n_train=data.n_train,
                prefix=prefix(seed),
            ),  # fmt: skip
        )
        for seed, d in zip(seeds.seeds, logdirs)
    ]
    for note in ckpt.damaged if ckpt else ():
        say(note)
    state, first_epoch = resume_from(ckpt, state, config, runs, seeds, say) if resume else (state, 0)

    # Compile everything up front (or take the programs an earlier seed compiled), then say what will run.
    t0 = time.perf_counter()
    key = (config.replace(seed=0), seeds.seeds if seeds.vmapped else None, tuple(bounds), unroll, placement, plan)
    if programs is None or key not in programs:
        training = compile_training(config, state, data.train, bounds, unroll, seeds, placement, plan)
        evaluation = compile_evaluation(config, state, data, seeds, placement, plan)
        if programs is not None:
            programs[key] = training, evaluation, state
    else:  # the same programs, for this run's seeds and a state of the same pytree (its static fields too)
        training, evaluation, compiled_for = programs[key]
        state = state.replace(apply_fn=compiled_for.apply_fn, tx=compiled_for.tx)
        training = dataclasses.replace(training, seeds=seeds)
        test_key = placement.replicate(test_augment_key(config, seeds))
        evaluation = dataclasses.replace(evaluation, seeds=seeds, test_augment_key=test_key)
    compile_s = time.perf_counter() - t0
    notes = [f"compile: {compile_s:.2f} s (kept out of the epoch times)", f"convolutions: {plan.describe()}"]
    if placement.mesh is not None:
        per = config.batch_size // placement.size
        notes.append(
            f"data parallel over {placement.size} devices in {jax.process_count()} process(es): "
            f"each step's {config.batch_size} images split {per} per device"
        )
    if seeds.vmapped:
        notes.append(
            f"seeds {', '.join(map(str, seeds.seeds))} in one vmapped program: epoch times are theirs together"
        )
    announce(out, config, preset, data, steps, tuple(notes))

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
        lr = np.atleast_1d(jax.device_get(state.step_lr()))  # the rate the next step will use, per seed
        if config.plateau and not config.blog_quirks:  # quirk 3: the blog never steps its scheduler
            monitored = np.atleast_1d((val or test)["accuracy"])
            rates = [run.plateau.step(float(acc)) for run, acc in zip(runs, monitored)]
            state = state.replace(lr=seeds.array(rates, jnp.float32))
        next_lr = np.atleast_1d(jax.device_get(state.step_lr()))
        for i, run in enumerate(runs):
            run.report.epoch(
                epoch,
                test=seeds.take(test, i),
                val=seeds.take(val, i) if val else None,
                batch_acc=seeds.take(batch_acc, i),
                batch_loss=seeds.take(batch_loss, i),
                lr=float(lr[i]),
                next_lr=float(next_lr[i]),
                time_s=epoch_times[-1],
            )
        if ckpt:
            meta = {**host_meta(runs, seeds), "conv_plan": plan.to_json()}
            save(ckpt, state, config, epoch, float(np.mean(test["accuracy"])), meta)
        watch.epoch_ended(epoch)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break

    if report:
        write_reports(runs, state, seeds, data, config)
    records = [run.report.finish(epoch_times, compile_s=compile_s, recompiles=watch.after_first) for run in runs]
    if watch.after_first is not None:
        say(f"recompilations after the first epoch: {watch.after_first}")
    if ckpt:
        ckpt.close()
    return [Result(state=seeds.take(state, i), record=record) for i, record in enumerate(records)]


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> cli.ArgumentParser:
    p = trainer_parser("python -m jaxmnist.train", "Train one of the blog's networks on MNIST with JAX/Flax.")
    p.add_argument("--logdir", help="TensorBoard events, metrics.json, curves.png (default runs/<preset>)")
    p.add_argument("--workdir", help="checkpoints (latest and best, every epoch)")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --workdir")
    p.add_argument(
        "--seeds",
        help="train several seeds: a count (8: seeds 0-7), a range (0-7) or a list (0,3,5); each logs to "
        "LOGDIR/seed<k>, and a mean ± std line and LOGDIR/seeds.json end the run",
    )
    p.add_argument(
        "--seed-mode",
        default="auto",
        choices=SEED_MODES,
        help="--seeds in one vmapped program, or one after another; auto: vmapped on a GPU or TPU, one after "
        "another on the CPU (where vmapped convolutions are slower)",
    )
    p.add_argument(
        "--devices",
        type=int,
        help="data parallel over this many devices (default: all, or as many as split the batch evenly)",
    )
    p.add_argument(
        "--init-from",
        metavar="FILE.pth",
        help="start from a PyTorch state_dict of the preset's network (the blog's classes; loaded strictly, "
        "converted exactly) instead of a fresh initialisation",
    )
    p.add_argument(
        "--no-report",
        action="store_true",
        help="no evaluation report (report.json, confusion.png, misclassified.png) in the logdir at the end",
    )
    p.add_argument(
        "--conv-impl",
        choices=convs.IMPLS,
        help="how convolutions run: auto (default, or $JAXMNIST_CONV_IMPL) times XLA:CPU's kernel libraries and "
        "formulations once per machine and keeps the fastest (cached); xla: XLA's own choice (the default off the "
        "CPU); eigen: XLA's Eigen kernels; matmul: im2col and a GEMM. A resumed run keeps its own",
    )
    p.add_argument("--coordinator", help="jax.distributed: host:port of process 0 (or JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=int, help="jax.distributed: how many processes (or JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, help="jax.distributed: this process, from 0 (or JAX_PROCESS_ID)")
    return p


def _main(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    preset, config = config_from_args(args)
    if args.seeds is not None and args.seed is not None:
        raise UsageError("give --seed or --seeds, not both")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else (config.seed,)
    init = interop.load_torch(args.init_from, config.model, num_classes=config.num_classes) if args.init_from else None
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    placement = Placement.over(args.devices, config.batch_size)
    main_process = distributed.is_main()  # the others train as silently as they can
    if main_process and args.devices is None and placement.size < jax.device_count():
        print(
            f"using {placement.size} of {jax.device_count()} devices: batch {config.batch_size} splits evenly only so"
        )
    cli.stop_on_sigterm()
    try:
        train_seeds(
            config,
            seeds,
            args.seed_mode,
            preset=preset,
            data_dir=args.data_dir,
            logdir=(args.logdir or os.path.join("runs", preset)) if main_process else None,
            workdir=args.workdir,
            resume=args.resume,
            progress=not args.no_progress and main_process,
            placement=placement,
            init=init,
            report=not args.no_report,
            conv_impl=args.conv_impl,
            out=None if main_process else open(os.devnull, "w"),
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
