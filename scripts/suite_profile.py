"""Where the test suite's time goes: a pytest plugin that records, per test, when it ran on which worker and what
JAX compiled meanwhile in that worker (jax.monitoring's compile events), and a summary of the records.

    make test ARGS="-p suite_profile"                  # records into runs/suite_profile/<worker>.json
    python scripts/suite_profile.py runs/suite_profile # per worker busy and idle time, compile seconds per file

$SUITE_PROFILE_DIR moves the records. Compiles inside the commands a test starts (subprocesses) are not counted:
they show as the test's time only. docs/testing.md reads these numbers.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

BACKEND = "/jax/core/compile/backend_compile_duration"  # XLA compiling a program (or reading it from the cache)
TRACING = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")
_rows: list[dict] = []
_current: dict | None = None


def _listener(event: str, duration: float, **_) -> None:
    if _current is None:
        return
    if event == BACKEND:
        _current["compiles"] += 1
        _current["compile_s"] += duration
    elif event in TRACING:
        _current["trace_s"] += duration


def pytest_configure(config) -> None:
    import jax

    jax.monitoring.register_event_duration_secs_listener(_listener)


def pytest_collection_finish(session) -> None:
    now = time.time()
    _rows.append({"test": "<collected>", "start": now, "end": now})


def pytest_runtest_protocol(item, nextitem):
    global _current
    _current = {"test": item.nodeid, "start": time.time(), "compiles": 0, "compile_s": 0.0, "trace_s": 0.0}
    _rows.append(_current)


def pytest_runtest_logfinish(nodeid, location) -> None:
    global _current
    if _current is not None:
        _current["end"] = time.time()
    _current = None


def pytest_unconfigure(config) -> None:
    out = Path(os.environ.get("SUITE_PROFILE_DIR", "runs/suite_profile"))
    out.mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    tmp = out / f".{worker}.json.tmp"
    tmp.write_text(json.dumps({"worker": worker, "started": _started(), "rows": _rows}))
    tmp.replace(out / f"{worker}.json")


def _started() -> float:
    """The process's start (Linux), so that collection time shows; else the first record's."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _rows[0]["start"] if _rows else time.time()


def summary(records: list[dict], top: int = 15) -> str:
    """Per worker: collection, busy and idle seconds, its last test's end; then compile seconds per test file and the
    tests that compiled most, summed over workers."""
    lines, tests = [], []
    files = collections.defaultdict(lambda: dict.fromkeys(("compiles", "compile_s", "trace_s", "test_s"), 0))
    t0 = min(r["started"] for r in records)
    for record in sorted(records, key=lambda r: r["worker"]):
        rows = [r for r in record["rows"] if r["test"] != "<collected>" and "end" in r]
        collected = next((r["start"] for r in record["rows"] if r["test"] == "<collected>"), record["started"])
        busy = sum(r["end"] - r["start"] for r in rows)
        last = max((r["end"] for r in rows), default=collected)
        lines.append(f"{record['worker']}: collected after {collected - t0:.1f} s, {len(rows)} tests, "
                     f"busy {busy:.1f} s, idle {last - collected - busy:.1f} s, "
                     f"last test ended at {last - t0:.1f} s")  # fmt: skip
        for r in rows:
            f = files[r["test"].split("::")[0]]
            for key in ("compiles", "compile_s", "trace_s"):
                f[key] += r[key]
            f["test_s"] += r["end"] - r["start"]
            tests.append(r)
    total = {key: sum(f[key] for f in files.values()) for key in ("compiles", "compile_s", "trace_s", "test_s")}
    lines.append("all: {test_s:.1f} s of tests, XLA compiling {compile_s:.1f} s ({compiles} programs), tracing and "
                 "lowering {trace_s:.1f} s".format(**total))  # fmt: skip
    lines.append("\nfile: test s, compile s (programs), tracing s")
    for name, f in sorted(files.items(), key=lambda kv: -kv[1]["test_s"])[:top]:
        lines.append("  {}: {test_s:.1f}, {compile_s:.1f} ({compiles}), {trace_s:.1f}".format(name, **f))
    lines.append("\ntests compiling most: compile s (programs) of test s")
    for r in sorted(tests, key=lambda r: -r["compile_s"])[:top]:
        lines.append(f"  {r['test']}: {r['compile_s']:.1f} ({r['compiles']}) of {r['end'] - r['start']:.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Summarise the records `make test ARGS=\"-p suite_profile\"` wrote.")
    p.add_argument("directory", nargs="?", default="runs/suite_profile")
    p.add_argument("--top", type=int, default=15, help="how many files and tests to list")
    args = p.parse_args(argv)
    paths = sorted(Path(args.directory).glob("*.json"))
    if not paths:
        print(f"error: no records in {args.directory}: run `make test ARGS=\"-p suite_profile\"` first",
              file=sys.stderr)
        return 2
    try:
        records = [json.loads(path.read_text()) for path in paths]
    except (OSError, ValueError) as e:
        print(f"error: cannot read the records in {args.directory}: {e}", file=sys.stderr)
        return 2
    print(summary([r for r in records if r["worker"] != "main" or len(records) == 1], args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
