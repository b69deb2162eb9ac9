"""The device side of a run, as the host drives it: the splits put on the device once, every program a run
calls compiled before its first epoch (and shared by runs of the same shapes), an epoch of chunks with no host
sync per step, and the count of compilations that proves nothing compiles again after the first epoch.

    data = put_on_device(dataset, config)
    training, evals, state = cache.get(config, state, data, bounds, unroll, seeds, placement, plan)
    state, batch_acc, batch_loss = train_epoch(training, state, data.train, epoch, mode=True)
    test, val = evals(state, data, epoch)
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import convs, engine
from jaxmnist import data as data_lib
from jaxmnist.cli import Diverged, UsageError
from jaxmnist.convs import ConvPlan
from jaxmnist.distributed import Placement
from jaxmnist.presets import Config, split_train, tests_with_batch_statistics, trains_in_eval_mode
from jaxmnist.seeds import Seeds


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


# ------------------------------------------------------------------------------------- programs
@dataclasses.dataclass
class Training:
    """An epoch's compiled programs: a chunk of steps per (train mode, length), the gathering of its batches per
    length, and the epoch's batch indices. Only the last two take the whole split: where chunks have a fixed
    length (8 unrolled steps on the CPU, or --chunk-steps) the costly chunk programs are the same for every
    --train-size and --val-size (one compile, or one cache entry, serves them all); elsewhere an epoch's eighth
    sets their length."""

    chunks: dict[tuple[bool, int], Callable]
    # (images, labels, order, start, state.rng, state.step) -> prepared ([length, B, 28, 28, 1], [length, B])
    batches: dict[int, Callable]
    indices: Callable  # epoch (int32) -> the epoch's order, [steps, B] indices ([seeds, steps, B] vmapped)
    seeds: Seeds
    starts: tuple[tuple[jax.Array, int], ...]  # each chunk's first step (a device scalar) and length

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
    switches to eval mode, each chunk length of `bounds` (at most two), and for each length the program that
    gathers and prepares its batches (engine.chunk_batches). On a mesh, the batch axis of the indices and of the
    batches is sharded, all else replicated. `conv_plan`: the state's network's, for its compiler options."""
    seeds = seeds or Seeds((config.seed,))
    stack = (len(seeds.seeds),) if seeds.vmapped else ()
    placement.check_batch(config.batch_size)
    batch = placement.batch(leading=len(stack) + 1)  # [(seeds,) steps, B]
    modes = sorted({not trains_in_eval_mode(config, e) for e in range(config.epochs)})
    sizes = sorted({e - s for s, e in bounds})
    steps = bounds[-1][1]
    order = jax.ShapeDtypeStruct((*stack, steps, config.batch_size), jnp.int32, sharding=batch)
    start = jax.ShapeDtypeStruct((), jnp.int32, sharding=placement.replicated())
    sharded = shardings(placement, (None, None, batch, None, None, None), batch)
    batches, shapes = {}, {}
    for size in sizes:
        gather = functools.partial(
            engine.chunk_batches, steps=size, augment=config.augment, elastic=config.elastic, warp=config.warp
        )
        program = jax.jit(seeds.map(gather, (None, None, 0, None, 0, 0)), **sharded)
        batches[size] = program.lower(*train, order, start, state.rng, state.step).compile()
        images, labels = batches[size].out_info
        shapes[size] = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=batch) for a in (images, labels))
    chunks = {}
    for mode in modes:
        chunk = functools.partial(engine.train_chunk, train=mode, unroll=unroll)
        sharded = shardings(placement, (None, batch, batch), (None, None))
        options = conv_plan.compiler_options
        jit_chunk = jax.jit(seeds.map(chunk, (0, 0, 0)), donate_argnums=0, compiler_options=options, **sharded)
        for size in sizes:
            chunks[mode, size] = jit_chunk.lower(state, *shapes[size]).compile()
    shuffle = functools.partial(
        engine.epoch_indices, n=int(train[1].shape[0]), batch_size=config.batch_size, steps=steps
    )
    sharded = shardings(placement, (None, None), batch)
    indices = jax.jit(seeds.map(shuffle, (0, None)), **sharded).lower(seeds.array(seeds.seeds), jnp.int32(0))
    starts = tuple((placement.replicate(jnp.int32(s)), e - s) for s, e in bounds)
    return Training(chunks, batches, indices.compile(), seeds, starts)


@dataclasses.dataclass
class EvalPasses:
    """The compiled passes over the test set and the validation split, once per epoch (the report of a trained
    model is jaxmnist.evaluate's)."""

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


