"""jaxmnist.compile_cache: where the cache lives, and that a second process reads what the first compiled, and
that a damaged entry costs a recompilation and a warning, never a run (real subprocesses of jaxmnist.train).
JAX never overwrites an entry, so a damaged one stays until the cache directory is removed (README)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxmnist import compile_cache

RUN = [sys.executable, "-m", "jaxmnist.train", "--model", "cnn", "--train-size", "640", "--max-steps", "2",
       "--epochs", "1", "--eval-batch-size", "1000", "--no-progress", "--no-report", "--chunk-steps", "1"]  # fmt: skip


def test_where_the_cache_lives(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.directory() == tmp_path / "jaxmnist" / "xla"
    assert compile_cache.directory(off=True) is None  # --no-compile-cache
    for off in ("off", "0", ""):
        monkeypatch.setenv(compile_cache.ENV, off)
        assert compile_cache.directory() is None
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "elsewhere"))
    assert compile_cache.directory() == tmp_path / "elsewhere"


def entries(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in cache.glob("*-cache")}


def atimes(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in cache.glob("*-atime")}  # JAX's LRU stamps, rewritten on every read


def train(cache: Path, tmp_path: Path, *flags) -> subprocess.CompletedProcess:
    env = {**os.environ, compile_cache.ENV: str(cache)}
    run = subprocess.run([*RUN, "--logdir", str(tmp_path / "log"), *flags], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run


@pytest.mark.slow
def test_a_second_process_reads_the_first_ones_programs_and_survives_damage(mnist, tmp_path):
    cache = tmp_path / "xla"
    train(cache, tmp_path)
    first = entries(cache)
    assert len(first) >= 2  # at least the train chunk and the evaluation pass
    stamps = atimes(cache)
    train(cache, tmp_path)
    again = entries(cache)
    assert {k: again[k] for k in first} == first  # nothing the first run compiled was compiled again...
    assert all(atimes(cache)[k] != v for k, v in stamps.items())  # ...every entry was read
    damaged = {name: raw[: len(raw) // 2] if i % 2 else b"garbage" for i, (name, raw) in enumerate(first.items())}
    for name, raw in damaged.items():  # every entry cut short, or garbage
        (cache / name).write_bytes(raw)
    damaged_run = train(cache, tmp_path)  # compiled again: a warning per entry, never a failed run
    assert "Error reading persistent compilation cache entry" in damaged_run.stderr
    off = tmp_path / "off"
    train(off, tmp_path, "--no-compile-cache")
    assert not entries(off)
