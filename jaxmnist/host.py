"""The machine a run is on, as every stated time must name it, and how busy it is."""

from __future__ import annotations

import functools
import os
import platform
import time
from pathlib import Path


@functools.cache  # one process runs on one machine: read /proc/cpuinfo once
def cpu_info() -> dict[str, str]:
    """The first CPU's /proc/cpuinfo fields (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_flags() -> set[str]:
    """The CPU's feature flags (avx2, avx512f, ...)."""
    return set(cpu_info().get("flags", "").split())


@functools.cache
def machine() -> str:
    """The host a time was measured on: CPU model, family/model/stepping, vector extensions, usable cores. The
    same "AMD EPYC" label covers machines 3x apart in speed (AVX-512 or not), so every time names this."""
    info, flags = cpu_info(), cpu_flags()
    isa = "+".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags) or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = info.get("model name") or platform.processor() or platform.machine()  # processor(): a subprocess
    family = f"family {info.get('cpu family', '?')} model {info.get('model', '?')} stepping {info.get('stepping', '?')}"
    return f"{model}, {family}, {isa}, {cores} cores"


def _stat_fields(path: str | os.PathLike) -> list[str]:
    """A /proc/<pid>/stat line's fields after the ")" that ends the command name: state, ppid, ..., utime (11),
    stime, cutime, cstime (14), ..., starttime (19)."""
    return Path(path).read_text().rsplit(")", 1)[1].split()


def process_age_s() -> float | None:
    """Seconds since this process started (Linux; None elsewhere): imports and data loading included."""
    try:
        fields = _stat_fields("/proc/self/stat")
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


# Above this share of the machine's CPU taken by other processes, a time was measured on shared cores: an epoch's is
# not a quiet one's (reproduce.py, ablation.py), and the convolution timings are not cached (jaxmnist.autotune).
SHARED_ABOVE = 0.15


def own_cpu_ticks() -> int:
    """CPU time, in clock ticks, of this process and everything it started: its threads, its live descendants
    (torch_ref's DataLoader workers) and the children it has reaped (Linux; raises OSError elsewhere). A child
    reaped during the scan would drop out of it (its time moves to this process's entry, perhaps already read):
    then the scan runs again."""
    for _ in range(5):
        reaped = _reaped_ticks()
        total = _tree_ticks()
        if _reaped_ticks() == reaped:
            return total
    return total


def _reaped_ticks() -> int:
    fields = _stat_fields("/proc/self/stat")
    return int(fields[13]) + int(fields[14])  # cutime + cstime: the children this process has reaped


def _tree_ticks() -> int:
    parent, ticks = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(Path(entry.path, "stat"))
        except OSError:  # exited since the listing
            continue
        parent[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = sum(int(v) for v in fields[11:15])  # a reaped child's time moves to its cutime
    me = os.getpid()
    if me not in ticks:
        raise OSError("no /proc entry for this process")

    def started_by_me(pid: int) -> bool:
        while pid > 1 and pid != me:
            pid = parent.get(pid, 0)
        return pid == me

    return sum(t for pid, t in ticks.items() if started_by_me(pid))


# What OthersCpu counts as the run's own (recorded beside its figures, jaxmnist.runlog): before, only the process.
OTHERS_CPU_SCOPE = "process tree"


class OthersCpu:
    """The share of the machine's CPU time that other processes took since the last `share()` call: about 0 for a
    run that had the cores to itself, 0.3 and more when other work ran beside it (Linux; None elsewhere). Unlike
    the load average it does not lag, and it does not count the run's own threads nor the processes it started
    (before, torch's 4 DataLoader workers read as 0.14-0.22 of a quiet 16-core GPU machine: as if other work ran)."""

    def __init__(self):
        self._mark = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        """(machine's busy CPU seconds, this run's CPU seconds, wall seconds since boot), from /proc."""
        try:
            hz = os.sysconf("SC_CLK_TCK")
            cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy = sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)  # all but idle and iowait
            return busy / hz, own_cpu_ticks() / hz, time.monotonic()
        except (OSError, ValueError, IndexError):
            return None

    def share(self) -> float | None:
        now, before = self._read(), self._mark
        self._mark = now
        if now is None or before is None or now[2] - before[2] < 0.5:  # /proc counts in 10 ms ticks
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        others = (now[0] - before[0]) - (now[1] - before[1])
        return round(min(max(others / ((now[2] - before[2]) * cores), 0.0), 1.0), 3)
