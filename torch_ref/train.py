"""The blog's PyTorch training loop for every preset of jaxmnist.presets, writing jaxmnist's run log.

    python -m torch_ref.train --model resnet                 # the blog's ResNet preset
    python -m torch_ref.train --preset cnn_deep --blog-quirks --num-workers 4
    python -m torch_ref.train --help

The data are jaxmnist.data's verified arrays, served by a torch Dataset through the blog's torchvision
transforms and a shuffling DataLoader. The printed lines, metrics.json and TensorBoard tags come from
jaxmnist.runlog, so a torch run and a jax run read alike.

Differences from jaxmnist.train, both the blog's: the last, smaller batch of an epoch is trained on
(DataLoader's drop_last=False; jaxmnist drops it), and the random streams are torch's (seeded by
torch.manual_seed(seed)), so runs agree in distribution, not batch for batch.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms

from jaxmnist import data as data_lib
from jaxmnist import runlog
from jaxmnist.presets import (
    Config,
    UsageError,
    add_config_arguments,
    config_from_args,
    split_train,
    tests_with_batch_statistics,
    trains_in_eval_mode,
    validate,
)
from torch_ref import models


class MnistDataset(torch.utils.data.Dataset):
    """uint8 images [n,28,28] through the blog's transforms: items are (float [1,28,28], int label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool):
        self.images = np.array(images, np.uint8)  # a writable copy: torch warns on read-only arrays
        self.labels = np.asarray(labels, np.int64)
        self.augment = augment
        steps = (
            [transforms.RandomAffine(degrees=0, translate=(0.1, 0.1)), transforms.RandomRotation((-10, 10))]
            if augment
            else []
        )
        self.transform = transforms.Compose(
            steps + [transforms.ToTensor(), transforms.Normalize((data_lib.MEAN,), (data_lib.STD,))]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        # The augmentations work on PIL images, as in the blog; without them ToTensor takes the HWC array as it
        # is (the same float32 values, at half the cost).
        image = Image.fromarray(image) if self.augment else image[:, :, None]
        return self.transform(image), int(self.labels[i])


def loader(dataset: MnistDataset, batch_size: int, *, shuffle: bool, device: torch.device, num_workers: int):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, pin_memory=device.type == "cuda"
    )


def build_optimizer(config: Config, params) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    return torch.optim.RMSprop(params, lr=config.lr, alpha=config.alpha, eps=config.eps, momentum=config.momentum)


def train_epoch(model: nn.Module, name: str, batches, optimizer, device, bar) -> tuple[np.ndarray, np.ndarray]:
    """One pass over `batches`; returns per-batch train accuracy (percent) and loss. The metrics stay on the
    device until the end of the epoch: no host sync per step."""
    accs, losses = [], []
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(models.prepare_input(name, images))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accs.append(100.0 * (logits.argmax(1) == labels).float().mean())
        losses.append(loss.detach())
        bar.update()
    return torch.stack(accs).cpu().numpy(), torch.stack(losses).cpu().numpy()


def evaluate(model: nn.Module, name: str, batches, device, batch_statistics: bool = False) -> dict:
    """Mean loss and accuracy (percent) over every example, in eval mode; with `batch_statistics`, in train mode
    as the blog's §1/§2 test() (quirk 4: BatchNorm uses and updates each batch's statistics)."""
    model.train(batch_statistics)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    with torch.no_grad():
        for images, labels in batches:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits = model(models.prepare_input(name, images))
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            correct += (logits.argmax(1) == labels).sum()
            count += len(labels)
    return {"loss": loss_sum.item() / count, "accuracy": 100.0 * correct.item() / count}


