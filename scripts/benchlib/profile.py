"""Where the CPU time of the `cnn` train step goes, op by op, in JAX and in torch (`scripts/bench.py
--profile-cnn`), with the reformulations that were candidates for jaxmnist.models (`conv_sliced`, `max_pool_2x2`).
Findings: benchmarks/README.md."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from benchlib.settings import config_for
from benchlib.timing import measure_interleaved
from jaxmnist import convs, engine, layers, models
from jaxmnist import data as data_lib


# Two CPU-friendly formulations of the cnn's ops, measured by `profile_cnn` as candidates for jaxmnist.models.
def conv_sliced(x, k):
    """A VALID, stride-1 NHWC x HWIO convolution as im2col by slicing plus one matmul.

    XLA:CPU runs small-channel convolutions (and their gradients) far below torch's oneDNN; kh*kw shifted slices
    concatenated on the channel axis and a single dot run as plain copies and a GEMM, and autodiff of the slices
    gives the input gradient as pads and adds.
    """
    kh, kw, c, o = k.shape
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    patches = jnp.concatenate([x[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
    return patches @ k.reshape(kh * kw * c, o)  # HWIO flattens in the same (i, j, c) order as the patches


@contextlib.contextmanager
def what_if(pool: bool = False, conv: bool = False):
    """While a train step is traced: with `pool`, the model's 2x2/2 max-pool back on XLA's reduce_window (whose
    gradient is select_and_scatter); with `conv`, its stride-1 unpadded convolutions as `conv_sliced`. Swaps
    jaxmnist's own `layers.max_pool` / `convs.conv2d` inside the `with` only; JAX itself is left alone."""

    def reduce_window_pool(x, window, strides, padding=0, _orig=layers.max_pool):
        if (window, strides, padding) == (2, 2, 0):
            return nn.max_pool(x, (2, 2), (2, 2))
        return _orig(x, window, strides, padding)

    def sliced_conv(x, kernel, stride, padding, plan=convs.XLA, _orig=convs.conv2d):
        return conv_sliced(x, kernel) if (stride, padding) == (1, 0) else _orig(x, kernel, stride, padding, plan)

    with contextlib.ExitStack() as stack:
        if pool:
            stack.enter_context(mock.patch.object(models, "max_pool", reduce_window_pool))
        if conv:
            stack.enter_context(mock.patch.object(convs, "conv2d", sliced_conv))
        yield


