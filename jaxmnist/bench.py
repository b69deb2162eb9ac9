"""Measurement pieces for the benchmarks (`scripts/bench.py`, `benchmarks/README.md`).

- timing: `measure` (median of device-synchronised calls after warm-up), `measure_pipelined` (back-to-back calls,
  one sync at the end);
- FLOPs: `xla_flops` (XLA's cost analysis of the lowered, unoptimised HLO: device independent, and it still sees
  every convolution, which a GPU's optimised HLO hides in cuDNN custom calls);
- peaks: `device_peak` (vendor datasheet numbers, dense) and `cpu_peak_estimate` (cores x clock x FLOP/cycle);
- environment: `environment` (device, driver, versions, commit, precision settings);
- the measurements themselves, JAX (`jax_step`, `jax_epoch`, `jax_eval`) and PyTorch (`torch_blog_step`,
  `torch_blog_epoch`, `torch_tuned_step`, `torch_tuned_eval`), each returning a JSON-able dict of raw timings;
- `Runner`: runs a plan of measurements under a time budget, records failures (OOM, compile errors) instead of
  stopping, and rewrites the JSON file after every measurement, so a killed run keeps what it measured;
- `report`: the markdown tables; `profile_cnn`: where the CPU time of the `cnn` train step goes, op by op.

Times are wall-clock seconds on the host around calls that end with a device sync: `jax.block_until_ready` for
JAX, `torch.cuda.synchronize()` for torch on a GPU (torch on the CPU is synchronous).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxmnist import data as data_lib
from jaxmnist import runlog
from jaxmnist.presets import MODEL_PRESET, PRESETS, Config

FORMAT_VERSION = 1
NETWORKS = ("cnn", "cnn_deep", "resnet", "resnet18", "resnet101")


# ------------------------------------------------------------------------------------------ timing
@dataclasses.dataclass
class Timing:
    """Seconds per call, one sample per call."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def summary(self) -> dict:
        s = sorted(self.samples)
        q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731 (a nearest-rank quantile)
        return {
            "median_s": self.median,
            "min_s": s[0],
            "p10_s": q(0.1),
            "p90_s": q(0.9),
            "mean_s": statistics.fmean(s),
            "n": len(s),
            "samples_s": [round(x, 7) for x in self.samples],
        }


def measure(
    fn: Callable[[], Any],
    sync: Callable[[Any], Any],
    *,
    warmup: int = 3,
    iters: int = 50,
    max_s: float = 3.0,
    min_iters: int = 5,
) -> Timing:
    """Times `iters` calls of `fn`, each followed by `sync(result)`, after `warmup` untimed ones.

    Stops early once `max_s` seconds of samples are in and at least `min_iters` were taken, so a slow network
    at a large batch costs a bounded time.
    """
    for _ in range(warmup):
        sync(fn())
    samples, spent = [], 0.0
    while len(samples) < iters and (spent < max_s or len(samples) < min_iters):
        t0 = time.perf_counter()
        sync(fn())
        samples.append(time.perf_counter() - t0)
        spent += samples[-1]
    return Timing(samples)


def measure_pipelined(fn: Callable[[], Any], sync: Callable[[Any], Any], n: int) -> float:
    """Seconds per call of `n` back-to-back calls with one sync at the end: what a loop that never waits on the
    device achieves (dispatch overlaps compute)."""
    t0 = time.perf_counter()
    out = None
    for _ in range(n):
        out = fn()
    sync(out)
    return (time.perf_counter() - t0) / n


def pipelined_count(median_s: float, iters: int, max_s: float) -> int:
    """How many pipelined calls fit in about `max_s` seconds (at least 3, at most `iters`)."""
    return max(3, min(iters, int(max_s / max(median_s, 1e-6))))


# ------------------------------------------------------------------------------------------- FLOPs
def flops_on_cpu(fn: Callable, *args) -> float | None:
    """FLOPs of `fn(*args)` lowered for the host CPU: the fallback for a backend without a cost analysis of
    unoptimised HLO (the count is the same math on any device)."""
    import jax

    try:
        cpu = jax.devices("cpu")[0]
    except RuntimeError:
        return None
    return xla_flops(jax.jit(fn).lower(*jax.device_put(args, cpu)))


def xla_flops(stage) -> float | None:
    """FLOPs of a `jax.stages.Lowered` or `Compiled` from XLA's cost analysis (None if it has none).

    Prefer a Lowered: its unoptimised HLO holds plain convolutions on every backend, whereas a GPU's compiled
    HLO turns them into cuDNN custom calls that the cost analysis may count as zero.
    """
    try:
        cost = stage.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


# -------------------------------------------------------------------------------------------- peaks
# Dense (no 2:4 sparsity) peak TFLOP/s from NVIDIA's datasheets, at boost clock and full board power; a
# power-capped or throttled board reaches less. "fp32" is the CUDA-core rate; "tf32"/"bf16" are tensor cores.
PEAK_TFLOPS = {
    "H100 SXM": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
    "H200 SXM": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},  # the H100 SXM's compute with more, faster memory
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},  # SXM4 and PCIe, 40 and 80 GB alike
}


def peak_key(device_kind: str) -> str | None:
    """Maps a device name ('NVIDIA H100 80GB HBM3', 'NVIDIA H100 PCIe', 'NVIDIA H200', ...) to PEAK_TFLOPS."""
    kind = device_kind.upper()
    if "H200" in kind:
        return "H200 NVL" if "NVL" in kind else "H200 SXM"
    if "H100" in kind or "GH200" in kind:
        if "PCIE" in kind:
            return "H100 PCIe"
        return "H100 NVL" if "NVL" in kind else "H100 SXM"
    if "A100" in kind:
        return "A100"
    return None


def cpu_peak_estimate() -> dict:
    """An FP32 peak estimate for this CPU: logical cores x current clock x FLOP/cycle from the ISA flags.

    Only an estimate: the clock is /proc/cpuinfo's current one, 'cores' are the vCPUs the OS shows (on a VM two
    may share one physical core), and FLOP/cycle assumes two FMA pipes (AVX2: 2 x 8 lanes x 2 = 32; AVX-512 on
    Intel: 64; AMD's Zen 4 runs AVX-512 at the AVX2 rate).
    """
    cores = os.cpu_count() or 1
    info = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for key in ("model name", "cpu MHz", "flags"):
            m = re.search(rf"^{key}\s*:\s*(.*)$", text, re.M)
            if m:
                info[key] = m.group(1).strip()
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    vendor_amd = "AMD" in info.get("model name", "")
    per_cycle = 64 if ("avx512f" in flags and not vendor_amd) else 32 if {"avx2", "fma"} <= flags else 8
    ghz = float(info["cpu MHz"]) / 1000 if "cpu MHz" in info else None
    return {
        "model": info.get("model name"),
        "cores": cores,
        "ghz": ghz,
        "flop_per_cycle": per_cycle,
        "fp32_tflops": cores * ghz * per_cycle / 1000 if ghz else None,
        "estimate": True,
    }


