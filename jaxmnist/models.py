"""Flax mirrors of the blog's five networks and the `fast` preset's, numerically interchangeable with PyTorch.

Every layer reproduces its PyTorch counterpart: initialisation (in distribution), padding, BatchNorm
running statistics, and the C,H,W order of Flatten. Module names follow the PyTorch attribute names,
with a Sequential index fused onto its container's name by ``_`` (torch ``block1.0`` is flax
``block1_0``), so ``torch_ref.convert`` maps parameters by name alone. The networks are specified in
docs/experiments.md; what exact parity takes (BatchNorm, init, layouts) is docs/parity.md.

Inputs are normalised NHWC batches ``[B, 28, 28, 1]``. Parameters and BatchNorm statistics are
always float32; ``dtype`` is the computation dtype, and the logits' dtype. Dropout (cnn_deep only)
is active when ``train`` is true and then needs a 'dropout' rng; its rates are module attributes,
and rates of 0 switch it off. Usage::

  model = get_model('cnn_deep')
  variables = model.init(key, x, train=False)
  logits = model.apply(variables, x, train=False)
  logits, updates = model.apply(variables, x, train=True, rngs={'dropout': key},
                                mutable=['batch_stats'])
"""

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

ModuleDef = Any
Dtype = Any

# PyTorch's default Conv2d/Linear kernel init, kaiming_uniform_(a=sqrt(5)), is U(+-1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
# kaiming_normal_(mode='fan_out', nonlinearity='relu'): an untruncated N(0, 2 / fan_out).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def torch_default_bias_init(fan_in: int) -> Callable:
    """PyTorch's default bias init U(+-1/sqrt(fan_in)); flax bias inits never see fan_in."""
    bound = 1 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


# On CPU, a convolution whose output is at most this many pixels runs as a matmul (`conv2d`); None: never.
SMALL_CONV_PIXELS_CPU: int | None = 4
# On CPU, a convolution of a single-channel input (every network's first layer but torchvision's) runs as a matmul:
# XLA:CPU's weight gradient of a 1-channel convolution is its slow path, 2-5x slower than im2col and a GEMM
# (benchmarks/README.md, "Per-layer costs").
SINGLE_CHANNEL_AS_MATMUL_CPU: bool = True


def conv_as_matmul(x, kernel, stride: int, padding: int):
    """torch's Conv2d (NHWC x HWIO) as im2col by strided slices plus one matmul, leaving out the kernel taps
    that only ever see padding (their products are exact zeros). For the tiny outputs of the deep ResNet
    stages, where XLA:CPU's convolution is 20-27x slower than oneDNN while a GEMM is not (benchmarks/README.md)."""
    kh, kw, _, features = kernel.shape
    h, w = x.shape[1:3]
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1

    def real(offset, size, out):  # does tap offset ever read an unpadded row (column)?
        return any(padding <= offset + stride * t < padding + size for t in range(out))

    taps = [(i, j) for i in range(kh) for j in range(kw) if real(i, h, ho) and real(j, w, wo)]
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    patches = jnp.concatenate(
        [x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride] for i, j in taps], -1
    )
    return patches @ jnp.concatenate([kernel[i, j] for i, j in taps], 0).reshape(-1, features)


def conv2d(x, kernel, stride: int, padding: int):
    """torch's Conv2d on NHWC x HWIO: XLA's convolution, or on CPU `conv_as_matmul` for tiny outputs and for
    single-channel inputs."""
    kh, kw, in_channels = kernel.shape[:3]
    out_pixels = ((x.shape[1] + 2 * padding - kh) // stride + 1) * ((x.shape[2] + 2 * padding - kw) // stride + 1)
    tiny = SMALL_CONV_PIXELS_CPU is not None and out_pixels <= SMALL_CONV_PIXELS_CPU
    if (tiny or SINGLE_CHANNEL_AS_MATMUL_CPU and in_channels == 1) and jax.default_backend() == 'cpu':
        return conv_as_matmul(x, kernel, stride, padding)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )


