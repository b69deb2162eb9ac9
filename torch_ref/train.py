"""The blog's PyTorch training loop for every preset of jaxmnist.presets, writing jaxmnist's run log.

    python -m torch_ref.train --model resnet                 # the blog's ResNet preset
    python -m torch_ref.train --preset cnn_deep --blog-quirks --num-workers 4
    python -m torch_ref.train --help

The data come through torch_ref.data (jaxmnist.data's verified arrays in the blog's transforms and DataLoader),
the optimiser, schedule and weight average from torch_ref.optim. The printed lines, metrics.json and TensorBoard
tags come from jaxmnist.runlog, so a torch run and a jax run read alike.

Differences from jaxmnist.train, both the blog's: the last, smaller batch of an epoch is trained on
(DataLoader's drop_last=False; jaxmnist drops it), and the random streams are torch's (seeded by
torch.manual_seed(seed)), so runs agree in distribution, not batch for batch.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import sys
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jaxmnist import checkpoint as jax_checkpoint
from jaxmnist import cli, runlog, weights
from jaxmnist import data as data_lib
from jaxmnist import evaluate as report_lib
from jaxmnist.cli import UsageError
from jaxmnist.continuation import nothing_to_train
from jaxmnist.presets import (
    Config,
    config_from_args,
    given_settings,
    interim_steps,
    plateau_arguments,
    split_train,
    tests_with_batch_statistics,
    trainer_parser,
    trains_in_eval_mode,
    validate,
)
from torch_ref import models
from torch_ref import resume as resume_lib
from torch_ref.data import make_loader
from torch_ref.optim import WeightAverage, build_optimizer, build_schedule


def train_step(model: nn.Module, name: str, optimizer, images, labels, label_smoothing: float = 0.0):
    """The blog's step on device tensors: forward, cross-entropy, zero_grad, backward, optimiser step.
    Returns (logits, loss), still on the device."""
    logits = model(models.prepare_input(name, images))
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return logits, loss


def train_epoch(
    model: nn.Module,
    name: str,
    batches,
    optimizer,
    device,
    bar=None,
    *,
    label_smoothing: float = 0.0,
    schedule=None,
    average: WeightAverage | None = None,
    interim=None,
) -> tuple[np.ndarray, np.ndarray]:
    """One pass over `batches` from a loader; returns per-batch train accuracy (percent) and loss. The metrics
    stay on the device until the end of the epoch: no host sync per step. After every step the per-step
    `schedule` and the weight `average` advance, if given. `interim`: (steps, evaluate): evaluate(step) after
    each of `steps` (counted from 1)."""
    accs, losses = [], []
    targets, evaluate_now = interim or ((), None)
    for step, (images, labels) in enumerate(batches, 1):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits, loss = train_step(model, name, optimizer, images, labels, label_smoothing)
        if schedule is not None:
            schedule.step()
        if average is not None:
            average.update()
        accs.append(100.0 * (logits.argmax(1) == labels).float().mean())
        losses.append(loss.detach())
        if bar is not None:
            bar.update()
        if step in targets:
            evaluate_now(step)
    return torch.stack(accs).cpu().numpy(), torch.stack(losses).cpu().numpy()


@torch.no_grad()
def _logits(model: nn.Module, name: str, batches, device):
    """(logits, labels) of every batch, on `device`, in the model's current mode."""
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        yield model(models.prepare_input(name, images)), labels


def evaluate(model: nn.Module, name: str, batches, device, batch_statistics: bool = False) -> dict:
    """Mean loss and accuracy (percent) over every example, in eval mode; with `batch_statistics`, in train mode
    as the blog's §1/§2 test() (docs/experiments.md, quirk 4: BatchNorm uses and updates each batch's statistics)."""
    model.train(batch_statistics)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for logits, labels in _logits(model, name, batches, device):
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        count += len(labels)
    return {"loss": loss_sum.item() / count, "accuracy": 100.0 * correct.item() / count}


def probabilities(model: nn.Module, name: str, batches, device) -> np.ndarray:
    """The softmax over every example of `batches`, in eval mode: [n, classes] float32."""
    model.eval()
    return np.concatenate([torch.softmax(logits.float(), 1).cpu().numpy()
                           for logits, _ in _logits(model, name, batches, device)])  # fmt: skip


