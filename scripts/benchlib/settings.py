"""What a benchmark run measures (`Settings`), and the configs and batches every measurement starts from."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxmnist import data as data_lib
from jaxmnist.presets import MODEL_PRESET, NETWORKS, PRESETS, Config


@dataclasses.dataclass
class Settings:
    """What a benchmark run measures and how long it may take. `quick` shrinks everything for a CI smoke test."""

    networks: tuple[str, ...] = NETWORKS
    batch_sizes: tuple[int, ...] = (512, 64, 4096)  # the first one gets the full set of measurements
    epoch_batch_sizes: tuple[int, ...] = (512,)  # epochs and evaluation (costly compiles) only at these
    compile_batch_sizes: tuple[int, ...] = (512,)  # torch.compile (costly) only at these
    bf16: bool = False
    torch: bool = True
    torch_compile: bool = True
    warmup: int = 3
    iters: int = 50
    max_s: float = 3.0  # per measurement, once min_iters samples are in
    min_iters: int = 5
    epoch_repeats: int = 2
    pair_rounds: int = 10  # paired_step/paired_epoch: rounds of JAX and tuned torch alternating (0: none)
    seeds: int = 4  # jax_epoch_seeds: this many seeds in one vmapped program, against one seed's epoch
    train_size: int = 0  # > 0: the epoch covers only this many training images
    eval_size: int = 0  # > 0: evaluation covers only this many test images
    chunk_steps: int | None = None  # None: the engine's default (8 unrolled steps on CPU, 1/8 epoch elsewhere)
    num_workers: int = 0  # the blog's DataLoader: 4 on a GPU machine; 0 on a small CPU box
    pin_memory: bool = False
    budget_s: float | None = None
    quick: bool = False
    conv_impl: str | None = None  # jaxmnist.convs: None is $JAXMNIST_CONV_IMPL, else auto, as in jaxmnist.train


def quick_settings(**overrides) -> Settings:
    """A smoke test: cnn and resnet, batch 8, a few steps, a 64-image epoch, no torch.compile."""
    base = dict(
        networks=("cnn", "resnet"),
        batch_sizes=(8,),
        epoch_batch_sizes=(8,),
        compile_batch_sizes=(),
        torch_compile=False,
        warmup=1,
        iters=3,
        max_s=0.5,
        min_iters=2,
        epoch_repeats=1,
        pair_rounds=2,
        seeds=2,
        train_size=64,
        eval_size=64,
        chunk_steps=1,
        quick=True,
    )
    return Settings(**{**base, **overrides})


def config_for(network: str, batch_size: int) -> Config:
    """The network's own preset (its optimiser and learning rate) at `batch_size`, without augmentation or a
    learning-rate schedule: the benchmark measures the network, and both frameworks then read the same plain
    ToTensor/Normalize data."""
    return PRESETS[MODEL_PRESET[network]].replace(
        batch_size=batch_size, augment=False, plateau=False, schedule="constant"
    )


def real_batches(data: data_lib.Dataset, batch_size: int, count: int, seed: int = 0):
    """`count` distinct shuffled training batches as (uint8 images [B,28,28], int labels [B]) numpy pairs."""
    order = np.random.default_rng(seed).permutation(len(data.train_labels))
    n = len(order)
    out = []
    for i in range(count):
        idx = order[(np.arange(batch_size) + i * batch_size) % n]
        out.append((data.train_images[idx], data.train_labels[idx].astype(np.int32)))
    return out