def device_peak(platform_name: str, device_kind: str) -> dict:
    """{'key', 'fp32', 'tf32', 'bf16' (TFLOP/s), 'source'} for the device; CPUs get an estimate, unknown GPUs None."""
    if platform_name == "cpu":
        est = cpu_peak_estimate()
        return {
            "key": "cpu",
            "fp32": est["fp32_tflops"],
            "tf32": None,
            "bf16": None,
            "source": "estimate: cores x clock x FLOP/cycle (see cpu_peak_estimate)",
            "cpu": est,
        }
    key = peak_key(device_kind)
    if key is None:
        return {"key": None, "fp32": None, "tf32": None, "bf16": None, "source": f"unknown device {device_kind!r}"}
    return {"key": key, **PEAK_TFLOPS[key], "source": "NVIDIA datasheet, dense"}


def peak_for(peak: dict, platform_name: str, dtype: str) -> tuple[float | None, str]:
    """The peak a measurement is judged against: bf16 tensor cores for bf16; for f32 on a GPU the TF32 rate,
    since JAX (and torch's cuDNN convolutions) run f32 convolutions on TF32 tensor cores by default."""
    if dtype == "bf16":
        return peak.get("bf16"), "bf16"
    if platform_name != "cpu":  # 'gpu' (and 'cuda' on some jax versions)
        return peak.get("tf32"), "tf32"
    return peak.get("fp32"), "fp32"


# ------------------------------------------------------------------------------------- environment
def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_smi() -> dict | None:
    """Name, driver, memory, clocks and power limit of each GPU, from nvidia-smi (None without it)."""
    fields = "name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit,pci.bus_id"
    out = _run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"])
    if out is None:
        return None
    gpus = [dict(zip(fields.split(","), (v.strip() for v in line.split(",")))) for line in out.splitlines()]
    header = _run(["nvidia-smi"]) or ""
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return {"gpus": gpus, "cuda_driver_api": cuda.group(1) if cuda else None}


def git_dirty() -> bool | None:
    out = _run(["git", "-C", str(Path(__file__).resolve().parent), "status", "--porcelain", "--untracked-files=no"])
    return None if out is None else bool(out)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def torch_environment(device: str) -> dict:
    """torch's version, threads and precision settings (TF32, cudnn) as they stand: the benchmark keeps defaults."""
    import torch

    env = {
        "version": torch.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if device.startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return env


def environment(torch_device: str | None) -> dict:
    """Everything needed to read the numbers later: device, driver, library versions, commit, settings."""
    import jax

    dev = jax.devices()[0]
    env = {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "host": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_peak_estimate(),
        "load_avg_start": os.getloadavg(),
        "nvidia_smi": nvidia_smi(),
        "versions": runlog.versions(
            "jax",
            "jaxlib",
            "jax-cuda12-plugin",
            "jax-cuda13-plugin",
            "jax-cuda12-pjrt",
            "jax-cuda13-pjrt",
            "flax",
            "optax",
            "numpy",
            "torch",
            "torchvision",
            "pillow",
        ),
        "commit": runlog.git_commit(),
        "dirty": git_dirty(),
        # None is JAX's default: TF32 for f32 convolutions and matmuls on Ampere and later GPUs.
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "env_vars": {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("XLA_", "JAX_", "TF_", "CUDA_VISIBLE", "OMP_", "MKL_", "TORCH"))
        },
    }
    if torch_device is not None:
        try:
            env["torch"] = torch_environment(torch_device)
        except Exception as e:  # torch missing or broken: the JAX numbers still stand
            env["torch"] = {"error": _first_line(e)}
    return env


# ------------------------------------------------------------------------------------------ settings
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
    train_size: int = 0  # > 0: the epoch covers only this many training images
    eval_size: int = 0  # > 0: evaluation covers only this many test images
    chunk_steps: int | None = None  # None: the engine's default (8 unrolled steps on CPU, 1/8 epoch elsewhere)
    num_workers: int = 0  # the blog's DataLoader: 4 on a GPU machine; 0 on a small CPU box
    pin_memory: bool = False
    budget_s: float | None = None
    quick: bool = False


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
        train_size=64,
        eval_size=64,
        chunk_steps=1,
        quick=True,
    )
    return Settings(**{**base, **overrides})


def config_for(network: str, batch_size: int) -> Config:
    """The network's own preset (its optimiser and learning rate) at `batch_size`, without augmentation: the
    benchmark measures the network, and both frameworks then read the same plain ToTensor/Normalize data."""
    return PRESETS[MODEL_PRESET[network]].replace(batch_size=batch_size, augment=False, plateau=False)


def real_batches(data: data_lib.Dataset, batch_size: int, count: int, seed: int = 0):
    """`count` distinct shuffled training batches as (uint8 images [B,28,28], int labels [B]) numpy pairs."""
    order = np.random.default_rng(seed).permutation(len(data.train_labels))
    n = len(order)
    out = []
    for i in range(count):
        idx = order[(np.arange(batch_size) + i * batch_size) % n]
        out.append((data.train_images[idx], data.train_labels[idx].astype(np.int32)))
    return out


# --------------------------------------------------------------------------------------- JAX side
_STATES: dict = {}


def initial_state(config: Config, dtype_name: str):
    """A fresh TrainState for (network, optimiser, dtype), initialised once per run and copied on every use: the
    init itself compiles, which costs seconds (kept for the whole run: all five networks' states are ~0.6 GB)."""
    import jax
    import jax.numpy as jnp

    from jaxmnist import train

    key = (config.model, config.optimizer, config.lr, config.momentum, dtype_name)
    if key not in _STATES:
        dtype = {"f32": jnp.float32, "bf16": jnp.bfloat16}[dtype_name]
        _STATES[key] = train.create_state(config, jax.random.PRNGKey(0), dtype=dtype)
    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, _STATES[key])


def _flops_fields(flops_per_image: float | None, images_per_s: float, peak: float | None, peak_name: str) -> dict:
    if flops_per_image is None:
        return {}
    achieved = flops_per_image * images_per_s
    return {
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak,
        "peak_kind": peak_name,
        "fraction_of_peak": achieved / (peak * 1e12) if peak else None,
    }


def jax_step(
    network: str, batch_size: int, data: data_lib.Dataset, settings: Settings, peak: dict, dtype: str = "f32"
) -> dict:
    """One jitted train step (forward, backward, optimiser) on real, normalised batches already on the device.

    Reports lowering/compile time, FLOPs per image (XLA cost analysis, forward + backward + update), the median
    of synced steps, the pipelined per-step time, images/s and the fraction of the device's peak.
    """
    import jax
    import jax.numpy as jnp

    from jaxmnist import train

    config = config_for(network, batch_size)
    state = initial_state(config, dtype)
    batches = [{"image": data_lib.normalize(x), "label": jnp.asarray(y)} for x, y in real_batches(data, batch_size, 4)]
    jax.block_until_ready(batches)
    step = jax.jit(train.train_step, donate_argnums=0)
    t0 = time.perf_counter()
    lowered = step.lower(state, batches[0])
    lower_s = time.perf_counter() - t0
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops = xla_flops(lowered)
    if flops is None:
        flops = flops_on_cpu(train.train_step, state, batches[0])
    flops_compiled = xla_flops(compiled)

    box = {"state": state, "i": 0}

    def one():
        box["state"], metrics = compiled(box["state"], batches[box["i"] % len(batches)])
        box["i"] += 1
        return box["state"], metrics

    t = measure(
        one,
        jax.block_until_ready,
        warmup=settings.warmup,
        iters=settings.iters,
        max_s=settings.max_s,
        min_iters=settings.min_iters,
    )
    n = pipelined_count(t.median, settings.iters, settings.max_s)
    pipelined = measure_pipelined(one, jax.block_until_ready, n)
    loss = float(jax.device_get(one()[1]["loss"]))
    platform_name = jax.devices()[0].platform
    fpi = flops / batch_size if flops else None
    ips = batch_size / t.median
    # compile_s is what a first call costs beyond a step: tracing and lowering (lower_s) plus XLA's compile.
    return {
        "dtype": dtype,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "flops_per_image": fpi,
        "flops_per_image_compiled_hlo": flops_compiled / batch_size if flops_compiled else None,
        "step": t.summary(),
        "step_ms": 1e3 * t.median,
        "pipelined_step_ms": 1e3 * pipelined,
        "pipelined_n": n,
        "images_per_s": ips,
        "last_loss": loss,
        **_flops_fields(fpi, ips, *peak_for(peak, platform_name, dtype)),
    }