def write_report(run: Run) -> None:
    """The evaluation report of the run's final (evaluated) weights on the un-augmented test set, as jaxmnist's
    (jaxmnist.evaluate.write_run_report)."""
    images, labels = run.data.test_images, run.data.test_labels
    batches = make_loader(images, labels, run.config.eval_batch_size, augment=False, shuffle=False, device=run.device)
    probs = probabilities(run.evaluated, run.config.model, batches, run.device)
    report_lib.write_run_report(probs, images, labels, run.report.log, run.report.say)


def read_state_dict(path) -> dict:
    """--torch-state-dict's file (torch.load, weights only); one line where it cannot be read."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except OSError as e:
        raise UsageError(f"cannot read --torch-state-dict {path}: {e.strerror or e}") from None
    except Exception as e:  # not a torch file, or more than weights (a whole pickled model): torch's text is long
        raise UsageError(f"cannot read --torch-state-dict {path}: not a state_dict torch.load reads with weights_only "
                         f"({type(e).__name__})") from None  # fmt: skip


def load_initial(model: nn.Module, state_dict, name: str, path) -> None:
    """The weights a run starts from, loaded strictly (every key of the network, no other, every shape); what does
    not fit is named in one line."""
    if not (isinstance(state_dict, dict) and all(isinstance(v, torch.Tensor) for v in state_dict.values())):
        raise UsageError(f"--torch-state-dict {path} holds a {type(state_dict).__name__}, not a state_dict of tensors")
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state_dict.keys()), sorted(state_dict.keys() - own.keys())
    shapes = sorted(k for k in own.keys() & state_dict.keys() if own[k].shape != state_dict[k].shape)
    problems = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for what, keys in
                (("lacks", missing), ("has no place for", unexpected), ("has other shapes for", shapes)) if keys]
    if problems:
        raise UsageError(f"--torch-state-dict {path} is not a {name} state_dict: it {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


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


def tf32_note(device: torch.device) -> str:
    """torch's TF32 settings on a GPU, where they change the numbers (docs/parity.md); empty on the CPU."""
    if device.type != "cuda":
        return ""
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    return f", TF32 matmul {'on' if matmul else 'off'}, cuDNN {'on' if conv else 'off'}"


@dataclasses.dataclass
class Run:
    """What one training run holds between its epochs: `parts` is what a checkpoint keeps."""

    config: Config
    model: nn.Module
    optimizer: torch.optim.Optimizer
    per_step: object  # the per-step schedule (build_schedule), or None
    plateau: object  # ReduceLROnPlateau, or None
    average: WeightAverage | None
    train_loader: object
    test_loader: object
    val_loader: object
    steps: int
    device: torch.device
    report: runlog.Report
    data: data_lib.Dataset
    announce: Callable[[], None]  # the preamble, printed once a resumed run has said where it resumes from

    @property
    def evaluated(self) -> nn.Module:
        """The weights evaluated: the moving average's where there is one."""
        return self.average.model if self.average else self.model

    @property
    def parts(self) -> dict:
        return {"model": self.model, "optimizer": self.optimizer, "schedule": self.per_step,
                "plateau": self.plateau, "average": self.average}  # fmt: skip


def prepare(config: Config, preset, data, logdir, device, num_workers, progress, data_dir, out, init=None) -> Run:
    """Data, model (from `init`, (path, state_dict), where given), optimiser, schedules and the run log, with the
    preamble ready to print (Run.announce)."""
    torch.manual_seed(config.seed)  # before the model: it seeds the init, shuffling, dropout and augmentation
    model = models.get_model(config.model, config.num_classes)
    if init is not None:  # a file that does not fit is refused before the data are read
        load_initial(model, init[1], config.model, init[0])
    model = model.to(device)
    if data is None:
        data = data_lib.load(config.dataset, data_dir, progress=progress)
    (train_x, train_y), val = split_train(data, config)
    steps = math.ceil(len(train_y) / config.batch_size)  # the blog's DataLoader keeps the last, smaller batch
    steps = min(steps, config.max_steps) if config.max_steps else steps
    optimizer = build_optimizer(config, model.parameters())
    loader = functools.partial(make_loader, device=device, num_workers=num_workers)
    train_loader = loader(
        train_x, train_y, config.batch_size, augment=config.augment, shuffle=True, elastic=config.elastic,
        warp=config.warp,
    )
    # Quirk 2: the blog's test set goes through the training augmentation.
    test_augment = config.augment and config.blog_quirks
    test_loader = loader(
        data.test_images, data.test_labels, config.eval_batch_size, augment=test_augment, shuffle=False
    )
    val_loader = loader(*val, config.eval_batch_size, augment=False, shuffle=False) if val is not None else None
    # Quirk 3: the blog creates the scheduler and never steps it, which is as if there were none.
    plateau = None
    if config.plateau and not config.blog_quirks:
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **plateau_arguments(config))
    per_step = build_schedule(config, optimizer, steps * config.epochs)
    average = WeightAverage(model, config.ema) if config.ema else None
    report = runlog.Report.for_run(
        out, logdir, framework="torch", preset=preset, config=config, device=device_name(device), n_train=len(train_y)
    )
    announce = functools.partial(
        report.preamble,
        f"device: {device_name(device)} ({device.type}), torch {torch.__version__}{tf32_note(device)}; "
        f"data loader workers: {num_workers}",
        config,
        preset,
        data.source,
        n_train=len(train_y),
        steps=steps,
        tail="last batch kept",
        n_test=len(data.test_labels),
        n_val=len(val[1]) if val is not None else None,
        monitor="validation accuracy" if val is not None else "test accuracy",
    )
    return Run(config, model, optimizer, per_step, plateau, average, train_loader, test_loader, val_loader, steps,
               device, report, data, announce)  # fmt: skip


