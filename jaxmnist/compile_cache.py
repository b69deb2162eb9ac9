"""XLA's persistent compilation cache, on for every command: a program compiled once on this machine is read
from disk by the next run instead of compiled again (README, "Compile once per machine").

Where: $JAXMNIST_COMPILE_CACHE, else $XDG_CACHE_HOME/jaxmnist/xla (~/.cache/jaxmnist/xla), beside the
convolution timings (jaxmnist.convs). `--no-compile-cache`, or JAXMNIST_COMPILE_CACHE=off, turns it off.

Safe to share: the cache is size-bounded, so JAX takes a file lock around every read and write (several runs,
reproduce.py's and the tests' subprocesses, share one directory without reading a half-written entry). An entry
JAX cannot read (damaged) is compiled again with a warning, never a failed run; JAX does not overwrite it, so the
warning stays until the directory is removed. Keys hold the jax version, the backend, the devices and the
compiler options, so another version's or machine's entries never match.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "JAXMNIST_COMPILE_CACHE"
OFF = ("off", "0", "none", "")
MAX_BYTES = 4 << 30  # least recently used entries go beyond this; bounding the size is what turns on JAX's lock
# Every program, the small ones too: a run starts with about twenty eager ops of 0.02-0.2 s each, and reading them
# back saves 1.7 s of a warm 10 s `--model cnn` run (2-vCPU Zen 3) for about 400 KB of disk.
MIN_COMPILE_S = 0.0


def default_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxmnist" / "xla"


def directory(off: bool = False) -> Path | None:
    """The cache directory this process uses, or None when it is off."""
    if off:
        return None
    if ENV in os.environ:
        value = os.environ[ENV]
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    return default_dir()


def configure(off: bool = False) -> Path | None:
    """Turns the cache on for this process (before its first compilation); returns its directory, or None when
    it is off or the directory cannot be written (the run then compiles as usual)."""
    path = directory(off)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise OSError
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        import filelock  # noqa: F401  (JAX's lock needs it; without it the cache stays unbounded and unlocked)

        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    except ImportError:
        pass
    return path


def add_flag(p) -> None:
    p.add_argument(
        "--no-compile-cache",
        action="store_true",
        help=f"compile everything afresh: no persistent XLA cache (default: ${ENV}, else ~/.cache/jaxmnist/xla)",
    )
