"""Freed memory kept for the next step: this project's commands tell glibc's malloc, first thing, to use one arena,
never to map a large block on its own and never to hand freed memory back to the kernel (`mallopt`), so that a
step's temporaries reuse the pages of the step before.

Why: XLA:CPU allocates a step's temporaries afresh on every call of a compiled program. glibc maps each block over
32 MiB on its own and unmaps it when it is freed, and hands the free top of a thread's arena back to the kernel, so
every call touched fresh 4 KiB pages, a page fault each: a resnet train step at batch 512 took 162,000 faults (660
MB of zeroed pages) and 0.7-1.0 s, against 0-30,000 faults and 0.54-0.67 s with freed memory kept (2 vCPUs of a
Zen 4; benchmarks/README.md, "Freed memory kept"). torch's step takes fewer faults and gains less (0.90-1.02x).
The bits are the same either way. The price: a process keeps the most memory it ever held until it ends.

`$JAXMNIST_MALLOC=system` leaves glibc as it is; a setting that `$GLIBC_TUNABLES` already makes is left to it.
Huge pages (jaxmnist/hugepages.py) are another switch and combine with this one. Off glibc (musl, macOS) nothing
changes. torch_ref's commands and the scripts take the same settings, so comparisons stay fair.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from jaxmnist import hugepages

ENV = 'JAXMNIST_MALLOC'  # keep (default): freed memory kept; system: glibc's own behaviour
# mallopt's parameters (malloc.h), each beside the $GLIBC_TUNABLES name that would set it instead, and the value.
SETTINGS = (
    (-8, 'glibc.malloc.arena_max', 1),  # M_ARENA_MAX: XLA's threads allocate from the main arena, never shrunk
    (-4, 'glibc.malloc.mmap_max', 0),  # M_MMAP_MAX: no block gets its own mapping (so none is unmapped on free)
    (-1, 'glibc.malloc.trim_threshold', 2**31 - 1),  # M_TRIM_THRESHOLD: never hand the heap's top back
)

_kept: bool | None = None  # what keep_freed_memory did in this process (None: not asked)


def wanted(environ=os.environ) -> bool:
    """Whether to keep freed memory: on glibc, unless $JAXMNIST_MALLOC=system. Any other value of the switch is a
    ValueError, named."""
    choice = environ.get(ENV, 'keep')
    if choice not in ('keep', 'system'):
        raise ValueError(f'${ENV} is {choice!r}: keep (the default) or system')
    return choice == 'keep' and platform.libc_ver()[0] == 'glibc'


def keep_freed_memory(environ=os.environ) -> bool:
    """Sets glibc's malloc to keep freed memory (the settings above that $GLIBC_TUNABLES leaves open), once per
    process, before jax or torch start their threads. True where it did; False where it is not `wanted`."""
    global _kept
    if _kept is None:
        _kept = wanted(environ) and _mallopt(hugepages.tunable_names(environ.get('GLIBC_TUNABLES')))
    return _kept


def _mallopt(taken: list[str]) -> bool:
    mallopt = getattr(ctypes.CDLL(None), 'mallopt', None)
    if mallopt is None:
        return False
    return all(mallopt(param, value) == 1 for param, name, value in SETTINGS if name not in taken)


def start_command() -> None:
    """What every command and script of the project does first, before jax or torch load: restart with huge pages
    where they are asked for (jaxmnist/hugepages.py), then keep freed memory; a wrong $JAXMNIST_MALLOC is one line
    and exit 2, not a traceback."""
    hugepages.reexec()
    try:
        keep_freed_memory()
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)


def state() -> str:
    """What a results file records: 'keep' where this process keeps freed memory, else 'system'."""
    return 'keep' if _kept else 'system'