def run_epoch(run: Run, epoch: int, progress: bool) -> float:
    """One epoch: train, check for divergence, evaluate, step the plateau rule, log. Returns its seconds."""
    config, model, optimizer = run.config, run.model, run.optimizer
    t_start = time.perf_counter()
    model.train(not trains_in_eval_mode(config, epoch))  # quirk 1 said, not left to evaluate()'s mode
    quirk4 = tests_with_batch_statistics(config)
    scores = functools.partial(evaluate, run.evaluated, config.model, device=run.device, batch_statistics=quirk4)

    def test_and_val() -> tuple[dict, dict | None]:
        return scores(run.test_loader), scores(run.val_loader) if run.val_loader is not None else None

    def evaluate_now(step: int) -> None:
        """An interim evaluation (Config.evals_per_epoch) that leaves the training as it was: its mode, and the
        random stream the augmentation draws from (a DataLoader's iterator takes a seed from it)."""
        training = model.training
        with torch.random.fork_rng(devices=[]):
            test, val = test_and_val()
        model.train(training)
        run.report.interim(epoch, step, run.steps, test=test, val=val, at_s=time.perf_counter() - t_start)

    with runlog.epoch_bar(epoch, config.epochs, run.steps, progress) as bar:
        acc, loss = train_epoch(
            model,
            config.model,
            itertools.islice(run.train_loader, run.steps),
            optimizer,
            run.device,
            bar,
            label_smoothing=config.label_smoothing,
            schedule=run.per_step,
            average=run.average,
            interim=(interim_steps(config, run.steps), evaluate_now),
        )
    if not (np.isfinite(loss).all() and all(torch.isfinite(p).all() for p in model.parameters())):
        bad = np.flatnonzero(~np.isfinite(loss))
        step = int(bad[0]) + 1 if len(bad) else len(loss)
        raise cli.Diverged(epoch, step, float(loss[step - 1]))
    test, val = test_and_val()
    seconds = time.perf_counter() - t_start  # evaluate() synchronised the device
    lr = optimizer.param_groups[0]["lr"]  # the rate the next step will use, as jaxmnist logs it
    if run.plateau is not None:
        run.plateau.step((val or test)["accuracy"])
    run.report.epoch(
        epoch,
        test=test,
        val=val,
        batch_acc=acc,
        batch_loss=loss,
        lr=lr,
        next_lr=optimizer.param_groups[0]["lr"],
        time_s=seconds,
    )
    return seconds


