"""jaxmnist.engine: one step per network, eval-mode steps, evaluation, chunks and epoch indices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxmnist import augment, engine, layers, models
from jaxmnist import data as data_lib
from jaxmnist.presets import Config

# One step of engine.train_step on every network of the blog's and this project's own. torchvision's resnet18 and
# resnet101 (whose steps compile for 50-90 s here) are left to tests/test_models.py, which runs their training
# step against torch's: every gradient and BatchNorm statistic, with the same 1000-way head.
NETWORKS = [n for n in models.MODELS if n not in models.TORCHVISION]


def fake_batch(rng, n=4, classes=10):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return {"image": data_lib.normalize(images), "label": jnp.asarray(rng.integers(0, classes, n), jnp.int32)}


@pytest.mark.parametrize("model", NETWORKS)
def test_one_train_step_every_network(model, rng):
    config = Config(model=model, optimizer="rmsprop" if model == "cnn_deep" else "sgd", lr=0.01)
    state = engine.create_state(config, jax.random.PRNGKey(0))
    batch = fake_batch(rng, classes=10)
    new_state, metrics = jax.jit(engine.train_step)(state, batch)
    assert np.isfinite(float(metrics["loss"])) and 0 <= float(metrics["accuracy"]) <= 100
    assert int(new_state.step) == 1
    before = jax.tree_util.tree_flatten_with_path(state.params)[0]
    still = [
        jax.tree_util.keystr(path)
        for (path, a), b in zip(before, jax.tree.leaves(new_state.params))
        if np.array_equal(a, b)
    ]
    # A conv bias feeding a train-mode BatchNorm has an exactly zero gradient (BN removes the mean); in the
    # blog's resnet those are the only parameters allowed to stay put.
    assert len(still) < len(before) // 4 and all(
        p.endswith("['bias']") and "bn" not in p and "fc" not in p for p in still
    ), still
    stats_moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(new_state.batch_stats))
    ]
    assert stats_moved and all(stats_moved)
    apply = jax.jit(new_state.apply_fn, static_argnames="train")  # one program: eagerly, every op compiles alone
    logits = apply({"params": new_state.params, "batch_stats": new_state.batch_stats}, batch["image"], train=False)
    assert logits.shape == (4, 10)


def test_eval_mode_step_freezes_batchnorm(rng):
    """The blog's quirk 1 (training in eval mode) updates weights but not the running statistics."""
    state = engine.create_state(Config(model="cnn"), jax.random.PRNGKey(0))
    new_state, _ = jax.jit(engine.train_step, static_argnames="train")(state, fake_batch(rng), train=False)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(new_state.batch_stats))
    )
    assert all(
        not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params))
    )


def test_weight_average_warms_up_then_holds_its_decay(rng):
    """The average's decay is min(decay, (1 + t) / (10 + t)) at update t: 0.1 on the first step, so the average
    starts near the trained weights instead of holding on to the initialisation; the given decay once reached."""
    assert np.allclose(engine.ema_decay_at(jnp.arange(4), 0.2), [0.1, 2 / 11, 0.2, 0.2])
    assert float(engine.ema_decay_at(10**6, 0.999)) == np.float32(0.999)
    state = engine.create_state(Config(model="cnn", ema=0.999), jax.random.PRNGKey(0))
    start = state.ema["params"]
    new_state, _ = jax.jit(engine.train_step)(state, fake_batch(rng))
    expected = jax.tree.map(lambda e, w: 0.1 * e + 0.9 * w, start, new_state.params)
    assert all(
        np.allclose(a, b, rtol=1e-6, atol=1e-7)  # float32 lerp against 0.1 e + 0.9 w
        for a, b in zip(jax.tree.leaves(new_state.ema["params"]), jax.tree.leaves(expected))
    )


