"""The PyTorch half of the benchmarks, on torch_ref's code: the blog's loop exactly as `torch_ref.train` runs it
(its Dataset and DataLoader, `train_epoch`, `evaluate`), and a tuned loop (device-resident data, channels_last,
cudnn.benchmark, fused optimiser, optionally torch.compile) around the same `train_step`."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import numpy as np
import torch

from benchlib.environment import first_line, peak_for, utilisation
from benchlib.settings import Settings, config_for, real_batches
from benchlib.timing import measure, measure_pipelined, pipelined_count
from jaxmnist import data as data_lib
from torch_ref import data as torch_data
from torch_ref import models as torch_models
from torch_ref import optim as torch_optim
from torch_ref import train as torch_train


def torch_sync(device: str) -> Callable[[Any], None]:
    if device.startswith("cuda"):
        return lambda _=None: torch.cuda.synchronize(device)
    return lambda _=None: None


def torch_model(network: str, device: str, channels_last: bool = False):
    torch.manual_seed(0)
    model = torch_models.get_model(network).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def blog_loader(images, labels, batch_size: int, settings: Settings, device: str, shuffle: bool):
    """The DataLoader torch_ref.train uses (torch_ref.data; no augmentation: the benchmark's configs have none). A
    worker that hangs for two minutes fails the measurement (recorded) instead of stalling the run."""
    return torch_data.make_loader(
        images, labels, batch_size, augment=False, shuffle=shuffle, device=device,
        num_workers=settings.num_workers, timeout=120,
    )  # fmt: skip


def _utilisation(flops_per_image, images_per_s, peak, device: str) -> dict:
    return utilisation(
        flops_per_image, images_per_s, *peak_for(peak, "gpu" if device.startswith("cuda") else "cpu", "f32")
    )


def torch_blog_step(
    network: str,
    batch_size: int,
    data: data_lib.Dataset,
    settings: Settings,
    device: str,
    peak: dict,
    flops_per_image: float | None = None,
) -> dict:
    """The blog's loop, one timed iteration at a time: `torch_ref.train.train_epoch` over the DataLoader's next
    batch (loading, `.to(device)`, the step, the metrics), then `torch.cuda.synchronize()`."""
    model = torch_model(network, device)
    optimizer = torch_optim.build_optimizer(config_for(network, batch_size), model.parameters())
    loader = blog_loader(data.train_images, data.train_labels, batch_size, settings, device, shuffle=True)
    sync = torch_sync(device)
    box = {"it": iter(loader)}

    def one():
        try:
            batch = next(box["it"])
        except StopIteration:  # the epoch ran out: a new one (its worker start-up lands in one sample)
            box["it"] = iter(loader)
            batch = next(box["it"])
        return torch_train.train_epoch(model, network, [batch], optimizer, device)

    t = measure(
        one, sync, warmup=settings.warmup, iters=settings.iters, max_s=settings.max_s, min_iters=settings.min_iters
    )
    ips = batch_size / t.median
    return {
        "num_workers": settings.num_workers,
        "pin_memory": loader.pin_memory,
        "step": t.summary(),
        "step_ms": 1e3 * t.median,
        "images_per_s": ips,
        **_utilisation(flops_per_image, ips, peak, device),
    }


def torch_blog_epoch(network: str, batch_size: int, data: data_lib.Dataset, settings: Settings, device: str) -> dict:
    """The blog's whole epoch (`torch_ref.train.train_epoch`; its DataLoader keeps the ragged last batch) and its
    test pass (`torch_ref.train.evaluate`: eval mode, no_grad, the test set at the same batch size), each timed
    once; both end with a device sync."""
    n = min(settings.train_size or len(data.train_labels), len(data.train_labels))
    n_test = min(settings.eval_size or len(data.test_labels), len(data.test_labels))
    model = torch_model(network, device)
    optimizer = torch_optim.build_optimizer(config_for(network, batch_size), model.parameters())
    loader = blog_loader(data.train_images[:n], data.train_labels[:n], batch_size, settings, device, shuffle=True)
    t0 = time.perf_counter()
    acc, _ = torch_train.train_epoch(model, network, loader, optimizer, device)
    epoch_s = time.perf_counter() - t0
    test_images, test_labels = data.test_images[:n_test], data.test_labels[:n_test]
    test_loader = blog_loader(test_images, test_labels, batch_size, settings, device, shuffle=False)
    t0 = time.perf_counter()
    torch_train.evaluate(model, network, test_loader, device)
    test_s = time.perf_counter() - t0
    return {
        "num_workers": settings.num_workers,
        "pin_memory": loader.pin_memory,
        "steps": len(acc),
        "images": n,
        "epoch_s": epoch_s,
        "images_per_s": n / epoch_s,
        "full_epoch_s_estimate": epoch_s * len(data.train_labels) / n,
        "test_pass_s": test_s,
        "test_images": n_test,
        "test_images_per_s": n_test / test_s,
    }


def device_tensors(images: np.ndarray, labels: np.ndarray, device: str):
    """Normalised NCHW float32 images (channels_last) and int64 labels, resident on `device`."""
    x = torch.from_numpy(((images.astype(np.float32) / 255.0 - data_lib.MEAN) / data_lib.STD)[:, None])
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    return x, torch.from_numpy(np.asarray(labels, np.int64)).to(device)


@contextlib.contextmanager
def cudnn_benchmark():
    """cudnn.benchmark on inside the tuned measurements only; the blog's loop keeps torch's default (off)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class TunedLoop:
    """`torch_ref.train.train_step`, tuned: real batches resident on the device, channels_last model and inputs,
    the fused optimiser on CUDA, TF32 left at torch's defaults. `runner` is the model or its torch.compile.
    Enter `cudnn_benchmark()` around its steps."""

    def __init__(self, network: str, batch_size: int, data: data_lib.Dataset, device: str):
        self.network, self.device = network, device
        self.model = self.runner = torch_model(network, device, channels_last=True)
        self.optimizer = torch_optim.build_optimizer(
            config_for(network, batch_size), self.model.parameters(), fused=device.startswith("cuda")
        )
        self.batches = [device_tensors(x, y, device) for x, y in real_batches(data, batch_size, 4)]
        self.sync = torch_sync(device)
        self.i = 0

    def step(self):
        """One step on the next batch, not synced on a GPU."""
        images, labels = self.batches[self.i % len(self.batches)]
        self.i += 1
        return torch_train.train_step(self.runner, self.network, self.optimizer, images, labels)


def torch_tuned_step(
    network: str,
    batch_size: int,
    data: data_lib.Dataset,
    settings: Settings,
    device: str,
    peak: dict,
    flops_per_image: float | None = None,
    compile: bool = False,
) -> dict:
    """The tuned loop's step (`TunedLoop`) with cudnn.benchmark; with `compile`, `torch.compile(model)`.

    A failing torch.compile does not fail the measurement: it is recorded (`compile_error`) and the eager
    numbers stand in.
    """
    loop = TunedLoop(network, batch_size, data, device)
    sync = loop.sync
    out = {
        "channels_last": True,
        "cudnn_benchmark": device.startswith("cuda"),
        "fused_optimizer": bool(loop.optimizer.defaults.get("fused")),
    }
    with cudnn_benchmark():
        mode = "eager"
        if compile:
            try:
                (torch.compiler.reset if hasattr(torch, "compiler") else torch._dynamo.reset)()
                loop.runner = torch.compile(loop.model, dynamic=False)
                t0 = time.perf_counter()
                sync(loop.step())
                out["first_step_s"] = time.perf_counter() - t0  # compile + one step
                mode = "compiled"
            except Exception as e:  # inductor needs a C++ compiler (and Triton on GPUs): record why, go eager
                out["compile_error"] = first_line(e)
                loop.runner = loop.model
        t = measure(
            loop.step,
            sync,
            warmup=settings.warmup,
            iters=settings.iters,
            max_s=settings.max_s,
            min_iters=settings.min_iters,
        )
        n = pipelined_count(t.median, settings.iters, settings.max_s)
        pipelined = measure_pipelined(loop.step, sync, n)
    ips = batch_size / t.median
    out.update(
        mode=mode,
        step=t.summary(),
        step_ms=1e3 * t.median,
        pipelined_step_ms=1e3 * pipelined,
        pipelined_n=n,
        images_per_s=ips,
        **_utilisation(flops_per_image, ips, peak, device),
    )
    if mode == "compiled":
        out["compile_s_estimate"] = out["first_step_s"] - t.median
    return out


def torch_tuned_eval(network: str, batch_size: int, data: data_lib.Dataset, settings: Settings, device: str) -> dict:
    """`torch_ref.train.evaluate` over device-resident channels_last test batches (eager)."""
    n = min(settings.eval_size or len(data.test_labels), len(data.test_labels))
    model = torch_model(network, device, channels_last=True)
    x, y = device_tensors(data.test_images[:n], data.test_labels[:n], device)
    batches = [(x[s : s + batch_size], y[s : s + batch_size]) for s in range(0, n, batch_size)]
    with cudnn_benchmark():
        t = measure(
            lambda: torch_train.evaluate(model, network, batches, device),
            lambda _: None,  # evaluate() returns host numbers: synchronised
            warmup=1,
            iters=max(3, settings.epoch_repeats + 1),
            max_s=settings.max_s,
            min_iters=2,
        )
    return {"images": n, "pass": t.summary(), "pass_s": t.median, "images_per_s": n / t.median}