def profile_cnn(
    batch_size: int = 512,
    *,
    rounds: int = 15,
    scan_steps: int = 4,
    with_torch: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Where the `cnn` train step's time goes: each op of its forward and backward jitted in isolation (JAX) and
    the matching aten call (torch), on the default device (meant for the CPU).

    Also times the candidates that would close the gap (`conv_sliced`, `max_pool_2x2`, a reshape-max pool), the
    whole step with the faster pool swapped in, and the step inside the engine's scan, rolled and unrolled.
    Everything is timed round-robin (`measure_interleaved`), `rounds` calls each.
    Returns rows {'op', 'shape', 'jax_ms', 'jax_min_ms', 'torch_ms', 'torch_min_ms'} (medians and minima).
    """
    jax_fns, shapes = {}, {}
    for name, shape, fn, args in _cnn_ops(batch_size):
        compiled = jax.jit(fn).lower(*args).compile()
        jax_fns[name], shapes[name] = functools.partial(compiled, *args), shape
    steps, per_step = _cnn_steps(batch_size, scan_steps)
    jax_fns.update(steps)
    fns = {("jax", k): v for k, v in jax_fns.items()}
    if with_torch:
        fns.update({("torch", k): v for k, v in _profile_cnn_torch_ops(batch_size).items()})
    log(f"  timing {len(fns)} functions round-robin, {rounds} rounds")
    timings = measure_interleaved(fns, jax.block_until_ready, rounds=rounds)
    rows = []
    for name in jax_fns:
        row = {"op": name, "shape": shapes.get(name, f"B={batch_size}")}
        for fw in ("jax", "torch"):
            t = timings.get((fw, name))
            if t is not None:
                row[f"{fw}_ms"] = 1e3 * t.median / per_step.get(name, 1)
                row[f"{fw}_min_ms"] = 1e3 * min(t.samples) / per_step.get(name, 1)
        rows.append(row)
    return rows


def _wgrad(f):
    return lambda x, k, dy: jax.vjp(lambda k: f(x, k), k)[1](dy)[0]


def _igrad(f):
    return lambda x, k, dy: jax.vjp(lambda x: f(x, k), x)[1](dy)[0]


def _bwd(f):
    return lambda x, dy: jax.vjp(f, x)[1](dy)[0]


def _valid_conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _reduce_window_pool(x):  # grad = select_and_scatter
    return nn.max_pool(x, (2, 2), (2, 2))


def _reshape_pool(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _relu_bn_fwd_bwd(x, scale, bias, dy):
    def bn(x, scale, bias):
        mean = x.mean((0, 1, 2))
        var = jnp.square(x - mean).mean((0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias

    return jax.vjp(lambda x, s, b: bn(nn.relu(x), s, b), x, scale, bias)[1](dy)


def _dense_fwd_bwd(x, k, dy):
    return jax.vjp(lambda x, k: x @ k, x, k)[1](dy)


def _cnn_ops(B: int) -> list[tuple[str, str, Callable, tuple]]:
    """The cnn's ops and their candidates, each alone: (name, shape, function, arguments)."""
    rng = np.random.default_rng(0)
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s, dtype=np.float32))  # noqa: E731
    x1, k1, y1 = f32(B, 28, 28, 1), f32(5, 5, 1, 10), f32(B, 24, 24, 10)
    x2, k2, y2 = f32(B, 12, 12, 10), f32(5, 5, 10, 20), f32(B, 8, 8, 20)
    p1, p2 = f32(B, 12, 12, 10), f32(B, 4, 4, 20)
    s10, s20 = jnp.ones(10), jnp.ones(20)
    conv, pool = _valid_conv, _reduce_window_pool
    return [
        ("conv1 fwd (1->10, 5x5)", "x[B,28,28,1]", conv, (x1, k1)),
        ("conv1 fwd, conv_sliced", "", conv_sliced, (x1, k1)),
        ("conv1 weight-grad", "dy[B,24,24,10]", _wgrad(conv), (x1, k1, y1)),
        ("conv1 weight-grad, conv_sliced", "", _wgrad(conv_sliced), (x1, k1, y1)),
        ("maxpool1 fwd (reduce_window)", "[B,24,24,10]", pool, (y1,)),
        ("maxpool1 bwd (select_and_scatter)", "", _bwd(pool), (y1, p1)),
        ("maxpool1 bwd, reshape-max", "", _bwd(_reshape_pool), (y1, p1)),
        ("maxpool1 bwd, max_pool_2x2", "", _bwd(layers.max_pool_2x2), (y1, p1)),
        ("relu+BN1 fwd+bwd", "[B,12,12,10]", _relu_bn_fwd_bwd, (p1, s10, s10, p1)),
        ("conv2 fwd (10->20, 5x5)", "x[B,12,12,10]", conv, (x2, k2)),
        ("conv2 fwd, conv_sliced", "", conv_sliced, (x2, k2)),
        ("conv2 weight-grad", "dy[B,8,8,20]", _wgrad(conv), (x2, k2, y2)),
        ("conv2 weight-grad, conv_sliced", "", _wgrad(conv_sliced), (x2, k2, y2)),
        ("conv2 input-grad", "", _igrad(conv), (x2, k2, y2)),
        ("conv2 input-grad, conv_sliced", "", _igrad(conv_sliced), (x2, k2, y2)),
        ("maxpool2 fwd (reduce_window)", "[B,8,8,20]", pool, (y2,)),
        ("maxpool2 bwd (select_and_scatter)", "", _bwd(pool), (y2, p2)),
        ("maxpool2 bwd, max_pool_2x2", "", _bwd(layers.max_pool_2x2), (y2, p2)),
        ("relu+BN2 fwd+bwd", "[B,4,4,20]", _relu_bn_fwd_bwd, (p2, s20, s20, p2)),
        ("fc fwd+bwd (320->10)", "[B,320]", _dense_fwd_bwd, (f32(B, 320), f32(320, 10), f32(B, 10))),
    ]


