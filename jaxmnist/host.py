"""The machine a run is on, as every stated time must name it, and how busy it is."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """The host a time was measured on: CPU model, family/model/stepping, vector extensions, usable cores. The
    same "AMD EPYC" label covers machines 3x apart in speed (AVX-512 or not), so every time names this."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    isa = "+".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags) or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = info.get("model name") or platform.processor() or platform.machine()  # processor(): a subprocess
    family = f"family {info.get('cpu family', '?')} model {info.get('model', '?')} stepping {info.get('stepping', '?')}"
    return f"{model}, {family}, {isa}, {cores} cores"


def process_age_s() -> float | None:
    """Seconds since this process started (Linux; None elsewhere): imports and data loading included."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time after boot, in clock ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def load_average() -> float | None:
    """The 1-minute load average: beside each epoch's time, it tells a quiet run (about the trainer's own
    threads) from one that shared the cores with other work."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