def jax_epoch(network: str, batch_size: int, data: data_lib.Dataset, settings: Settings) -> dict:
    """A whole training epoch through the engine (`train.train_chunk` on device-resident uint8 data, the engine's
    chunking), compile time reported apart. Evaluation is not included (see `jax_eval`)."""
    import jax
    import jax.numpy as jnp

    from jaxmnist import train

    config = config_for(network, batch_size)
    n = settings.train_size or len(data.train_labels)
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"batch {batch_size} exceeds the {n} training images")
    unroll = jax.default_backend() == "cpu"
    bounds = train.chunk_bounds(steps, settings.chunk_steps, unroll)
    x = jax.device_put(data.train_images[:n])
    y = jax.device_put(data.train_labels[:n].astype(np.int32))
    state = initial_state(config, "f32")
    jit_chunk = jax.jit(train.train_chunk, donate_argnums=0, static_argnames=("augment", "train", "unroll"))
    t0 = time.perf_counter()
    compiled = {}
    for size in sorted({e - s for s, e in bounds}):
        idx = jax.ShapeDtypeStruct((size, batch_size), jnp.int32)
        compiled[size] = jit_chunk.lower(state, x, y, idx, augment=config.augment, train=True, unroll=unroll).compile()
    indices = (
        jax.jit(train.epoch_indices, static_argnums=(0, 2, 3, 4))
        .lower(config.seed, jnp.int32(0), n, batch_size, tuple(bounds))
        .compile()
    )
    compile_s = time.perf_counter() - t0
    epoch_s = []
    for epoch in range(settings.epoch_repeats):
        t0 = time.perf_counter()
        metrics = []
        for idx in indices(jnp.int32(epoch)):
            state, m = compiled[idx.shape[0]](state, x, y, idx)
            metrics.append(m)
        jax.block_until_ready((state, metrics))
        epoch_s.append(time.perf_counter() - t0)
    best = min(epoch_s)
    return {
        "compile_s": compile_s,
        "steps": steps,
        "images": steps * batch_size,
        "unroll": unroll,
        "chunks": [e - s for s, e in bounds],
        "epoch_s_each": epoch_s,
        "epoch_s": best,
        "step_ms": 1e3 * best / steps,
        "images_per_s": steps * batch_size / best,
        "full_epoch_s_estimate": best * (len(data.train_labels) // batch_size) / steps,
    }


def jax_eval(network: str, batch_size: int, data: data_lib.Dataset, settings: Settings) -> dict:
    """The engine's `train.evaluate` over the test set (full batches, then the remainder) at `batch_size`."""
    import jax

    from jaxmnist import train

    config = config_for(network, batch_size)
    n = settings.eval_size or len(data.test_labels)
    x = jax.device_put(data.test_images[:n])
    y = jax.device_put(data.test_labels[:n].astype(np.int32))
    state = initial_state(config, "f32")
    t0 = time.perf_counter()
    compiled = (
        jax.jit(train.evaluate, static_argnames=("batch_size",))
        .lower(state, x, y, None, batch_size=batch_size)
        .compile()
    )
    compile_s = time.perf_counter() - t0
    t = measure(
        lambda: compiled(state, x, y, None),
        jax.block_until_ready,
        warmup=1,
        iters=max(3, settings.epoch_repeats + 1),
        max_s=settings.max_s,
        min_iters=2,
    )
    return {"compile_s": compile_s, "images": n, "pass": t.summary(), "pass_s": t.median, "images_per_s": n / t.median}


# ------------------------------------------------------------------------------------- torch side
class BlogMnist:
    """The blog's dataset: `torchvision.datasets.MNIST` semantics (a PIL 'L' image per item) with
    `transforms.Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])`. A plain map-style dataset, defined at
    module level so DataLoader workers can unpickle it under any start method."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision import transforms

        self.images = np.ascontiguousarray(images, np.uint8)
        self.labels = np.asarray(labels, np.int64)
        self.transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((data_lib.MEAN,), (data_lib.STD,))]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])  # uint8 2-D: mode "L"


def torch_sync(device: str) -> Callable[[Any], None]:
    import torch

    if device.startswith("cuda"):
        return lambda _=None: torch.cuda.synchronize(device)
    return lambda _=None: None


def torch_model(network: str, device: str, channels_last: bool = False):
    import torch

    from torch_ref import models as torch_models

    torch.manual_seed(0)
    model = torch_models.get_model(network).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def torch_optimizer(config: Config, params, fused: bool = False):
    """torch's optimiser for the preset (the blog's: SGD, or RMSprop for cnn_deep). `fused` is a tuning option
    of CUDA builds; it is dropped where this torch does not accept it."""
    import torch

    params = list(params)
    kwargs = {"fused": True} if fused else {}
    try:
        if config.optimizer == "sgd":
            return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, **kwargs)
        return torch.optim.RMSprop(
            params, lr=config.lr, alpha=config.alpha, eps=config.eps, momentum=config.momentum, **kwargs
        )
    except (RuntimeError, TypeError, ValueError):
        return torch_optimizer(config, params) if fused else None


def _torch_train_step(model, network: str, optimizer, images, labels):
    """The blog's step: forward, cross-entropy, zero_grad, backward, optimiser step."""
    import torch.nn.functional as F

    from torch_ref import models as torch_models

    loss = F.cross_entropy(model(torch_models.prepare_input(network, images)), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def _blog_loader(images, labels, batch_size: int, settings: Settings, shuffle: bool):
    import torch

    # `timeout` only guards against a hung worker (the run then records an error instead of stalling).
    return torch.utils.data.DataLoader(
        BlogMnist(images, labels),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=settings.num_workers,
        pin_memory=settings.pin_memory,
        timeout=120 if settings.num_workers else 0,
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
    """The blog's loop, one timed iteration at a time: next batch from the DataLoader (per-image PIL ->
    ToTensor -> Normalize), `.to(device)`, forward/backward/step, then `torch.cuda.synchronize()`."""
    config = config_for(network, batch_size)
    model = torch_model(network, device)
    optimizer = torch_optimizer(config, model.parameters())
    loader = _blog_loader(data.train_images, data.train_labels, batch_size, settings, shuffle=True)
    sync = torch_sync(device)
    box = {"it": iter(loader)}

    def one():
        try:
            images, labels = next(box["it"])
        except StopIteration:  # the epoch ran out: a new one (its worker start-up lands in one sample)
            box["it"] = iter(loader)
            images, labels = next(box["it"])
        return _torch_train_step(model, network, optimizer, images.to(device), labels.to(device))

    t = measure(
        one, sync, warmup=settings.warmup, iters=settings.iters, max_s=settings.max_s, min_iters=settings.min_iters
    )
    ips = batch_size / t.median
    return {
        "num_workers": settings.num_workers,
        "pin_memory": settings.pin_memory,
        "step": t.summary(),
        "step_ms": 1e3 * t.median,
        "images_per_s": ips,
        **_flops_fields(flops_per_image, ips, *peak_for(peak, "gpu" if device.startswith("cuda") else "cpu", "f32")),
    }


def torch_blog_epoch(network: str, batch_size: int, data: data_lib.Dataset, settings: Settings, device: str) -> dict:
    """The blog's whole epoch (its DataLoader keeps the ragged last batch) and its test pass (model.eval(),
    no_grad, a DataLoader over the test set at the same batch size), each timed once, synced at the end."""
    import torch

    config = config_for(network, batch_size)
    n = settings.train_size or len(data.train_labels)
    n_test = settings.eval_size or len(data.test_labels)
    model = torch_model(network, device)
    optimizer = torch_optimizer(config, model.parameters())
    sync = torch_sync(device)
    loader = _blog_loader(data.train_images[:n], data.train_labels[:n], batch_size, settings, shuffle=True)
    t0 = time.perf_counter()
    steps = 0
    for images, labels in loader:
        _torch_train_step(model, network, optimizer, images.to(device), labels.to(device))
        steps += 1
    sync()
    epoch_s = time.perf_counter() - t0

    from torch_ref import models as torch_models

    test_loader = _blog_loader(
        data.test_images[:n_test], data.test_labels[:n_test], batch_size, settings, shuffle=False
    )
    model.eval()
    t0 = time.perf_counter()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for images, labels in test_loader:
            images, labels = images.to(device), labels.to(device)
            correct += (model(torch_models.prepare_input(network, images)).argmax(1) == labels).sum()
    correct = int(correct)
    test_s = time.perf_counter() - t0
    return {
        "num_workers": settings.num_workers,
        "pin_memory": settings.pin_memory,
        "steps": steps,
        "images": n,
        "epoch_s": epoch_s,
        "images_per_s": n / epoch_s,
        "full_epoch_s_estimate": epoch_s * len(data.train_labels) / n,
        "test_pass_s": test_s,
        "test_images": n_test,
        "test_images_per_s": n_test / test_s,
    }


def _device_tensors(images: np.ndarray, labels: np.ndarray, device: str):
    """Normalised NCHW float32 images (channels_last) and int64 labels, resident on `device`."""
    import torch

    x = torch.from_numpy(((images.astype(np.float32) / 255.0 - data_lib.MEAN) / data_lib.STD)[:, None])
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    return x, torch.from_numpy(np.asarray(labels, np.int64)).to(device)


class _CudnnBenchmark:
    """cudnn.benchmark on inside the tuned measurements only; the blog's loop keeps torch's default (off)."""

    def __enter__(self):
        import torch

        self.before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True

    def __exit__(self, *exc):
        import torch

        torch.backends.cudnn.benchmark = self.before


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
    """A tuned torch step: real batches resident on the device, channels_last model and inputs, cudnn.benchmark,
    the fused optimiser on CUDA, TF32 left at torch's defaults; with `compile`, `torch.compile(model)`.

    A failing torch.compile does not fail the measurement: it is recorded (`compile_error`) and the eager
    numbers stand in.
    """
    import torch

    config = config_for(network, batch_size)
    model = torch_model(network, device, channels_last=True)
    optimizer = torch_optimizer(config, model.parameters(), fused=device.startswith("cuda"))
    batches = [_device_tensors(x, y, device) for x, y in real_batches(data, batch_size, 4)]
    sync = torch_sync(device)
    out = {
        "channels_last": True,
        "cudnn_benchmark": device.startswith("cuda"),
        "fused_optimizer": bool(optimizer.defaults.get("fused")),
    }
    with _CudnnBenchmark():
        runner, mode = model, "eager"
        if compile:
            try:
                (torch.compiler.reset if hasattr(torch, "compiler") else torch._dynamo.reset)()
                runner = torch.compile(model, dynamic=False)
                t0 = time.perf_counter()
                images, labels = batches[0]
                sync(_torch_train_step(runner, network, optimizer, images, labels))
                out["first_step_s"] = time.perf_counter() - t0  # compile + one step
                mode = "compiled"
            except Exception as e:  # inductor needs a C++ compiler (and Triton on GPUs): record why, go eager
                out["compile_error"] = _first_line(e)
                runner = model
        box = {"i": 0}

        def one():
            images, labels = batches[box["i"] % len(batches)]
            box["i"] += 1
            return _torch_train_step(runner, network, optimizer, images, labels)

        t = measure(
            one, sync, warmup=settings.warmup, iters=settings.iters, max_s=settings.max_s, min_iters=settings.min_iters
        )
        n = pipelined_count(t.median, settings.iters, settings.max_s)
        pipelined = measure_pipelined(one, sync, n)
    ips = batch_size / t.median
    out.update(
        mode=mode,
        step=t.summary(),
        step_ms=1e3 * t.median,
        pipelined_step_ms=1e3 * pipelined,
        pipelined_n=n,
        images_per_s=ips,
        **_flops_fields(flops_per_image, ips, *peak_for(peak, "gpu" if device.startswith("cuda") else "cpu", "f32")),
    )
    if mode == "compiled":
        out["compile_s_estimate"] = out["first_step_s"] - t.median
    return out


def torch_tuned_eval(network: str, batch_size: int, data: data_lib.Dataset, settings: Settings, device: str) -> dict:
    """Test-set throughput of the tuned setting (device-resident channels_last data, inference_mode, eager)."""
    import torch

    from torch_ref import models as torch_models

    n = settings.eval_size or len(data.test_labels)
    model = torch_model(network, device, channels_last=True).eval()
    x, y = _device_tensors(data.test_images[:n], data.test_labels[:n], device)
    sync = torch_sync(device)

    def one():
        correct = torch.zeros((), dtype=torch.int64, device=device)
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                logits = model(torch_models.prepare_input(network, x[s : s + batch_size]))
                correct += (logits.argmax(1) == y[s : s + batch_size]).sum()
        return correct

    with _CudnnBenchmark():
        t = measure(one, sync, warmup=1, iters=max(3, settings.epoch_repeats + 1), max_s=settings.max_s, min_iters=2)
    return {"images": n, "pass": t.summary(), "pass_s": t.median, "images_per_s": n / t.median}


# ------------------------------------------------------------------------------------------ runner
def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def is_oom(e: BaseException) -> bool:
    """Out of device memory, from JAX (RESOURCE_EXHAUSTED) or torch (OutOfMemoryError)."""
    text = f"{type(e).__name__} {e}"
    return "RESOURCE_EXHAUSTED" in text or "OutOfMemory" in text or "out of memory" in text.lower()


def release_memory() -> None:
    """Between measurements: drop the last one's buffers, and hand torch's cached GPU blocks back so that JAX
    (which shares the GPU in this process) can use them."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@dataclasses.dataclass
class Item:
    """One measurement of the plan: `fn` returns a dict of raw results; `after` may add derived fields."""

    kind: str
    network: str
    batch_size: int
    fn: Callable[[], dict]


# A guess of each measurement's wall time (compile included) for the budget, in seconds for the cnn; the
# ResNets cost more by NETWORK_WEIGHT. Replaced by what was measured once a (kind, network) has run.
KIND_PRIOR_S = {
    "jax_step": 5,
    "jax_step_bf16": 5,
    "torch_tuned": 5,
    "torch_tuned_compiled": 20,
    "torch_blog_step": 4,
    "jax_epoch": 8,
    "jax_eval": 3,
    "torch_blog_epoch": 6,
    "torch_tuned_eval": 2,
}
NETWORK_WEIGHT = {"cnn": 1, "cnn_deep": 1.5, "resnet": 3, "resnet18": 4, "resnet101": 15}


class Runner:
    """Runs measurements in order under a soft time budget and keeps the JSON file up to date.

    An item whose estimated cost no longer fits the budget is skipped (recorded, with the reason); later,
    cheaper items still run. A started item always runs to the end, so keep a margin below any hard limit.
    Failures are recorded per item (status 'oom' or 'error') and the run goes on.
    """

    def __init__(
        self,
        doc: dict,
        out: Path | None,
        budget_s: float | None,
        log: Callable[[str], None] = print,
        t0: float | None = None,
    ):
        self.doc, self.out, self.budget_s, self.log = doc, out, budget_s, log
        self.t0 = time.perf_counter() if t0 is None else t0  # pass the process start to count imports too
        self.costs: dict[tuple[str, str], list[tuple[int, float, float]]] = {}  # (batch, wall s, compile s)
        doc.setdefault("results", [])

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def estimate(self, item: Item) -> float:
        """Seconds the item will likely take. The same kind and network measured at another batch size: its
        compile part as is, the rest scaled with the batch. Else the same kind on other networks, scaled by
        NETWORK_WEIGHT (so the priors calibrate themselves to the machine). Else the prior."""
        weight = lambda net: NETWORK_WEIGHT.get(net, 5)  # noqa: E731
        seen = self.costs.get((item.kind, item.network))
        if seen:
            return max(fixed + (wall - fixed) * max(1.0, item.batch_size / bs) for bs, wall, fixed in seen)
        others = [
            wall * weight(item.network) / weight(net) * max(1.0, item.batch_size / bs)
            for (kind, net), runs in self.costs.items()
            if kind == item.kind
            for bs, wall, _ in runs
        ]
        if others:
            return max(others)
        return KIND_PRIOR_S.get(item.kind, 10) * weight(item.network)

    def run(self, item: Item) -> dict:
        base = {"kind": item.kind, "network": item.network, "batch_size": item.batch_size}
        est = self.estimate(item)
        if self.budget_s is not None and self.elapsed() + est > self.budget_s:
            rec = {
                **base,
                "status": "skipped",
                "reason": f"budget: needs ~{est:.0f} s, {self.budget_s - self.elapsed():.0f} s left",
            }
            self.log(f"  skip {item.kind:22s} {item.network:9s} bs {item.batch_size:5d}: {rec['reason']}")
            return self._add(rec)
        t0 = time.perf_counter()
        try:
            rec = {**base, "status": "ok", **item.fn()}
        except KeyboardInterrupt:
            raise
        except Exception as e:
            rec = {
                **base,
                "status": "oom" if is_oom(e) else "error",
                "reason": _first_line(e),
                "traceback": traceback.format_exc(limit=4)[-2000:],
            }
        release_memory()
        rec["wall_s"] = time.perf_counter() - t0
        rec["estimate_s"] = est
        fixed = min(rec["wall_s"], sum(rec.get(k) or 0.0 for k in ("compile_s", "first_step_s")))
        self.costs.setdefault((item.kind, item.network), []).append((item.batch_size, rec["wall_s"], fixed))
        detail = (
            f"{rec['step_ms']:.2f} ms/step"
            if "step_ms" in rec
            else f"{rec['images_per_s']:.0f} img/s"
            if "images_per_s" in rec
            else rec.get("reason", "")
        )
        self.log(
            f"  {rec['status']:4s} {item.kind:22s} {item.network:9s} bs {item.batch_size:5d} "
            f"[{rec['wall_s']:6.1f} s, at {self.elapsed():6.1f} s] {detail}"
        )
        return self._add(rec)

    def _add(self, rec: dict) -> dict:
        self.doc["results"].append(rec)
        self.save()
        return rec

    def save(self, finished: bool = False) -> None:
        self.doc["elapsed_s"] = self.elapsed()
        self.doc["finished"] = finished
        self.doc["load_avg_end"] = os.getloadavg()
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            runlog.atomic_write(self.out, json.dumps(self.doc, indent=1, default=str).encode())


def find(doc: dict, kind: str, network: str, batch_size: int, ok: bool = True) -> dict | None:
    for rec in doc.get("results", []):
        if (rec["kind"], rec["network"], rec["batch_size"]) == (kind, network, batch_size):
            if not ok or rec["status"] == "ok":
                return rec
    return None


# The blog's own networks: torch.compile of these is cheap enough to rank with the core measurements.
BLOG_NETWORKS = ("cnn", "cnn_deep", "resnet")
STEP_KINDS = ("jax_step", "torch_tuned", "torch_blog_step", "torch_tuned_compiled", "jax_step_bf16")
EPOCH_KINDS = ("jax_epoch", "jax_eval", "torch_blog_epoch", "torch_tuned_eval")


def priority(kind: str, network: str, batch_size: int, settings: Settings) -> int:
    """Tier of a measurement; lower runs first, so a budget cut loses the least useful ones:

    0. at the first batch size: JAX step, torch tuned (eager) and blog steps, torch.compile of the blog's nets;
    1. epoch and evaluation (at the epoch batch sizes) and JAX bf16 at the first batch size;
    2. torch.compile of the torchvision ResNets (minutes of Inductor compiling);
    3. the other batch sizes.
    """
    first = batch_size == settings.batch_sizes[0]
    if first and (kind in STEP_KINDS[:3] or kind == "torch_tuned_compiled" and network in BLOG_NETWORKS):
        return 0
    if kind in EPOCH_KINDS or first and kind == "jax_step_bf16":
        return 1
    return 2 if kind == "torch_tuned_compiled" else 3


def build_plan(
    settings: Settings, data: data_lib.Dataset, peak: dict, torch_device: str | None, doc: dict
) -> list[Item]:
    """Every measurement the settings ask for, ordered by `priority`, then network, batch size and kind."""
    import jax

    bf16 = settings.bf16 and jax.default_backend() != "cpu"
    use_torch = settings.torch and torch_device is not None

    def fpi(net, bs):  # torch's FLOPs per image: the same math, counted by XLA for the JAX step
        rec = find(doc, "jax_step", net, bs)
        return rec.get("flops_per_image") if rec else None

    def make(kind: str, net: str, bs: int) -> Item | None:
        fns = {
            "jax_step": lambda: jax_step(net, bs, data, settings, peak),
            "jax_step_bf16": lambda: jax_step(net, bs, data, settings, peak, "bf16"),
            "torch_tuned": lambda: torch_tuned_step(net, bs, data, settings, torch_device, peak, fpi(net, bs)),
            "torch_tuned_compiled": lambda: torch_tuned_step(
                net, bs, data, settings, torch_device, peak, fpi(net, bs), compile=True
            ),
            "torch_blog_step": lambda: torch_blog_step(net, bs, data, settings, torch_device, peak, fpi(net, bs)),
            "jax_epoch": lambda: jax_epoch(net, bs, data, settings),
            "jax_eval": lambda: jax_eval(net, bs, data, settings),
            "torch_blog_epoch": lambda: torch_blog_epoch(net, bs, data, settings, torch_device),
            "torch_tuned_eval": lambda: torch_tuned_eval(net, bs, data, settings, torch_device),
        }
        wanted = {
            "jax_step_bf16": bf16,
            "torch_tuned_compiled": use_torch and settings.torch_compile and bs in settings.compile_batch_sizes,
            "jax_epoch": bs in settings.epoch_batch_sizes,
            "jax_eval": bs in settings.epoch_batch_sizes,
            "torch_blog_epoch": use_torch and bs in settings.epoch_batch_sizes,
            "torch_tuned_eval": use_torch and bs in settings.epoch_batch_sizes,
            "torch_tuned": use_torch,
            "torch_blog_step": use_torch,
        }.get(kind, True)
        return Item(kind, net, bs, fns[kind]) if wanted else None

    kinds = STEP_KINDS + EPOCH_KINDS
    items = [
        item
        for net in settings.networks
        for bs in settings.batch_sizes
        for kind in kinds
        if (item := make(kind, net, bs)) is not None
    ]
    order = lambda i: (
        priority(i.kind, i.network, i.batch_size, settings),  # noqa: E731
        settings.networks.index(i.network),
        settings.batch_sizes.index(i.batch_size),
        kinds.index(i.kind),
    )
    return sorted(items, key=order)


def new_doc(settings: Settings, env: dict, peak: dict, argv: list[str] | None = None) -> dict:
    return {
        "format": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "argv": argv,
        "env": env,
        "peak_tflops": peak,
        "settings": dataclasses.asdict(settings),
        "results": [],
    }


# ------------------------------------------------------------------------------------------ report
def ratio_text(jax_ms: float | None, torch_ms: float | None) -> str:
    """Plain words: which framework is faster, by how much (per step)."""
    if not jax_ms or not torch_ms:
        return "-"
    r = torch_ms / jax_ms
    return f"JAX {r:.2f}x faster" if r >= 1 else f"torch {1 / r:.2f}x faster"


def _fmt(x, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _cell(rec: dict | None, key: str, spec: str = ".2f") -> str:
    if rec is None:
        return "-"
    if rec["status"] != "ok":
        return rec["status"]
    return _fmt(rec.get(key), spec)


def _ok(rec: dict | None) -> dict | None:
    return rec if rec is not None and rec["status"] == "ok" else None


def _header(doc: dict) -> list[str]:
    env, settings = doc["env"], doc["settings"]
    torch_env = env.get("torch") or {}
    gpus = (env.get("nvidia_smi") or {}).get("gpus") or []
    driver = f" (driver {gpus[0].get('driver_version')})" if gpus else ""
    load = lambda xs: ", ".join(f"{x:.2f}" for x in xs or ())  # noqa: E731
    state = "finished" if doc.get("finished") else "PARTIAL (interrupted, or cut by the budget)"
    return [
        f"device: {env['platform']}:{env['device_kind']}{driver}; jax {env['versions'].get('jax')}, "
        f"flax {env['versions'].get('flax')}, torch {torch_env.get('version', '-')} on {torch_env.get('device', '-')}"
        f" ({torch_env.get('threads', '-')} threads); commit {env.get('commit')}"
        f"{' (dirty)' if env.get('dirty') else ''}",
        f"{'QUICK SMOKE RUN, NOT A BENCHMARK; ' if settings.get('quick') else ''}{state} after "
        f"{doc.get('elapsed_s', 0):.0f} s; load average at start {load(env.get('load_avg_start'))}, "
        f"at end {load(doc.get('load_avg_end'))}",
        f"JAX default matmul precision: {env.get('jax_default_matmul_precision') or 'default'}; torch TF32: "
        f"convs {torch_env.get('cudnn_allow_tf32', '-')}, matmuls {torch_env.get('cuda_matmul_allow_tf32', '-')}; "
        f"blog DataLoader: num_workers={settings['num_workers']}, pin_memory={settings['pin_memory']}",
    ]


def _step_table(doc: dict, keys: list[tuple[str, int]]) -> list[str]:
    lines = [
        "Train step: median of device-synced steps on real MNIST batches, in ms. blog = the blog's DataLoader "
        "loop; tuned = device-resident data, channels_last, cudnn.benchmark, fused optimiser; compiled = tuned "
        "+ torch.compile. Ratios compare JAX with the blog loop and with the fastest tuned torch.",
        "",
        "| network | batch | MFLOP/img | JAX compile s | JAX ms | JAX img/s | JAX bf16 ms | torch blog ms | "
        "torch tuned ms | torch compiled ms | JAX vs blog | JAX vs tuned | JAX TFLOP/s (% of peak) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for net, bs in keys:
        j, jb, tb, te, tc = (
            find(doc, k, net, bs, ok=False)
            for k in ("jax_step", "jax_step_bf16", "torch_blog_step", "torch_tuned", "torch_tuned_compiled")
        )
        if j is None and tb is None and te is None:
            continue
        tuned = [r["step_ms"] for r in (te, tc) if _ok(r)]
        jms = _ok(j)["step_ms"] if _ok(j) else None
        compiled = _cell(tc, "step_ms")
        if _ok(tc) and tc.get("compile_error"):
            compiled = "failed (see notes)"
        util = "-"
        if _ok(j) and j.get("achieved_tflops") is not None:
            frac = j.get("fraction_of_peak")
            util = f"{j['achieved_tflops']:.3f}" + (f" ({100 * frac:.2f} % {j['peak_kind']})" if frac else "")
        fpi = _ok(j).get("flops_per_image") if _ok(j) else None
        lines.append(
            f"| {net} | {bs} | {_fmt(fpi / 1e6 if fpi else None, '.2f')} | {_cell(j, 'compile_s')} | "
            f"{_cell(j, 'step_ms')} | {_cell(j, 'images_per_s', '.0f')} | {_cell(jb, 'step_ms')} | "
            f"{_cell(tb, 'step_ms')} | {_cell(te, 'step_ms')} | {compiled} | "
            f"{ratio_text(jms, _ok(tb) and tb['step_ms'])} | {ratio_text(jms, min(tuned) if tuned else None)} | "
            f"{util} |"
        )
    return lines


def _epoch_table(doc: dict, keys: list[tuple[str, int]]) -> list[str]:
    keys = [k for k in keys if any(find(doc, kind, *k, ok=False) for kind in ("jax_epoch", "torch_blog_epoch"))]
    if not keys:
        return []
    lines = [
        "Epoch and evaluation. Epoch: training only, compile excluded, seconds for 60,000 images (a partial epoch "
        "is scaled up); JAX runs the engine's scanned chunks, torch the blog's DataLoader loop. Evaluation: the "
        "test set at the same batch size.",
        "",
        "| network | batch | JAX epoch s | JAX epoch compile s | blog epoch s | JAX vs blog epoch | JAX eval img/s "
        "| torch tuned eval img/s | blog test pass img/s |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for net, bs in keys:
        je, tbe, jev, tev = (
            find(doc, k, net, bs, ok=False) for k in ("jax_epoch", "torch_blog_epoch", "jax_eval", "torch_tuned_eval")
        )
        lines.append(
            f"| {net} | {bs} | {_cell(je, 'full_epoch_s_estimate')} | {_cell(je, 'compile_s')} | "
            f"{_cell(tbe, 'full_epoch_s_estimate')} | "
            f"{ratio_text(_ok(je) and je['full_epoch_s_estimate'], _ok(tbe) and tbe['full_epoch_s_estimate'])} | "
            f"{_cell(jev, 'images_per_s', '.0f')} | {_cell(tev, 'images_per_s', '.0f')} | "
            f"{_cell(tbe, 'test_images_per_s', '.0f')} |"
        )
    return lines


def _notes(doc: dict) -> list[str]:
    env, peak, settings, results = doc["env"], doc.get("peak_tflops") or {}, doc["settings"], doc["results"]
    notes = []
    if peak.get("key") == "cpu":
        cpu = peak.get("cpu") or {}
        notes.append(
            f"CPU peak is an estimate, {_fmt(peak.get('fp32'), '.3f')} TFLOP/s fp32 = {cpu.get('cores')} "
            f"vCPUs x {_fmt(cpu.get('ghz'))} GHz x {cpu.get('flop_per_cycle')} FLOP/cycle."
        )
    elif peak.get("key"):
        notes.append(
            f"Peak, {peak['key']} ({peak['source']}): fp32 {peak['fp32']}, TF32 {peak['tf32']}, bf16 "
            f"{peak['bf16']} TFLOP/s; f32 steps are judged against TF32, JAX's GPU default for f32 convs."
        )
    else:
        notes.append(f"Peak FLOP/s unknown for this device ({peak.get('source')}).")
    if env["platform"] == "cpu":
        notes.append("JAX bf16: n/a on CPU (not measured).")
    elif not settings.get("bf16"):
        notes.append("JAX bf16: not requested (--bf16).")
    for r in results:
        if r["status"] != "ok":
            notes.append(f"{r['kind']} {r['network']} batch {r['batch_size']}: {r['status']}: {r.get('reason', '')}")
        if r.get("compile_error"):
            notes.append(
                f"torch.compile failed for {r['network']} batch {r['batch_size']}, eager numbers shown: "
                f"{r['compile_error']}"
            )
    return notes


def report(doc: dict) -> str:
    """Markdown: what ran where, the train-step table, the epoch/evaluation table, notes (peaks, failures)."""
    keys = []
    for rec in doc.get("results", []):
        if (rec["network"], rec["batch_size"]) not in keys:
            keys.append((rec["network"], rec["batch_size"]))
    keys.sort(key=lambda k: (NETWORKS.index(k[0]) if k[0] in NETWORKS else 99, k[1]))
    parts = [_header(doc), _step_table(doc, keys), _epoch_table(doc, keys), [f"- {n}" for n in _notes(doc)]]
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"


# ----------------------------------------------------------------------------------------- profile
# Two CPU-friendly formulations of the cnn's ops, measured by `profile_cnn` as candidates for jaxmnist.models.
def conv_sliced(x, k):
    """A VALID, stride-1 NHWC x HWIO convolution as im2col by slicing plus one matmul.

    XLA:CPU runs small-channel convolutions (and their gradients) far below torch's oneDNN; kh*kw shifted slices
    concatenated on the channel axis and a single dot run as plain copies and a GEMM, and autodiff of the slices
    gives the input gradient as pads and adds.
    """
    import jax.numpy as jnp

    kh, kw, c, o = k.shape
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    patches = jnp.concatenate([x[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
    return patches @ k.reshape(kh * kw * c, o)  # HWIO flattens in the same (i, j, c) order as the patches


class _CnnWithCpuOps:
    """What-if: the models' 2x2/2 `max_pool` back on XLA's reduce_window (whose gradient is select_and_scatter)
    with `pool`, and every stride-1 VALID convolution as `conv_sliced` with `conv`, while a train step is traced.
    Patches module globals for the duration of the `with` only."""

    def __init__(self, pool: bool = False, conv: bool = False):
        self.swap_pool, self.swap_conv = pool, conv

    def __enter__(self):
        import jax
        from flax import linen as nn

        from jaxmnist import models

        self.models, self.lax, self.saved = models, jax.lax, (models.max_pool, jax.lax.conv_general_dilated)
        orig_pool, orig_conv = self.saved

        def pool(x, window, strides, padding=0):
            if (window, strides, padding) == (2, 2, 0):
                return nn.max_pool(x, (2, 2), (2, 2))
            return orig_pool(x, window, strides, padding)

        def conv(lhs, rhs, window_strides, padding, *args, **kwargs):
            plain = (
                tuple(window_strides) == (1, 1)
                and tuple(map(tuple, padding)) == ((0, 0), (0, 0))
                and kwargs.get("dimension_numbers") == ("NHWC", "HWIO", "NHWC")
                and not args
            )
            return conv_sliced(lhs, rhs) if plain else orig_conv(lhs, rhs, window_strides, padding, *args, **kwargs)

        if self.swap_pool:
            models.max_pool = pool
        if self.swap_conv:
            jax.lax.conv_general_dilated = conv
        return self

    def __exit__(self, *exc):
        self.models.max_pool, self.lax.conv_general_dilated = self.saved


def measure_interleaved(
    fns: dict[str, Callable[[], Any]], sync: Callable[[Any], Any], *, rounds: int, warmup: int = 1
) -> dict[str, Timing]:
    """Times several functions round-robin, one call of each per round: on a shared, loaded machine every one of
    them then sees the same mix of quiet and busy moments, so their ratios stay meaningful."""
    for fn in fns.values():
        for _ in range(warmup):
            sync(fn())
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            sync(fn())
            samples[name].append(time.perf_counter() - t0)
    return {name: Timing(v) for name, v in samples.items()}


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
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from jaxmnist.models import max_pool_2x2

    from jaxmnist import train

    B = batch_size
    rng = np.random.default_rng(0)
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s, dtype=np.float32))  # noqa: E731
    dn = ("NHWC", "HWIO", "NHWC")
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=dn)  # noqa: E731

    def wgrad(f):
        return lambda x, k, dy: jax.vjp(lambda k: f(x, k), k)[1](dy)[0]

    def igrad(f):
        return lambda x, k, dy: jax.vjp(lambda x: f(x, k), x)[1](dy)[0]

    pool = lambda x: nn.max_pool(x, (2, 2), (2, 2))  # noqa: E731  (reduce_window; grad = select_and_scatter)

    def pool_reshape(x):
        b, h, w, c = x.shape
        return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

    def bwd(f):
        return lambda x, dy: jax.vjp(f, x)[1](dy)[0]

    def bn(x, scale, bias):
        mean = x.mean((0, 1, 2))
        var = jnp.square(x - mean).mean((0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias

    def relu_bn_fwd_bwd(x, scale, bias, dy):
        return jax.vjp(lambda x, s, b: bn(nn.relu(x), s, b), x, scale, bias)[1](dy)

    def dense_fwd_bwd(x, k, dy):
        return jax.vjp(lambda x, k: x @ k, x, k)[1](dy)

    x1, k1, y1 = f32(B, 28, 28, 1), f32(5, 5, 1, 10), f32(B, 24, 24, 10)
    x2, k2, y2 = f32(B, 12, 12, 10), f32(5, 5, 10, 20), f32(B, 8, 8, 20)
    p1, p2 = f32(B, 12, 12, 10), f32(B, 4, 4, 20)
    s10, s20 = jnp.ones(10), jnp.ones(20)
    ops = [  # (name, shape, function, arguments)
        ("conv1 fwd (1->10, 5x5)", "x[B,28,28,1]", conv, (x1, k1)),
        ("conv1 fwd, conv_sliced", "", conv_sliced, (x1, k1)),
        ("conv1 weight-grad", "dy[B,24,24,10]", wgrad(conv), (x1, k1, y1)),
        ("conv1 weight-grad, conv_sliced", "", wgrad(conv_sliced), (x1, k1, y1)),
        ("maxpool1 fwd (reduce_window)", "[B,24,24,10]", pool, (y1,)),
        ("maxpool1 bwd (select_and_scatter)", "", bwd(pool), (y1, p1)),
        ("maxpool1 bwd, reshape-max", "", bwd(pool_reshape), (y1, p1)),
        ("maxpool1 bwd, max_pool_2x2", "", bwd(max_pool_2x2), (y1, p1)),
        ("relu+BN1 fwd+bwd", "[B,12,12,10]", relu_bn_fwd_bwd, (p1, s10, s10, p1)),
        ("conv2 fwd (10->20, 5x5)", "x[B,12,12,10]", conv, (x2, k2)),
        ("conv2 fwd, conv_sliced", "", conv_sliced, (x2, k2)),
        ("conv2 weight-grad", "dy[B,8,8,20]", wgrad(conv), (x2, k2, y2)),
        ("conv2 weight-grad, conv_sliced", "", wgrad(conv_sliced), (x2, k2, y2)),
        ("conv2 input-grad", "", igrad(conv), (x2, k2, y2)),
        ("conv2 input-grad, conv_sliced", "", igrad(conv_sliced), (x2, k2, y2)),
        ("maxpool2 fwd (reduce_window)", "[B,8,8,20]", pool, (y2,)),
        ("maxpool2 bwd (select_and_scatter)", "", bwd(pool), (y2, p2)),
        ("maxpool2 bwd, max_pool_2x2", "", bwd(max_pool_2x2), (y2, p2)),
        ("relu+BN2 fwd+bwd", "[B,4,4,20]", relu_bn_fwd_bwd, (p2, s20, s20, p2)),
        ("fc fwd+bwd (320->10)", "[B,320]", dense_fwd_bwd, (f32(B, 320), f32(320, 10), f32(B, 10))),
    ]
    jax_fns, shapes, per_step = {}, {}, {}
    for name, shape, fn, args in ops:
        compiled = jax.jit(fn).lower(*args).compile()
        jax_fns[name], shapes[name] = functools.partial(compiled, *args), shape

    # The whole step; with the faster pool swapped in; inside the engine's scan, rolled and unrolled.
    n = scan_steps
    data_rng = np.random.default_rng(1)
    images = jnp.asarray(data_rng.integers(0, 256, (n * B, 28, 28), dtype=np.uint8))
    labels = jnp.asarray(data_rng.integers(0, 10, n * B), jnp.int32)
    batch = {"image": data_lib.normalize(images[:B]), "label": labels[:B]}
    state = train.create_state(config_for("cnn", B), jax.random.PRNGKey(0))

    def step_compiled():  # a fresh jit each time: a cached trace would not see the patched ops
        return functools.partial(
            jax.jit(lambda s, b: train.train_step(s, b)).lower(state, batch).compile(), state, batch
        )

    jax_fns["whole train step"] = step_compiled()
    with _CnnWithCpuOps(pool=True):
        jax_fns["whole train step, select_and_scatter pool"] = step_compiled()
    with _CnnWithCpuOps(conv=True):
        jax_fns["whole train step, conv_sliced"] = step_compiled()
    idx = jnp.arange(n * B, dtype=jnp.int32).reshape(n, B)
    jit_chunk = jax.jit(train.train_chunk, static_argnames=("augment", "train", "unroll"))
    for unroll in (True, False):
        name = f"train_chunk, {n} steps, {'unrolled' if unroll else 'rolled'} scan (per step)"
        compiled = jit_chunk.lower(state, images, labels, idx, augment=False, train=True, unroll=unroll).compile()
        jax_fns[name], per_step[name] = functools.partial(compiled, state, images, labels, idx), n
    for name in jax_fns:
        shapes.setdefault(name, f"B={B}")

    fns = {("jax", k): v for k, v in jax_fns.items()}
    if with_torch:
        fns.update({("torch", k): v for k, v in _profile_cnn_torch_ops(B).items()})
    log(f"  timing {len(fns)} functions round-robin, {rounds} rounds")
    timings = measure_interleaved(fns, jax.block_until_ready, rounds=rounds)
    rows = []
    for name in jax_fns:
        row = {"op": name, "shape": shapes[name]}
        for fw in ("jax", "torch"):
            t = timings.get((fw, name))
            if t is not None:
                row[f"{fw}_ms"] = 1e3 * t.median / per_step.get(name, 1)
                row[f"{fw}_min_ms"] = 1e3 * min(t.samples) / per_step.get(name, 1)
        rows.append(row)
    return rows


def _profile_cnn_torch_ops(B: int) -> dict[str, Callable[[], Any]]:
    """The torch (aten) counterparts of profile_cnn's ops, by the same names."""
    import torch
    import torch.nn.functional as F

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
    opt = torch_optimizer(config_for("cnn", B), model.parameters())
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
        "whole train step": lambda: _torch_train_step(model, "cnn", opt, xb, yb),
    }


def profile_report(rows: list[dict]) -> str:
    """Median and, in brackets, minimum per op (ms); on a loaded machine the minimum is the steadier of the two."""

    def both(r, k):
        return f"{_fmt(r.get(k + '_ms'))} ({_fmt(r.get(k + '_min_ms'))})" if r.get(k + "_ms") else "-"

    lines = ["| op | shape | JAX ms | torch ms |", "|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r.get('shape', '')} | {both(r, 'jax')} | {both(r, 'torch')} |")
    return "\n".join(lines) + "\n"