class Conv(nn.Module):
    """Conv2d with PyTorch's padding and default initialisation, on NHWC inputs and HWIO kernels."""

    features: int
    kernel_size: int
    strides: int = 1
    padding: int = 0
    use_bias: bool = True
    kernel_init: Callable = torch_default_kernel_init
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        in_features = x.shape[-1]
        kernel_shape = (self.kernel_size, self.kernel_size, in_features, self.features)
        kernel = self.param('kernel', self.kernel_init, kernel_shape, jnp.float32)
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding)
        if self.use_bias:
            fan_in = in_features * self.kernel_size * self.kernel_size
            bias = self.param('bias', torch_default_bias_init(fan_in), (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


class Dense(nn.Module):
    """Linear with PyTorch's default initialisation; the kernel is torch's weight transposed."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        in_features = x.shape[-1]
        kernel = self.param('kernel', torch_default_kernel_init, (in_features, self.features), jnp.float32)
        bias = self.param('bias', torch_default_bias_init(in_features), (self.features,), jnp.float32)
        return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)


class BatchNorm(nn.Module):
    """BatchNorm2d with PyTorch's semantics over the last (channel) axis.

    Training normalises with the biased batch variance but, like torch, folds the *unbiased* one
    (x n/(n-1)) into the running 'var', which flax's BatchNorm cannot do. ``momentum`` follows
    torch's convention, the weight of the new batch: torch's 0.1 is flax's 0.9. Statistics are
    computed in at least float32 whatever ``dtype`` is.
    """

    use_running_average: bool
    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
        bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
        running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)

        x = x.astype(jnp.promote_types(self.dtype, jnp.float32))
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            reduction_axes = tuple(range(x.ndim - 1))
            mean = x.mean(reduction_axes)
            var = jnp.square(x - mean).mean(reduction_axes)  # two-pass: no cancellation
            # Like flax's BatchNorm, init only creates the statistics; it does not update them.
            if not self.is_initializing():
                n = x.size // features
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                running_var.value = (1 - m) * running_var.value + m * var * (n / (n - 1))
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype)


def flatten_chw(x):
    """Flattens NHWC in torch's C,H,W order, so a following Dense is torch's Linear transposed."""
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def _max_pool_2x2_fwd(x):
    _, h, w, _ = x.shape
    x = x[:, : h - h % 2, : w - w % 2]  # torch's floor mode drops an odd last row/column
    quads = (x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2])  # torch's scan order
    a, b, c, d = quads
    m = jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))
    # Each window's gradient goes to its first maximum in scan order, as torch's max_pool2d backward does. The
    # masks compare the four values with each other, never with `m`: under jit XLA may compute the input twice,
    # in two fusions (e.g. a BatchNorm once with FMAs, once without), and `q == m` then found no maximum in some
    # windows and dropped their gradient (FastNet's ReLU -> pool under jit). Exactly one mask is set per window.
    first = (a >= b) & (a >= c) & (a >= d)
    second = ~first & (b >= c) & (b >= d)
    third = ~first & ~second & (c >= d)
    fourth = ~(first | second | third)
    return m, ((first, second, third, fourth), (h, w))


def _max_pool_2x2_bwd(res, g):
    masks, (h, w) = res
    ga, gb, gc, gd = (jnp.where(mk, g, 0).astype(g.dtype) for mk in masks)
    b, h2, w2, c = g.shape
    dx = jnp.stack([jnp.stack([ga, gb], axis=3), jnp.stack([gc, gd], axis=3)], axis=2)
    dx = dx.reshape(b, 2 * h2, 2 * w2, c)
    return (jnp.pad(dx, ((0, 0), (0, h - 2 * h2), (0, w - 2 * w2), (0, 0))),)


@jax.custom_vjp
def max_pool_2x2(x):
    """MaxPool2d(2) on NHWC as the max of four strided slices, with torch's gradient (first maximum of each
    window, ties included). XLA:CPU runs reduce_window's gradient (select_and_scatter) ~7x slower than this
    (cnn, batch 512: 62 vs 8 ms for the first pool); on a GPU both are cheap."""
    return _max_pool_2x2_fwd(x)[0]


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def max_pool(x, window: int, strides: int, padding: int = 0):
    if (window, strides, padding) == (2, 2, 0):
        return max_pool_2x2(x)
    # reduce_window pads with the -inf init value, as torch's MaxPool2d does.
    return nn.max_pool(x, (window, window), (strides, strides), ((padding, padding), (padding, padding)))


class CNN(nn.Module):
    """The blog's first network (sections 1-3): two conv -> max-pool -> ReLU -> BN blocks, one Linear."""

    num_classes: int = 10
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(Conv, dtype=self.dtype)
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        x = x.astype(self.dtype)
        for i, features in enumerate((10, 20), start=1):
            x = conv(features, 5, name=f'block{i}_0')(x)
            x = nn.relu(max_pool(x, 2, 2))
            x = norm(name=f'block{i}_3')(x)
        return Dense(self.num_classes, dtype=self.dtype, name='fc_1')(flatten_chw(x))


class CNNDeep(nn.Module):
    """The blog's section 4 network: two double-conv stages with BN and dropout, a two-layer head.

    Setting the dropout rates to 0 removes dropout (no 'dropout' rng needed) while BatchNorm still
    follows ``train``, which is how the parity tests compare training-mode passes with PyTorch.
    """

    num_classes: int = 10
    conv_dropout_rate: float = 0.25
    fc_dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(Conv, kernel_init=kaiming_normal_fan_out, dtype=self.dtype)
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        x = x.astype(self.dtype)
        for stage, (features, kernel_size) in enumerate(((32, 5), (64, 3)), start=1):
            # torch's Sequential: conv, ReLU, BN, conv, ReLU, BN, max-pool, dropout.
            for i in (0, 3):
                x = conv(features, kernel_size, name=f'layer{stage}_{i}')(x)
                x = norm(name=f'layer{stage}_{i + 2}')(nn.relu(x))
            x = max_pool(x, 2, 2)
            x = nn.Dropout(self.conv_dropout_rate, deterministic=not train)(x)
        x = nn.relu(Dense(256, dtype=self.dtype, name='fc_1')(flatten_chw(x)))
        x = nn.Dropout(self.fc_dropout_rate, deterministic=not train)(x)
        return Dense(self.num_classes, dtype=self.dtype, name='fc_4')(x)


class FastNet(nn.Module):
    """The `fast` preset's network, built for time to accuracy on a CPU: stages of 3x3 'SAME' conv -> BN -> ReLU
    (no conv bias: BN follows), each stage ending in a 2x2 max-pool (28 -> 14 -> 7 -> 3), then one Linear.

    'SAME' padding because XLA:CPU runs a padded 3x3 convolution at less than half the cost per output pixel of an
    unpadded one (benchmarks/README.md, "Per-layer costs"). Module names are torch_ref's ``features.<index>``.
    """

    widths: Sequence[int] = (32, 64, 128)
    convs_per_stage: int = 1
    num_classes: int = 10
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(Conv, kernel_size=3, padding=1, use_bias=False, dtype=self.dtype)
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        x = x.astype(self.dtype)
        index = 0  # the position in torch's Sequential: conv, BN, ReLU per conv, a pool per stage
        for features in self.widths:
            for _ in range(self.convs_per_stage):
                x = conv(features, name=f'features_{index}')(x)
                x = nn.relu(norm(name=f'features_{index + 1}')(x))
                index += 3
            x = max_pool(x, 2, 2)
            index += 1
        return Dense(self.num_classes, dtype=self.dtype, name='fc')(flatten_chw(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection: torchvision's BasicBlock and the blog's ResidualBlock.

    ``downsample`` projects the residual with ``conv`` of ``downsample_kernel_size`` and a norm; the
    blog uses a biased 3x3 conv there, torchvision a 1x1 one.
    """

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    downsample: bool = False
    downsample_kernel_size: int = 1

    expansion = 1

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.relu(self.norm(name='bn1')(self.conv(self.features, 3, self.strides, 1, name='conv1')(x)))
        y = self.norm(name='bn2')(self.conv(self.features, 3, 1, 1, name='conv2')(y))
        if self.downsample:
            k = self.downsample_kernel_size
            residual = self.conv(self.features, k, self.strides, k // 2, name='downsample_0')(x)
            residual = self.norm(name='downsample_1')(residual)
        return nn.relu(y + residual)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5: the stride sits on the 3x3 conv)."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    downsample: bool = False

    expansion = 4

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.relu(self.norm(name='bn1')(self.conv(self.features, 1, name='conv1')(x)))
        y = nn.relu(self.norm(name='bn2')(self.conv(self.features, 3, self.strides, 1, name='conv2')(y)))
        y = self.norm(name='bn3')(self.conv(self.features * self.expansion, 1, name='conv3')(y))
        if self.downsample:
            residual = self.conv(self.features * self.expansion, 1, self.strides, name='downsample_0')(x)
            residual = self.norm(name='downsample_1')(residual)
        return nn.relu(y + residual)


class BlogResNet(nn.Module):
    """The blog's own "ResNet18": three stages of ResidualBlocks at 16/32/64 channels, MLP head.

    torch's unused ``avg_pool = AvgPool2d(8)`` has no counterpart: it holds no state.
    """

    stage_sizes: Sequence[int] = (2, 2, 2)
    num_classes: int = 10
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(Conv, dtype=self.dtype)
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        x = nn.relu(norm(name='bn')(conv(16, 3, 1, 1, name='conv')(x.astype(self.dtype))))
        for i, num_blocks in enumerate(self.stage_sizes):
            features = 16 * 2**i
            for j in range(num_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(
                    features,
                    conv,
                    norm,
                    strides,
                    downsample=strides != 1 or x.shape[-1] != features,
                    downsample_kernel_size=3,
                    name=f'layer{i + 1}_{j}',
                )(x)
        x = Dense(128, dtype=self.dtype, name='fc1')(flatten_chw(x))
        x = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=self.dtype, name='normfc12')(x)
        return Dense(self.num_classes, dtype=self.dtype, name='fc2')(nn.relu(x))


class TorchVisionResNet(nn.Module):
    """torchvision's ResNet (its default 1000-way head included) on MNIST.

    A 1-channel batch is repeated to 3 channels first, as the blog does with ``images.expand``.
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int = 1000
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(Conv, use_bias=False, kernel_init=kaiming_normal_fan_out, dtype=self.dtype)
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        x = jnp.broadcast_to(x, x.shape[:-1] + (3,)).astype(self.dtype)
        x = nn.relu(norm(name='bn1')(conv(64, 7, 2, 3, name='conv1')(x)))
        x = max_pool(x, 3, 2, padding=1)
        for i, num_blocks in enumerate(self.stage_sizes):
            features = 64 * 2**i
            for j in range(num_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                downsample = strides != 1 or x.shape[-1] != features * self.block_cls.expansion
                x = self.block_cls(features, conv, norm, strides, downsample, name=f'layer{i + 1}_{j}')(x)
        x = x.mean(axis=(1, 2))
        return Dense(self.num_classes, dtype=self.dtype, name='fc')(x)


ResNet18 = functools.partial(TorchVisionResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet101 = functools.partial(TorchVisionResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)

# torchvision's architectures, which the blog trains as they are; the other networks are the blog's own.
TORCHVISION = {'resnet18': ResNet18, 'resnet101': ResNet101}
# Every network, in the blog's order: the one list the trainers, presets, benchmarks and tests derive theirs from.
# `fast` is this project's own (the fast preset, docs/experiments.md), after the blog's.
MODELS = {'cnn': CNN, 'cnn_deep': CNNDeep, 'resnet': BlogResNet, **TORCHVISION, 'fast': FastNet}


def get_model(name: str, num_classes: int | None = None, dtype: Dtype = jnp.float32) -> nn.Module:
    """Builds the network ``name`` (a key of MODELS).

    ``num_classes=None`` keeps the network's natural head, as the blog trains it: 10 classes for
    cnn, cnn_deep and resnet, torchvision's 1000 for resnet18 and resnet101.
    """
    if name not in MODELS:
        raise ValueError(f'unknown model {name!r}; choose from {", ".join(MODELS)}')
    kwargs = {} if num_classes is None else {'num_classes': num_classes}
    return MODELS[name](dtype=dtype, **kwargs)
