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

import dataclasses
import functools
from typing import ClassVar, Sequence

import jax.numpy as jnp
from flax import linen as nn

from jaxmnist import convs
from jaxmnist.convs import ConvPlan
from jaxmnist.layers import (
    BatchNorm,
    Conv,
    Dense,
    Dtype,
    ModuleDef,
    conv_pool_1ch,
    flatten_chw,
    kaiming_normal_fan_out,
    max_pool,
    stage_1ch_eval,
    stage_1ch_train,
)


class CNN(nn.Module):
    """The blog's first network (sections 1-3): two conv -> max-pool -> ReLU -> BN blocks, one Linear."""

    num_classes: int = 10
    dtype: Dtype = jnp.float32
    conv_plan: ConvPlan = convs.XLA  # how its convolutions run (jaxmnist.convs)
    fuse_first_block: bool = True  # conv_pool_1ch: the same function, a quarter off the train step on XLA:CPU
    kernel_size: ClassVar[int] = 5  # both blocks' convolutions (the blog's)

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(Conv, dtype=self.dtype, plan=self.conv_plan)
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        x = x.astype(self.dtype)
        for i, features in enumerate((10, 20), start=1):
            if i == 1 and self._fusable(x):
                params = conv(features, self.kernel_size, name='block1_0').variables['params']
                x = conv_pool_1ch(x, params['kernel'], params['bias'])
            else:
                x = nn.relu(max_pool(conv(features, self.kernel_size, name=f'block{i}_0')(x), 2, 2))
            x = norm(name=f'block{i}_3')(x)
        return Dense(self.num_classes, dtype=self.dtype, name='fc_1')(flatten_chw(x))

    def _fusable(self, x) -> bool:
        """As FastNet's first stage: a 1-channel input whose convolution output has even sides, float32 or wider,
        and parameters that exist (init runs the composed layers, which create them)."""
        return (
            self.fuse_first_block
            and x.shape[-1] == 1
            and (x.shape[1] - self.kernel_size + 1) % 2 == (x.shape[2] - self.kernel_size + 1) % 2 == 0
            and jnp.dtype(self.dtype).itemsize >= 4
            and not self.is_initializing()
        )


class CNNDeep(nn.Module):
    """The blog's section 4 network: two double-conv stages with BN and dropout, a two-layer head.

    Setting the dropout rates to 0 removes dropout (no 'dropout' rng needed) while BatchNorm still
    follows ``train``, which is how the parity tests compare training-mode passes with PyTorch.
    """

    num_classes: int = 10
    conv_dropout_rate: float = 0.25
    fc_dropout_rate: float = 0.5
    widths: Sequence[int] = (32, 64)  # the blog's; wider stages only for scripts/ablation.py's studies
    dtype: Dtype = jnp.float32
    conv_plan: ConvPlan = convs.XLA  # how its convolutions run (jaxmnist.convs)

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(Conv, kernel_init=kaiming_normal_fan_out, dtype=self.dtype, plan=self.conv_plan)
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        x = x.astype(self.dtype)
        for stage, (features, kernel_size) in enumerate(zip(self.widths, (5, 3)), start=1):
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
    conv_plan: ConvPlan = convs.XLA  # how its convolutions run (jaxmnist.convs)
    fuse_first_stage: bool = True  # stage_1ch_*: the same function, 2.5x faster forward plus backward on XLA:CPU

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(
            Conv, kernel_size=3, padding=1, use_bias=False, dtype=self.dtype, plan=self.conv_plan
        )
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        x = x.astype(self.dtype)
        index = 0  # the position in torch's Sequential: conv, BN, ReLU per conv, a pool per stage
        for stage, features in enumerate(self.widths):
            if stage == 0 and self._fusable(x):
                x = self._fused_first_stage(conv(features, name='features_0'), norm(name='features_1'), x, train)
                index += 4
                continue
            for _ in range(self.convs_per_stage):
                x = conv(features, name=f'features_{index}')(x)
                x = nn.relu(norm(name=f'features_{index + 1}')(x))
                index += 3
            x = max_pool(x, 2, 2)
            index += 1
        return Dense(self.num_classes, dtype=self.dtype, name='fc')(flatten_chw(x))

    def _fusable(self, x) -> bool:
        """The first stage fuses when it is one conv of a 1-channel input with even sides, in float32 or wider, and
        its parameters exist (init runs the composed layers, which create them)."""
        return (
            self.fuse_first_stage
            and self.convs_per_stage == 1
            and x.shape[-1] == 1
            and x.shape[1] % 2 == x.shape[2] % 2 == 0
            and jnp.dtype(self.dtype).itemsize >= 4
            and not self.is_initializing()
        )

    @staticmethod
    def _fused_first_stage(conv: 'Conv', norm: 'BatchNorm', x, train: bool):
        kernel = conv.variables['params']['kernel']
        scale, bias = norm.variables['params']['scale'], norm.variables['params']['bias']
        if not train:
            stats = norm.variables['batch_stats']
            return stage_1ch_eval(x, kernel, scale, bias, stats['mean'], stats['var'], norm.epsilon)
        y, mean, var = stage_1ch_train(x, kernel, scale, bias, norm.epsilon)
        norm.update_statistics(mean, var, x.size)
        return y


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
    conv_plan: ConvPlan = convs.XLA  # how its convolutions run (jaxmnist.convs)

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(Conv, dtype=self.dtype, plan=self.conv_plan)
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
    conv_plan: ConvPlan = convs.XLA  # how its convolutions run (jaxmnist.convs)

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(
            Conv, use_bias=False, kernel_init=kaiming_normal_fan_out, dtype=self.dtype, plan=self.conv_plan
        )
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


@dataclasses.dataclass(frozen=True)
class Apply:
    """`module.apply`, equal for equal networks (a bound method compares its module by identity): as a train
    state's static field or a jitted function's static argument, a network built anew finds jit's traces and the
    process's compiled programs again; an edited network (another class) does not."""

    module: nn.Module

    def __call__(self, *args, **kwargs):
        return self.module.apply(*args, **kwargs)


def get_model(
    name: str, num_classes: int | None = None, dtype: Dtype = jnp.float32, conv_plan: ConvPlan = convs.XLA
) -> nn.Module:
    """Builds the network ``name`` (a key of MODELS).

    ``num_classes=None`` keeps the network's natural head, as the blog trains it: 10 classes for
    cnn, cnn_deep and resnet, torchvision's 1000 for resnet18 and resnet101. ``conv_plan``: how its
    convolutions run (jaxmnist.convs; XLA's own choice by default).
    """
    if name not in MODELS:
        raise ValueError(f'unknown model {name!r}; choose from {", ".join(MODELS)}')
    kwargs = {} if num_classes is None else {'num_classes': num_classes}
    return MODELS[name](dtype=dtype, conv_plan=conv_plan, **kwargs)
