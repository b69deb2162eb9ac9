"""The device side of training: pure functions of arrays, meant to run under `jit` (jaxmnist.train drives them).

- `TrainState`, `create_state`: everything that changes during training, as one pytree;
- `train_step(state, batch) -> (state, metrics)` and `eval_step`: one batch;
- `chunk_batches`, `train_chunk`: a chunk's batches gathered from device-resident uint8 data and prepared
  (augmented, normalised), then several steps over them, as a `lax.scan` or unrolled;
- `eval_split`: a whole split, every example exactly once; `epoch_indices`: an epoch's shuffled batches.

Every random draw comes from (seed, step) or (seed, epoch), never from host state, so a resumed run repeats an
uninterrupted one bit for bit. Learning rates are applied after the optimiser's direction (torch's order), so a
plateau schedule's changes match torch.optim exactly (docs/parity.md).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxmnist import augment as augment_lib
from jaxmnist import convs, models, optim
from jaxmnist import data as data_lib
from jaxmnist.convs import ConvPlan
from jaxmnist.presets import Config, schedule_points


# ------------------------------------------------------------------------------------------- state
class TrainState(struct.PyTreeNode):
    """Everything that changes during training, as one pytree (vmap-able over seeds, shardable)."""

    step: jax.Array  # int32 []
    params: Any
    batch_stats: Any
    opt_state: Any
    lr: jax.Array  # float32 []: the base learning rate, set from the host by the plateau schedule
    rng: jax.Array  # the run's base key; each step folds in its step number
    apply_fn: Any = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    ema: Any = None  # {'params', 'batch_stats'} averaged over the steps (Config.ema), what evaluation uses; or None
    schedule: tuple | None = struct.field(pytree_node=False, default=None)  # (steps, multipliers): lr per step
    label_smoothing: float = struct.field(pytree_node=False, default=0.0)
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def step_lr(self) -> jax.Array:
        """The learning rate of the step about to run: the base lr times the schedule's multiplier."""
        if self.schedule is None:
            return self.lr
        return self.lr * jnp.interp(self.step.astype(jnp.float32), *map(jnp.asarray, self.schedule))

    def eval_variables(self) -> dict:
        """The weights evaluation uses: the moving average when there is one."""
        return self.ema if self.ema is not None else {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """torch's update direction without the learning rate; train_step multiplies by state.lr."""
    hp = {"momentum": config.momentum}
    if config.optimizer == "rmsprop":
        hp.update(alpha=config.alpha, eps=config.eps)
    if config.optimizer == "adamw":
        hp = {"eps": config.eps, "weight_decay": config.weight_decay}
    return optim.direction(config.optimizer, **hp)


# A network's initialisation runs once per run, so its compile time is all it costs: at LLVM's -O1 it compiles in
# about a third of the default -O2's time on a CPU (resnet 24 -> 8 s, cnn 8.4 -> 3.1 s on a 2-vCPU Zen 3) to the
# same bits (tests/test_engine.py); -O0 would not give the same bits (no fused multiply-adds).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def init_variables(model, key: jax.Array) -> dict:
    """`model`'s fresh {'params', 'batch_stats'} for 28x28x1 inputs, drawn from `key`, as one compiled program."""
    return _init_program(jax.default_backend() == "cpu")(model, key, jnp.zeros((1, 28, 28, 1)))


@functools.cache
def _init_program(on_cpu: bool):
    """One jitted init for every network, the module static: a process that creates a network's state again (the
    seeds of a run, a resumed run, the tests) traces its init once, not each time (resnet's: about a second)."""
    options = INIT_COMPILER_OPTIONS if on_cpu else None
    return jax.jit(_init, static_argnums=0, compiler_options=options)


def _init(model, key: jax.Array, x: jax.Array) -> dict:
    return model.init(key, x, train=False)


def variable_shapes(model) -> dict:
    """`model`'s {'params', 'batch_stats'} as shapes and dtypes (jax.ShapeDtypeStruct), computing nothing: what a
    parameter table, a state_dict's layout or a checkpoint's restore target needs."""
    return jax.eval_shape(functools.partial(_init, model), jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))


