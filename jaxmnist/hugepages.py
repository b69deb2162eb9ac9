"""Transparent huge pages for a command's memory, on request: with $JAXMNIST_HUGEPAGES=1 a command re-executes
itself once, before importing anything large, with glibc's `glibc.malloc.hugetlb=1`, so that malloc asks the kernel
for 2 MiB pages (madvise).

Why it exists: XLA:CPU allocates a step's large temporaries afresh and glibc hands blocks of more than 32 MiB back
to the kernel when they are freed, so a step touches fresh 4 KiB pages, each a page fault. Since 2026-12-03 the
commands keep freed memory by default instead (jaxmnist/malloc.py), which removes most of those faults without huge
pages; the measurements below were taken before, with glibc as it was. On a 2-vCPU Zen 3 (AVX2,
no AVX-512) single train steps timed alone get much faster with huge pages (cnn_deep 27 %, torch's 21 %), but whole
training epochs do not: `fast`'s full epoch level (47.0, 48.0 s against 49.3, 46.0 s), `best` and cnn level, epochs of
15,360 images with their evaluation 11 % shorter, and the benchmark's evaluation passes up to a quarter slower. So it
is off by default (benchmarks/README.md, "Huge pages"). The bits are the same either way; torch_ref's commands take
the same switch, so that comparisons stay fair.

Nothing changes unless $JAXMNIST_HUGEPAGES is 1, nor where glibc is older than 2.35, the kernel's transparent huge
pages are `never`, or $GLIBC_TUNABLES already sets `glibc.malloc.hugetlb`.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ENV = 'JAXMNIST_HUGEPAGES'  # 1: ask for huge pages (default 0: malloc as it is)
KEY, VALUE = 'glibc.malloc.hugetlb', '1'
THP = Path('/sys/kernel/mm/transparent_hugepage/enabled')
PACKAGES = ('jaxmnist', 'torch_ref')  # `python -m <package>.<command>`
SCRIPT_PREFIXES = ('jaxmnist-', 'torch-ref-')  # the installed commands (pyproject.toml's [project.scripts])


def _glibc_at_least(major: int, minor: int) -> bool:
    lib, version = platform.libc_ver()
    try:
        return lib == 'glibc' and tuple(int(p) for p in version.split('.')[:2]) >= (major, minor)
    except ValueError:
        return False


def kernel_mode() -> str | None:
    """The kernel's transparent huge page mode (always, madvise, never), None where it has none."""
    try:
        text = THP.read_text()
    except OSError:
        return None
    return text[text.find('[') + 1 : text.find(']')] if '[' in text else None


def tunable_names(current: str | None) -> list[str]:
    """The tunables a $GLIBC_TUNABLES value sets, in its order."""
    return [e.split('=', 1)[0] for e in (current or '').split(':') if e]


def tunables(current: str | None) -> str | None:
    """$GLIBC_TUNABLES with huge pages asked for, or None where it already says something about them."""
    if KEY in tunable_names(current):
        return None
    return ':'.join([*(e for e in (current or '').split(':') if e), f'{KEY}={VALUE}'])


def wanted(environ=os.environ) -> str | None:
    """The $GLIBC_TUNABLES to re-execute with, or None where nothing would change."""
    if environ.get(ENV, '0') != '1' or sys.platform != 'linux' or not _glibc_at_least(2, 35):
        return None
    if kernel_mode() not in ('always', 'madvise'):
        return None
    return tunables(environ.get('GLIBC_TUNABLES'))


def active(environ=os.environ) -> bool:
    """Whether this process started with huge pages asked for."""
    return f'{KEY}={VALUE}' in (environ.get('GLIBC_TUNABLES') or '').split(':')


def is_command(orig_argv: list[str], argv0: str) -> bool:
    """Whether the process is one of this project's commands: `python [options] -m jaxmnist.<x>` (or torch_ref's),
    or an installed `jaxmnist-<x>` / `torch-ref-<x>`. Never pytest, a script, or a library user's program."""
    args = iter(orig_argv[1:])
    for arg in args:  # Python's own options, up to -m, -c or a script
        if arg == '-m':
            return next(args, '').split('.')[0] in PACKAGES
        if arg == '-c' or not arg.startswith('-'):
            break
        if arg in ('-X', '-W'):  # options with a separate value
            next(args, None)
    return Path(argv0).name.startswith(SCRIPT_PREFIXES)


def reexec() -> None:
    """Replaces this process (same pid, arguments and file descriptors) by itself with huge pages asked for, where
    that changes something; returns where it does not, or where exec fails."""
    value = wanted()
    if value is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, 'GLIBC_TUNABLES': value})
    except OSError:
        pass