def train_and_evaluate(
    config: Config,
    preset: str | None = None,
    data: data_lib.Dataset | None = None,
    logdir: str | None = None,
    device: str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    data_dir: str | None = None,
    out=None,
    workdir: str | None = None,
    resume: bool = False,
    stop_after_epoch: int | None = None,
    report: bool = True,
    init: str | None = None,
    given: frozenset[str] | None = None,
) -> dict:
    """Trains `config` with torch and evaluates after every epoch; prints the blog's lines; returns the run
    record: with a logdir, metrics.json's (final and best accuracy, per-epoch metrics), else the timing only.
    With a `workdir`, every epoch ends with a checkpoint there (torch_ref.resume), which `resume` continues from;
    `stop_after_epoch` ends the run early as a kill would (tests). With a logdir and `report`, the run ends with the
    evaluation report of its final weights there (jaxmnist.evaluate), as jaxmnist's does. `init`: a state_dict
    file to start from instead of a fresh initialisation (--torch-state-dict). `given`: the settings a resumed run
    takes from its command line rather than its checkpoint (jaxmnist.continuation; None: all of `config`)."""
    validate(config)
    if num_workers < 0:
        raise UsageError(f"--num-workers must be >= 0, got {num_workers}")
    device = resolve_device(device)
    if logdir:
        runlog.writable_dir(logdir)
    if workdir:  # before the first epoch, not at its checkpoint
        runlog.writable_dir(workdir, "--workdir")
    if resume and not workdir:
        raise UsageError("--resume needs --workdir")
    if resume and init:
        raise cli.init_or_resume()
    if workdir and jax_checkpoint.holds_checkpoint(workdir):
        raise cli.other_trainers_workdir(workdir, "jaxmnist.train")
    if workdir and not resume and resume_lib.path(workdir).exists():
        raise cli.workdir_taken(workdir, resume_lib.saved_epoch(workdir))

    # Refused before any output; a resumed run's settings are its checkpoint's but for those given (given_settings).
    checkpoint, config = resume_lib.read(workdir, config, num_workers, given) if resume else (None, config)
    trained_all = checkpoint is not None and checkpoint["epoch"] >= config.epochs
    if trained_all and (done := runlog.completed_record(logdir, report)) is not None:
        return finished(done, workdir, logdir, config.epochs, out)  # a finished run: its files as they were
    start = (init, read_state_dict(init)) if init else None
    run = prepare(config, preset, data, logdir, device, num_workers, progress, data_dir, out, start)
    first_epoch = 0
    if resume:  # a resumed run continues from its checkpoint, random streams included
        first_epoch, record = resume_lib.restore(checkpoint, workdir, config, run.parts, run.report.say)
        if record and run.report.log:
            run.report.log.record = record
    run.announce()  # after the resume's lines, as jaxmnist prints them

    epoch_times, last_saved = [], first_epoch  # the newest epoch checkpointed in workdir
    for epoch in range(first_epoch, config.epochs):
        try:
            epoch_times.append(run_epoch(run, epoch, progress))
        except cli.Diverged as e:  # nothing of the epoch is saved: the checkpoint stays the last good one
            raise cli.diverged(e, workdir, last_saved) from None
        if workdir:
            record = run.report.log.record if run.report.log else None
            resume_lib.save(workdir, epoch + 1, config, run.parts, record, num_workers)
            last_saved = epoch + 1
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    if report and run.report.log:
        write_report(run)
    return run.report.finish(epoch_times)


def finished(record: dict, workdir, logdir, epochs: int, out) -> dict:
    """A resumed run that has trained all its epochs and written its records (`record`, runlog.completed_record's):
    jaxmnist's line, the final and best accuracy; nothing loaded or built."""
    say = runlog.Report(out).say
    say(nothing_to_train(workdir, epochs))
    if record:
        say(runlog.final_line(record, logdir))
    return record


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> cli.ArgumentParser:
    p = trainer_parser(
        "python -m torch_ref.train", "Train one of the blog's networks on MNIST with PyTorch, as the blog does."
    )
    p.add_argument("--logdir", help="TensorBoard events, metrics.json, curves.png (default runs/torch_<preset>, "
                   "or runs/torch_<preset>-2, ... where that holds an earlier run's)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="DataLoader worker processes (the blog used 4, with pinned memory, on its GPU)",
    )
    p.add_argument("--workdir", help="a checkpoint after every epoch (WORKDIR/checkpoint.pt), for --resume")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --workdir")
    weights.add_torch_flag(
        p, "start from this state_dict of the preset's network (loaded strictly) instead of a fresh initialisation"
    )
    return p


def _main(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    preset, config = config_from_args(args)
    cli.stop_on_sigterm()
    with cli.resume_hint(args.workdir):
        train_and_evaluate(
            config,
            preset=preset,
            logdir=args.logdir or cli.default_logdir(f"torch_{preset}"),
            device=args.device,
            num_workers=args.num_workers,
            progress=not args.no_progress,
            data_dir=args.data_dir,
            workdir=args.workdir,
            resume=args.resume,
            given=given_settings(args),
            report=not args.no_report,
            init=args.torch_state_dict,
        )


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv), user_errors=(data_lib.DataError,))


if __name__ == "__main__":
    sys.exit(main())
