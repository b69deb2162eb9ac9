"""The blog's experiments as data (SPEC.md, "Experiments"). Both trainers, jaxmnist's and torch_ref's, read these."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run. Presets are instances; the CLI overrides fields."""

    model: str = "cnn"
    dataset: str = "mnist"
    num_classes: int | None = None  # None: the network's natural head (10; torchvision's nets keep 1000)
    batch_size: int = 512
    epochs: int = 20
    optimizer: str = "sgd"
    lr: float = 0.04
    momentum: float = 0.5
    alpha: float = 0.99  # RMSprop's smoothing constant (torch's name)
    eps: float = 1e-8
    augment: bool = False  # §4: RandomAffine(translate 0.1) then RandomRotation(±10°), on the fly
    plateau: bool = False  # §4: ReduceLROnPlateau(mode='max', factor, patience, threshold) on the monitored acc
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    plateau_threshold: float = 5e-5
    val_size: int = 0  # > 0: hold out this many training images and monitor them instead of the test set
    train_size: int = 0  # > 0: train on only the first N training images (quick runs)
    max_steps: int = 0  # > 0: at most this many steps per epoch (quick runs)
    eval_batch_size: int = 1000
    seed: int = 0
    blog_quirks: bool = False  # reproduce the blog's own loop: SPEC.md quirks 1-3
    blog_result: float | None = None  # the blog's reported final test accuracy, for tables
    blog_epoch_s: float | None = None  # the blog's reported time per epoch

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, Config] = {
    "cnn_cpu": Config(model="cnn", batch_size=64, lr=0.01, epochs=10, blog_result=99.11),
    "cnn_gpu": Config(model="cnn", batch_size=256, lr=0.04, epochs=20, blog_result=99.01),
    "cnn_tb": Config(model="cnn", batch_size=512, lr=0.04, epochs=20, blog_result=99.00, blog_epoch_s=5.77),
    "cnn_deep": Config(model="cnn_deep", batch_size=512, optimizer="rmsprop", lr=1e-3, epochs=100, augment=True,
                       plateau=True, blog_result=99.30, blog_epoch_s=6.89),
    "resnet": Config(model="resnet", batch_size=512, lr=0.04, epochs=20, blog_result=99.30, blog_epoch_s=14.43),
    "resnet18": Config(model="resnet18", batch_size=512, lr=0.001, epochs=50, blog_result=98.36, blog_epoch_s=6.75),
    "resnet101": Config(model="resnet101", batch_size=512, lr=0.001, epochs=50, blog_result=97.50,
                        blog_epoch_s=28.44),
}

# `--model NAME` alone runs the network's natural preset.
MODEL_PRESET = {"cnn": "cnn_tb", "cnn_deep": "cnn_deep", "resnet": "resnet", "resnet18": "resnet18",
                "resnet101": "resnet101"}


def describe(c: Config) -> str:
    """One line: network, batch, optimiser and schedule, as the blog would state them."""
    opt = f"SGD lr {c.lr:g}, momentum {c.momentum:g}" if c.optimizer == "sgd" else (
        f"RMSprop lr {c.lr:g}, alpha {c.alpha:g}, momentum {c.momentum:g}")
    extras = [s for s, on in (("augmentation", c.augment), ("ReduceLROnPlateau", c.plateau),
                              ("blog quirks", c.blog_quirks)) if on]
    return f"{c.model}, batch {c.batch_size}, {opt}, {c.epochs} epochs" + "".join(f", {e}" for e in extras)