def test_elastic_distortion_follows_the_affine_steps_on_its_own_key(rng):
    """prepare_images: without `elastic` the §4 augmentation keeps the key it always had (runs stay bitwise
    what they were); with it, the affine steps and the distortion draw from two keys folded from that one."""
    images, key = fake_batch(rng, n=8)["image"], jax.random.key(3)
    raw = jnp.asarray(rng.integers(0, 256, (8, 28, 28), dtype=np.uint8))

    @jax.jit  # each side one program, as in training (op by op: about a hundred small compiles)
    def composed(key, raw):
        affine = augment.augment(jax.random.fold_in(key, 0), raw).astype(jnp.float32) / 255
        distorted = augment.elastic(jax.random.fold_in(key, 1), affine, 50.0, 5.0)
        return data_lib.normalize(augment.augment(key, raw)), data_lib.standardize(distorted)

    expected_plain, expected_elastic = composed(key, raw)
    prepare = jax.jit(engine.prepare_images, static_argnames=("augment", "elastic"))
    plain = prepare(raw, key, augment=True)
    np.testing.assert_array_equal(plain, expected_plain)
    elastic = prepare(raw, key, augment=True, elastic=(50.0, 5.0))
    np.testing.assert_allclose(elastic, expected_elastic, rtol=0, atol=1e-5)
    assert elastic.shape == images.shape and not np.allclose(elastic, plain)