def resolve_device(name: str | None) -> torch.device:
    """`name` ('cpu', 'cuda', 'cuda:N'), checked; default CUDA when available."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available (torch {torch.__version__})")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def device_name(device: torch.device) -> str:
    """'platform:kind', as jaxmnist names its devices."""
    return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu:cpu"


def train_and_evaluate(
    config: Config,
    preset: str | None = None,
    data: data_lib.Dataset | None = None,
    logdir: str | None = None,
    device: str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    data_dir: str | None = None,
    out=sys.stdout,
) -> dict:
    """Trains `config` with torch and evaluates after every epoch; prints the blog's lines; returns the run
    record: with a logdir, metrics.json's (final and best accuracy, per-epoch metrics), else the timing only."""
    validate(config)
    if num_workers < 0:
        raise UsageError(f"--num-workers must be >= 0, got {num_workers}")
    device = resolve_device(device)

    def say(*args):
        print(*args, file=out, flush=True)

    if data is None:
        data = data_lib.load(config.dataset, data_dir, progress=progress)
    (train_x, train_y), val = split_train(data, config)
    n_train = len(train_y)
    steps = math.ceil(n_train / config.batch_size)
    if config.max_steps:
        steps = min(steps, config.max_steps)

    def make_loader(images, labels, augment, train):
        return loader(
            MnistDataset(images, labels, augment),
            config.batch_size if train else config.eval_batch_size,
            shuffle=train,
            device=device,
            num_workers=num_workers,
        )

    torch.manual_seed(config.seed)  # before the model: it seeds the init, shuffling, dropout and augmentation
    model = models.get_model(config.model, config.num_classes).to(device)
    optimizer = build_optimizer(config, model.parameters())
    train_loader = make_loader(train_x, train_y, config.augment, train=True)
    # Quirk 2: the blog's test set goes through the training augmentation.
    test_loader = make_loader(data.test_images, data.test_labels, config.augment and config.blog_quirks, train=False)
    val_loader = make_loader(*val, augment=False, train=False) if val is not None else None
    # Quirk 3: the blog creates the scheduler and never steps it, which is as if there were none.
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max",
            factor=config.plateau_factor,
            patience=config.plateau_patience,
            threshold=config.plateau_threshold,
            threshold_mode="rel",
        )
        if config.plateau and not config.blog_quirks
        else None
    )
    monitor = "validation accuracy" if val is not None else "test accuracy"
    log = None
    if logdir:
        try:
            log = runlog.RunLog(
                logdir, framework="torch", preset=preset, config=config, device=device_name(device), n_train=n_train
            )
        except OSError as e:
            raise UsageError(f"cannot write to logdir {logdir}: {e.strerror}") from None

    tf32 = (
        f", TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}, "
        f"cuDNN {'on' if torch.backends.cudnn.allow_tf32 else 'off'}"
        if device.type == "cuda"
        else ""
    )
    say(
        f"device: {device_name(device)} ({device.type}), torch {torch.__version__}{tf32}; "
        f"data loader workers: {num_workers}"
    )
    for line in runlog.preamble_lines(
        config,
        preset,
        data.source,
        n_train=n_train,
        steps=steps,
        tail="last batch kept",
        n_test=len(data.test_labels),
        n_val=len(val[1]) if val is not None else None,
        monitor=monitor,
    ):
        say(line)
    say(runlog.header_line(config.epochs))

    epoch_times = []
    for epoch in range(config.epochs):
        t_start = time.perf_counter()
        if not trains_in_eval_mode(config, epoch):
            model.train()
        with runlog.epoch_bar(epoch, config.epochs, steps, progress) as bar:
            acc, loss = train_epoch(model, config.model, itertools.islice(train_loader, steps), optimizer, device, bar)
        quirk4 = tests_with_batch_statistics(config)
        test = evaluate(model, config.model, test_loader, device, quirk4)
        val_m = evaluate(model, config.model, val_loader, device, quirk4) if val_loader is not None else None
        epoch_s = time.perf_counter() - t_start  # evaluate() synchronised the device
        epoch_times.append(epoch_s)
        lr_used = optimizer.param_groups[0]["lr"]
        say(runlog.epoch_line(epoch + 1, test["accuracy"]))
        if scheduler is not None:
            scheduler.step((val_m or test)["accuracy"])
            new_lr = optimizer.param_groups[0]["lr"]
            if new_lr != lr_used:
                say(f"    learning rate {lr_used:g} -> {new_lr:g}")
        if log:
            log.add_batches(epoch, acc, loss)
            log.add_epoch(
                epoch + 1,
                test_acc=test["accuracy"],
                test_loss=test["loss"],
                val_acc=None if val_m is None else val_m["accuracy"],
                val_loss=None if val_m is None else val_m["loss"],
                train_acc=float(acc.mean()),
                train_loss=float(loss.mean()),
                lr=lr_used,
                time_s=epoch_s,
            )

    avg = float(np.mean(epoch_times))
    say(runlog.average_line(avg))
    # jaxmnist's record keys, so that both frameworks' records read alike; eager torch compiles nothing.
    record = {"compile_s": None, "avg_epoch_s": avg, "recompiles_after_first_epoch": None}
    if log:
        record = log.finish(**record)
        s = log.summary()
        say(f"final: {s['final_acc']:.2f} %, best: {s['best_acc']:.2f} % (epoch {s['best_epoch']}); logs in {logdir}")
    return record


# --------------------------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit 2, like every other usage error
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m torch_ref.train",
        description="Train one of the blog's networks on MNIST with PyTorch, as the blog does.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument("--logdir", help="TensorBoard events, metrics.json, curves.png (default runs/torch_<preset>)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="DataLoader worker processes (the blog used 4, with pinned memory, on its GPU)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        preset, config = config_from_args(args)
        logdir = args.logdir or os.path.join("runs", f"torch_{preset}")
        train_and_evaluate(
            config,
            preset=preset,
            logdir=logdir,
            device=args.device,
            num_workers=args.num_workers,
            progress=not args.no_progress,
            data_dir=args.data_dir,
        )
    except (UsageError, data_lib.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