def compile_eval_passes(
    config: Config,
    state,
    data: DeviceData,
    seeds: Seeds | None = None,
    placement: Placement = Placement(),
    conv_plan: ConvPlan = convs.XLA,
) -> EvalPasses:
    """The test and validation passes. On a mesh every device evaluates the whole split (replicated): about a
    twentieth of an epoch's work, left unsharded. `conv_plan`: the state's network's, for its compiler options."""
    seeds = seeds or Seeds((config.seed,))
    kwargs = {"batch_size": config.eval_batch_size, "batch_statistics": tests_with_batch_statistics(config)}
    pass_ = functools.partial(engine.eval_split, **kwargs)
    key = placement.replicate(test_augment_key(config, seeds))
    sharded = shardings(placement, (None,) * 4, None)
    options = conv_plan.compiler_options
    jit_test = jax.jit(
        seeds.map(pass_, (0, None, None, None if key is None else 0)), compiler_options=options, **sharded
    )
    jit_val = jax.jit(seeds.map(pass_, (0, None, None, None)), compiler_options=options, **sharded)
    return EvalPasses(
        test=jit_test.lower(state, *data.test, key).compile(),
        val=jit_val.lower(state, *data.val, None).compile() if data.val else None,
        test_augment_key=key,
        seeds=seeds,
    )


def train_epoch(training: Training, state, train, epoch: int, mode: bool, bar=None, interim=None):
    """One epoch of chunks; returns (state, per-batch accuracy, per-batch loss) as host arrays ([seeds, steps]
    when vmapped). The host waits on a chunk's metrics only once the next chunk is queued, and checks them then:
    a non-finite loss or state raises Diverged at the end of the chunk where it appeared. `interim`: (steps,
    evaluate): evaluate(state, steps done) after the first chunk that ends at or past each of `steps`."""
    metrics, pending, done, ended = [], None, 0, 0
    order = training.epoch_indices(epoch)
    targets, evaluate = interim or ((), None)
    for start, size in training.starts:
        batches = training.batches[size](*train, order, start, state.rng, state.step)
        state, m = training.chunks[mode, size](state, *batches)
        reached = [t for t in targets if ended < t <= ended + size]
        ended += size
        if reached:
            evaluate(state, ended)
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


class ProgramCache:
    """The compiled programs of runs of the same shapes: compiled for the first, taken as they are by the others
    (the seeds of a sequential --seeds run; in one process, `SHARED`: a notebook's second run, a resumed one).
    Keyed by all a program is traced from: the configuration but its seed, the shapes, dtypes and placement of
    the state and of the data, the network (models.Apply: an edited and reloaded network misses), the step's
    functions and the options; at most `size` entries, the least recently used dropped."""

    def __init__(self, size: int = 8):
        self._programs: collections.OrderedDict = collections.OrderedDict()
        self.size = size

    def get(self, config: Config, state, data: DeviceData, bounds, unroll: bool, seeds: Seeds,
            placement: Placement = Placement(), plan: ConvPlan = convs.XLA) -> tuple[Training, EvalPasses, object]:  # fmt: skip
        """(training, evaluation passes, state): the state is `state` with the static fields of the state the
        programs were compiled for (the same pytree, so the programs accept it)."""
        key = (config.replace(seed=0), seeds.seeds if seeds.vmapped else None, tuple(bounds), unroll, placement, plan,
               _avals((state, data.train, data.test, data.val)), state.apply_fn, state.schedule, _traced(),
               jax.config.jax_enable_x64)  # fmt: skip
        if key not in self._programs:
            training = compile_training(config, state, data.train, bounds, unroll, seeds, placement, plan)
            evals = compile_eval_passes(config, state, data, seeds, placement, plan)
            self._programs[key] = training, evals, (state.apply_fn, state.tx)
            if len(self._programs) > self.size:
                self._programs.popitem(last=False)
            return training, evals, state
        self._programs.move_to_end(key)
        training, evals, (apply_fn, tx) = self._programs[key]
        state = state.replace(apply_fn=apply_fn, tx=tx)
        test_key = placement.replicate(test_augment_key(config, seeds))
        return (
            dataclasses.replace(training, seeds=seeds),
            dataclasses.replace(evals, seeds=seeds, test_augment_key=test_key),
            state,
        )


def _avals(tree) -> tuple:
    """Every array leaf's path, shape, dtype and sharding."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return tuple((jax.tree_util.keystr(p), x.shape, x.dtype, getattr(x, "sharding", None)) for p, x in leaves)


def _traced() -> tuple:
    """The functions the programs trace, as they are now (a replaced or reloaded one misses)."""
    return engine.train_chunk, engine.chunk_batches, engine.epoch_indices, engine.eval_split


SHARED = ProgramCache()