def _cnn_steps(B: int, n: int) -> tuple[dict[str, Callable], dict[str, int]]:
    """The whole step compiled, with each candidate swapped in, and inside the engine's scan of `n` steps, rolled
    and unrolled: ({name: call}, {name: steps per call} for the scans)."""
    data_rng = np.random.default_rng(1)
    images = jnp.asarray(data_rng.integers(0, 256, (n * B, 28, 28), dtype=np.uint8))
    labels = jnp.asarray(data_rng.integers(0, 10, n * B), jnp.int32)
    batch = {"image": data_lib.normalize(images[:B]), "label": labels[:B]}
    state = engine.create_state(config_for("cnn", B), jax.random.PRNGKey(0))

    def step_compiled():  # a fresh jit each time: a cached trace would not see the patched ops
        return functools.partial(
            jax.jit(lambda s, b: engine.train_step(s, b)).lower(state, batch).compile(), state, batch
        )

    fns, per_step = {"whole train step": step_compiled()}, {}
    with what_if(pool=True):
        fns["whole train step, select_and_scatter pool"] = step_compiled()
    with what_if(conv=True):
        fns["whole train step, conv_sliced"] = step_compiled()
    idx = jnp.arange(n * B, dtype=jnp.int32).reshape(n, B)
    jit_chunk = jax.jit(engine.train_chunk, static_argnames=("train", "unroll"))
    for unroll in (True, False):
        name = f"train_chunk, {n} steps, {'unrolled' if unroll else 'rolled'} scan (per step)"
        batches = engine.chunk_batches(images, labels, idx, 0, state.rng, state.step, steps=n)
        compiled = jit_chunk.lower(state, *batches, train=True, unroll=unroll).compile()
        fns[name], per_step[name] = functools.partial(compiled, state, *batches), n
    return fns, per_step


def _profile_cnn_torch_ops(B: int) -> dict[str, Callable[[], Any]]:
    """The torch (aten) counterparts of profile_cnn's ops, by the same names."""
    import torch
    import torch.nn.functional as F

    from benchlib.torch_side import torch_model
    from torch_ref import optim as torch_optim
    from torch_ref import train as torch_train

    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x1, k1, y1 = r(B, 1, 28, 28), r(10, 1, 5, 5), r(B, 10, 24, 24)
    x2, k2, y2 = r(B, 10, 12, 12), r(20, 10, 5, 5), r(B, 20, 8, 8)
    p1, p2 = r(B, 10, 12, 12), r(B, 20, 4, 4)

    def cbwd(dy, x, k, mask):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, k, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask
        )

    def pool_bwd(x, dy):
        _, ind = torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2])
        return lambda: torch.ops.aten.max_pool2d_with_indices_backward(
            dy, x, [2, 2], [2, 2], [0, 0], [1, 1], False, ind
        )

    def relu_bn(x, dy):
        w, b = torch.ones(x.shape[1], requires_grad=True), torch.zeros(x.shape[1], requires_grad=True)
        xr = x.clone().requires_grad_()
        return lambda: torch.autograd.grad(F.batch_norm(F.relu(xr), None, None, w, b, training=True), (xr, w, b), dy)

    def dense(x, k, dy):
        xr, kr = x.clone().requires_grad_(), k.clone().requires_grad_()
        return lambda: torch.autograd.grad(xr @ kr, (xr, kr), dy)

    # The whole step as the blog runs it (eager, NCHW, its optimiser).
    model = torch_model("cnn", "cpu")
    opt = torch_optim.build_optimizer(config_for("cnn", B), model.parameters())
    xb, yb = r(B, 1, 28, 28), torch.randint(0, 10, (B,), generator=g)
    return {
        "conv1 fwd (1->10, 5x5)": lambda: F.conv2d(x1, k1),
        "conv1 weight-grad": cbwd(y1, x1, k1, [False, True, False]),
        "maxpool1 fwd (reduce_window)": lambda: F.max_pool2d(y1, 2),
        "maxpool1 bwd (select_and_scatter)": pool_bwd(y1, p1),
        "relu+BN1 fwd+bwd": relu_bn(p1, p1),
        "conv2 fwd (10->20, 5x5)": lambda: F.conv2d(x2, k2),
        "conv2 weight-grad": cbwd(y2, x2, k2, [False, True, False]),
        "conv2 input-grad": cbwd(y2, x2, k2, [True, False, False]),
        "maxpool2 fwd (reduce_window)": lambda: F.max_pool2d(y2, 2),
        "maxpool2 bwd (select_and_scatter)": pool_bwd(y2, p2),
        "relu+BN2 fwd+bwd": relu_bn(p2, p2),
        "fc fwd+bwd (320->10)": dense(r(B, 320), r(320, 10), r(B, 10)),
        "whole train step": lambda: torch_train.train_step(model, "cnn", opt, xb, yb),
    }