def test_evaluate_counts_every_example_once(rng):
    state = engine.create_state(Config(model="cnn"), jax.random.PRNGKey(0))
    images = rng.integers(0, 256, (37, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 37).astype(np.int32)
    apply = jax.jit(state.apply_fn, static_argnames="train")
    logits = apply({"params": state.params, "batch_stats": state.batch_stats}, data_lib.normalize(images), train=False)
    expected = 100 * np.mean(np.argmax(logits, -1) == labels)
    evaluate = jax.jit(engine.eval_split, static_argnames="batch_size")
    for batch_size in (5, 37, 64):  # ragged, exact, larger than the set
        got = evaluate(state, jnp.asarray(images), jnp.asarray(labels), batch_size=batch_size)
        assert abs(float(got["accuracy"]) - expected) < 1e-4


def test_chunk_bounds():
    assert engine.chunk_bounds(117, None, unroll=True) == [(s, s + 8) for s in range(0, 112, 8)] + [
        (s, s + 1) for s in range(112, 117)
    ]
    assert [e - s for s, e in engine.chunk_bounds(117, None, unroll=False)] == [15] * 7 + [12]  # the rest rolled
    assert engine.chunk_bounds(120, None, unroll=False) == [(s, s + 15) for s in range(0, 120, 15)]
    assert engine.chunk_bounds(8, 1, unroll=True) == [(s, s + 1) for s in range(8)]


def test_unrolled_chunk_equals_scanned_chunk(rng):
    state = engine.create_state(Config(model="cnn"), jax.random.PRNGKey(0))
    images = jnp.asarray(rng.integers(0, 256, (48, 28, 28), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 48), jnp.int32)
    idx = jnp.arange(48, dtype=jnp.int32).reshape(3, 16)
    gather = jax.jit(engine.chunk_batches, static_argnames=("steps", "augment"))  # one program, not op by op
    batches = gather(images, labels, idx, 0, state.rng, state.step, steps=3, augment=True)
    chunk = jax.jit(engine.train_chunk, static_argnames=("train", "unroll"))
    (a, ma), (b, mb) = (chunk(state, *batches, train=True, unroll=u) for u in (False, True))
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_each_steps_images_are_augmented_with_that_steps_key(rng):
    """chunk_batches prepares step start + i's batch with the key of (the state's rng, its step count + i), as
    the train step once drew it itself: runs keep their draws, a resumed run repeats an uninterrupted one, and
    the chunk of step 5 augments what step 5 alone would."""
    images = jnp.asarray(rng.integers(0, 256, (40, 28, 28), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 40), jnp.int32)
    order, key = jnp.arange(40, dtype=jnp.int32).reshape(4, 10), jax.random.key(7)
    gather = jax.jit(engine.chunk_batches, static_argnames=("steps", "augment", "elastic"))
    chunk, _ = gather(images, labels, order, jnp.int32(1), key, jnp.int32(5), steps=3, augment=True)
    alone, _ = gather(images, labels, order, jnp.int32(2), key, jnp.int32(6), steps=1, augment=True)

    @jax.jit  # one program, not dozens of small compiles op by op
    def step_alone(raw, step):
        return engine.prepare_images(raw, engine.train_augment_key(key, step), augment=True), data_lib.normalize(raw)

    for i in range(3):
        expected, normalised = step_alone(images[10 * (1 + i) : 10 * (2 + i)], jnp.int32(5 + i))
        np.testing.assert_allclose(chunk[i], expected, rtol=0, atol=1e-5)  # a pixel's step is 0.013; rounding 3e-7
        assert not np.array_equal(chunk[i], normalised)  # augmented, not only normalised
    np.testing.assert_array_equal(alone[0], chunk[1])  # one program: the same bits


WIDER = augment.Warp(translate=0.2, degrees=20.0, scale=0.2)


def test_wider_ranges_reach_each_steps_images(rng):
    """chunk_batches(warp=...): each step's batch is prepare_images's with those ranges (Config.warp: --scale,
    --translate, --degrees), and differs from the §4 one drawn with the same key."""
    images = jnp.asarray(rng.integers(0, 256, (20, 28, 28), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 20), jnp.int32)
    order, key = jnp.arange(20, dtype=jnp.int32).reshape(2, 10), jax.random.key(8)

    @jax.jit  # one program for both sides, not dozens of small compiles op by op
    def both(images, labels):
        gather = functools.partial(engine.chunk_batches, steps=2, augment=True)
        scaled, _ = gather(images, labels, order, jnp.int32(0), key, jnp.int32(3), warp=WIDER)
        plain, _ = gather(images, labels, order, jnp.int32(0), key, jnp.int32(3))
        alone = [engine.prepare_images(images[10 * i : 10 * (i + 1)], engine.train_augment_key(key, 3 + i),
                                       augment=True, warp=WIDER) for i in range(2)]  # fmt: skip
        return scaled, plain, jnp.stack(alone)

    scaled, plain, alone = both(images, labels)
    np.testing.assert_allclose(scaled, alone, rtol=0, atol=1e-5)
    assert not np.allclose(scaled, plain)


def test_epoch_indices_are_a_fresh_permutation_per_epoch_without_the_tail():
    first = np.asarray(engine.epoch_indices(0, 0, 103, 20, 5))
    assert first.shape == (5, 20)
    order = first.ravel()
    assert len(set(order.tolist())) == 100 and set(order.tolist()) <= set(range(103))  # distinct; 3 left out
    again = np.asarray(engine.epoch_indices(0, 0, 103, 20, 5)).ravel()
    next_epoch = np.asarray(engine.epoch_indices(0, 1, 103, 20, 5)).ravel()
    other_seed = np.asarray(engine.epoch_indices(1, 0, 103, 20, 5)).ravel()
    assert np.array_equal(order, again)  # (seed, epoch) alone decides: a resumed run draws the same batches
    assert not np.array_equal(order, next_epoch) and not np.array_equal(order, other_seed)


def test_chunk_batches_are_their_rows_of_the_order(rng):
    """A chunk of 4 steps, then one of a single step: each gathers its own rows of the epoch's order, normalised."""
    images, labels = rng.integers(0, 256, (103, 28, 28), np.uint8), rng.integers(0, 10, 103)
    order = engine.epoch_indices(0, 0, 103, 20, 5)
    gather = jax.jit(engine.chunk_batches, static_argnames='steps')
    for start, steps in ((0, 4), (4, 1)):
        key, step = jax.random.key(0), jnp.int32(start)
        got_images, got_labels = gather(images, labels, order, jnp.int32(start), key, step, steps=steps)
        rows = np.asarray(order)[start : start + steps]
        assert got_images.shape == (steps, 20, 28, 28, 1)
        np.testing.assert_allclose(got_images, data_lib.normalize(images[rows]), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(got_labels, labels[rows])


class EveryInitialiser(nn.Module):
    """Each initialiser the networks draw with, once: a kaiming-normal conv kernel (cnn_deep, resnet), torch's
    uniform kernel (every Conv and Dense else) and bias, BatchNorm's. Compile time grows with every draw."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = layers.Conv(32, 5, use_bias=False, kernel_init=layers.kaiming_normal_fan_out)(x)
        return layers.Dense(10)(layers.BatchNorm(use_running_average=not train)(x).mean((1, 2)))


def test_init_compiled_for_compile_speed_gives_the_default_bits():
    """engine.init_variables compiles at LLVM -O1 on the CPU (a third of the compile time): the very bits that
    the default -O2 gives, or runs of a seed would change with this speed-up. On a module drawing with every
    initialiser the networks use (a whole network's -O2 init is its slowest compile: cnn_deep's 8 s, this one's under 3 s)."""
    module = EveryInitialiser()
    key = jax.random.PRNGKey(3)
    quick = engine.init_variables(module, key)
    default = jax.jit(functools.partial(module.init, train=False))(key, jnp.zeros((1, 28, 28, 1)))
    assert jax.tree.structure(quick) == jax.tree.structure(default) and len(jax.tree.leaves(quick)) == 7
    for a, b in zip(jax.tree.leaves(quick), jax.tree.leaves(default), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