def create_state(
    config: Config,
    key: jax.Array,
    dtype=jnp.float32,
    variables: dict | None = None,
    total_steps: int | None = None,
    conv_plan: ConvPlan = convs.XLA,
) -> TrainState:
    """A fresh state; `variables` ({'params', 'batch_stats'}, e.g. transferred from torch) replace the init.
    A per-step schedule (Config.schedule) needs the run's `total_steps`. `conv_plan`: how the network's
    convolutions run (jaxmnist.convs); its programs compile with `conv_plan.compiler_options`."""
    model = models.get_model(config.model, num_classes=config.num_classes, dtype=dtype, conv_plan=conv_plan)
    init_key, rng = jax.random.split(key)
    if variables is None:
        variables = init_variables(model, init_key)
    tx = make_optimizer(config)
    schedule = None
    if config.schedule != "constant":
        if total_steps is None:
            raise ValueError(f"the {config.schedule} schedule needs total_steps")
        schedule = tuple(map(tuple, schedule_points(config, total_steps)))
    weights = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=weights["params"],
        batch_stats=weights["batch_stats"],
        opt_state=tx.init(variables["params"]),
        lr=jnp.asarray(config.lr, jnp.float32),
        rng=rng,
        apply_fn=models.Apply(model),
        tx=tx,
        ema=jax.tree.map(jnp.copy, weights) if config.ema else None,
        schedule=schedule,
        label_smoothing=config.label_smoothing,
        ema_decay=config.ema,
    )


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """Per-example loss, computed in at least float32 (bf16 logits are promoted; float64 stays float64). With
    `label_smoothing` a, the target is (1 - a) one_hot + a / classes, as torch's cross_entropy(label_smoothing=a)."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if not label_smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def ema_decay_at(updates, decay: float):
    """The weight average's decay for its update number `updates` (0 for the first): min(decay, (1 + t) / (10 + t)),
    TensorFlow's ExponentialMovingAverage with num_updates. Without the warm-up an average at 0.999 still holds 14 %
    of the initial weights after 2,000 steps (docs/experiments.md, "The best preset")."""
    t = jnp.asarray(updates).astype(jnp.result_type(float))
    return jnp.minimum(decay, (1 + t) / (10 + t))


# -------------------------------------------------------------------------------------------- steps
def train_step(state: TrainState, batch: dict, train: bool = True) -> tuple[TrainState, dict]:
    """One optimiser step (SGD, RMSprop or AdamW: Config.optimizer) on a normalised batch
    {'image': [B,28,28,1] float, 'label': [B] int}.

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
        return cross_entropy(logits, batch["label"], state.label_smoothing).mean(), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    direction, opt_state = state.tx.update(grads, state.opt_state, state.params)
    lr = state.step_lr()
    params = jax.tree.map(lambda p, d: p - lr * d, state.params, direction)
    ema = state.ema
    if ema is not None:  # torch's lerp: e + (1 - decay) (w - e), with the warmed-up decay of ema_decay_at
        decay = ema_decay_at(state.step, state.ema_decay)
        weights = {"params": params, "batch_stats": batch_stats}
        ema = jax.tree.map(lambda e, w: e + (1 - decay) * (w - e), ema, weights)
    accuracy = 100.0 * jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, ema=ema
    )
    return new_state, {"loss": loss, "accuracy": accuracy}


def eval_step(state: TrainState, batch: dict, batch_statistics: bool = False, dropout_key=None) -> dict:
    """Sums of loss and correct predictions over the batch. `batch_statistics` runs the model in train mode, as a
    torch model left in train mode does (docs/experiments.md, quirk 4): BatchNorm on the batch's own statistics
    (the running ones stay as they are) and dropout, if any, drawn from `dropout_key`."""
    variables = state.eval_variables()
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


def prepare_images(
    images_u8, key, augment: bool, elastic: tuple[float, float] | None = None,
    warp: augment_lib.Warp = augment_lib.Warp(),
):
    """uint8 [B,28,28] -> normalised float [B,28,28,1], augmented first (on raw pixels) when asked, within the
    ranges of `warp` (Config.warp: the §4's by default), then distorted by `elastic` = (alpha, sigma) if given, on
    [0, 1] floats (torchvision's ElasticTransform after ToTensor)."""
    if augment:
        images_u8 = augment_lib.augment(jax.random.fold_in(key, 0) if elastic else key, images_u8, warp)
    if not elastic:
        return data_lib.normalize(images_u8)
    images = augment_lib.elastic(jax.random.fold_in(key, 1), images_u8.astype(jnp.float32) / 255.0, *elastic)
    return data_lib.standardize(images)


# Augmentation keys must differ from dropout keys of the same step, and a test pass's dropout keys (quirk 4) from both.
_AUGMENT_STREAM = 1 << 30
_EVAL_STREAM = (1 << 30) + 1


