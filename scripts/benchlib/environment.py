"""Where a benchmark ran: device, driver, library versions, commit and settings, and the device's peak FLOP/s
against which a measurement's utilisation is judged."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from jaxmnist import autotune, host, malloc, runlog

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


def flop_per_cycle(model_name: str, family: str, flags: str) -> int:
    """FP32 FLOP per cycle and core from /proc/cpuinfo's fields (cpu_peak_estimate says what it assumes)."""
    isa = set(flags.split())
    full_width_512 = "AMD" not in model_name or (family.isdigit() and int(family) >= 26)
    return 64 if ("avx512f" in isa and full_width_512) else 32 if {"avx2", "fma"} <= isa else 8


def cpu_peak_estimate() -> dict:
    """An FP32 peak estimate for this CPU: logical cores x current clock x FLOP/cycle from the ISA flags.

    Only an estimate: the clock is /proc/cpuinfo's current one, 'cores' are the vCPUs the OS shows (on a VM two
    may share one physical core), and FLOP/cycle assumes two FMA pipes (AVX2: 2 x 8 lanes x 2 = 32; AVX-512 on
    Intel: 64; AMD's Zen 4 (family 25) runs AVX-512 at the AVX2 rate, Zen 5's server parts (family 26)
    at the full 64; its laptop parts would read twice too high).
    """
    cores = os.cpu_count() or 1
    info = host.cpu_info()
    per_cycle = flop_per_cycle(info.get("model name", ""), info.get("cpu family", ""), info.get("flags", ""))
    ghz = float(info["cpu MHz"]) / 1000 if "cpu MHz" in info else None
    return {
        "model": info.get("model name"),
        "cores": cores,
        "ghz": ghz,
        "flop_per_cycle": per_cycle,
        "fp32_tflops": cores * ghz * per_cycle / 1000 if ghz else None,
        "estimate": True,
        # model, family/model/stepping, vector extensions, usable cores: what the per-machine convolution timings
        # of jaxmnist.autotune are cached under, and what names the machine beside every time the run reports.
        "identity": autotune.cpu_identity(),
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
        # ATen's vector kernels (ATEN_CPU_CAPABILITY caps it); oneDNN's own cap is ONEDNN_MAX_CPU_ISA in env_vars.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return env


# The environment variables a results file keeps: the frameworks' settings, and the vector-ISA caps that emulate an
# older CPU (XLA_FLAGS' --xla_cpu_max_isa, ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY; benchmarks/README.md, "A Zen 5").
ENV_PREFIXES = ("XLA_", "JAX_", "TF_", "CUDA_VISIBLE", "OMP_", "MKL_", "TORCH", "GLIBC_", "JAXMNIST_", "ONEDNN_",
                "DNNL_", "ATEN_")  # fmt: skip
# torch's two caps (oneDNN's kernels, ATen's); XLA's rides in XLA_FLAGS, which autotune.cpu_identity() names.
TORCH_ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def isa_caps() -> dict:
    """torch's vector-ISA caps in force (an emulated older CPU), {} on a run that uses the whole CPU."""
    return {k: os.environ[k] for k in TORCH_ISA_CAPS if os.environ.get(k)}


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
            "onednn-cpu-gomp",  # jaxmnist.onednn's kernels
        ),
        "commit": runlog.git_commit(),
        "dirty": git_dirty(),
        # None is JAX's default: TF32 for f32 convolutions and matmuls on Ampere and later GPUs.
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "malloc": malloc.state(),  # keep: freed memory kept for the next step, both frameworks (jaxmnist/malloc.py)
        "env_vars": {
            k: v
            for k, v in os.environ.items()
            if k.startswith(ENV_PREFIXES)
        },
    }
    if torch_device is not None:
        try:
            env["torch"] = torch_environment(torch_device)
        except Exception as e:  # torch missing or broken: the JAX numbers still stand
            env["torch"] = {"error": first_line(e)}
    return env


def utilisation(flops_per_image: float | None, images_per_s: float, peak: float | None, peak_name: str) -> dict:
    """Achieved TFLOP/s and its fraction of `peak` (TFLOP/s of kind `peak_name`); empty without a FLOP count."""
    if flops_per_image is None:
        return {}
    achieved = flops_per_image * images_per_s
    return {
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak,
        "peak_kind": peak_name,
        "fraction_of_peak": achieved / (peak * 1e12) if peak else None,
    }


def first_line(e: BaseException) -> str:
    """An exception as one line for a results file: its type and the start of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"