def train_augment_key(rng, step):
    """The key that augments the batch of training step `step` (a state's rng and step count)."""
    return jax.random.fold_in(jax.random.fold_in(rng, _AUGMENT_STREAM), step)


def chunk_batches(
    images, labels, order, start, rng, step, *, steps: int, augment: bool = False, elastic=None,
    warp: augment_lib.Warp = augment_lib.Warp(),
):
    """A chunk's batches from the device-resident split, ready to train on: the uint8 images at the rows start,
    ..., start + steps - 1 of the epoch's order [all steps, B] (`epoch_indices`), prepared (`prepare_images`:
    augmented with the key of the step that trains on them, the state's `rng` and `step` + i, then normalised)
    as float [steps, B, 28, 28, 1], and their labels [steps, B].

    Its own program, for two reasons. A train chunk that took the whole split would be another program for every
    split size, compiled again for each. And XLA:CPU fuses a cheap producer into every consumer that reads it:
    augmented inside the train step, the rotation and gather were computed again in each fusion that reads a
    pixel, 1.2x the step's time at batch 64 (benchmarks/README.md, "Augmentation in its own
    program"). Here the images are materialised once. `elastic`, `warp`: prepare_images's."""
    idx = jax.lax.dynamic_slice_in_dim(order, start, steps, axis=0)
    keys = jax.vmap(lambda i: train_augment_key(rng, step + i))(jnp.arange(steps))
    prepare = functools.partial(prepare_images, augment=augment, elastic=elastic, warp=warp)
    return jax.vmap(prepare)(images[idx], keys), labels[idx]


def train_chunk(state: TrainState, images, labels, *, train: bool, unroll: bool = False):
    """Runs len(images) steps on a chunk's batches (chunk_batches: float [steps, B, 28, 28, 1], labels
    [steps, B]). Returns per-step metrics ('loss', 'accuracy': [steps]) and whether every parameter and statistic
    is finite after the chunk ('finite': [], one reduction per chunk, fetched with the metrics: no extra host sync).

    `unroll=True` calls the steps one after another instead of as a `lax.scan` (a while loop): XLA's CPU
    backend runs convolution gradients inside a while loop 4-5x slower (cnn, batch 512: ~800 vs ~200 ms per
    step; see benchmarks/README.md), and even a length-1 scan stays a loop. So CPU runs use short unrolled chunks.
    """

    def body(state, batch):
        image, label = batch
        return train_step(state, {"image": image, "label": label}, train=train)

    if unroll:
        # One traced step called once per batch: tracing it anew for each would cost every run's start-up about
        # 0.25 s per step of the chunk (XLA inlines the calls: the compiled chunk is the same).
        step, steps = jax.jit(body), []
        for i in range(images.shape[0]):
            state, m = step(state, (images[i], labels[i]))
            steps.append(m)
        metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *steps)
    else:
        state, metrics = jax.lax.scan(body, state, (images, labels))
    return state, {**metrics, "finite": all_finite((state.params, state.batch_stats, state.ema))}


def all_finite(tree) -> jax.Array:
    """True iff no leaf of `tree` holds a NaN or an infinity (a bool scalar)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def chunk_bounds(steps: int, chunk_steps: int | None, unroll: bool) -> list[tuple[int, int]]:
    """How an epoch of `steps` is cut into compiled chunks (start, end): full chunks of `chunk_steps` (default 8
    unrolled steps on CPU, an eighth of the epoch as a rolled scan elsewhere), then the rest: one rolled chunk
    (a scan compiles alike whatever its length, and single steps would make the host wait on each), or single
    unrolled steps (an unrolled chunk compiles in proportion to its length; at most 7 of them). At most two chunk
    lengths are ever compiled."""
    chunk = min(steps, chunk_steps or (8 if unroll else math.ceil(steps / 8)))
    full = steps - steps % chunk
    rest = [(s, s + 1) for s in range(full, steps)] if unroll else [(full, steps)] * (full < steps)
    return [(s, s + chunk) for s in range(0, full, chunk)] + rest


def eval_split(
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


def epoch_indices(seed: int, epoch, n: int, batch_size: int, steps: int):
    """The epoch's shuffled batches, [steps, B] indices into the split: a fresh permutation from (seed, epoch),
    ragged tail dropped. One array, whatever the chunks: a slice per chunk made it a program whose compile time
    grew with the number of chunks."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed ^ 0x5EED), epoch)
    return jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)
