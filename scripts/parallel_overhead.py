"""What data parallelism costs: one preset's epochs on 1 device, on N forced host devices of one process, and on
N processes of one device each (jax.distributed on localhost, gloo on CPUs), every run its own process.

    python scripts/parallel_overhead.py --preset cnn_tb --epochs 2        # JSON: benchmarks/<platform>-parallel.json
    python scripts/parallel_overhead.py --preset fast --epochs 1 --max-steps 40 --devices 2

On a CPU the N "devices" share its cores, so this measures the price of partitioning and of the collectives (the
all-reduces of BatchNorm's statistics and of the gradients, in-process or over gloo), not a speed-up. Reported
per layout: the mean epoch time after the first (from metrics.json), the compile time and the final accuracy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import needs_jaxmnist  # noqa: F401  (before jaxmnist: one line, not a traceback, where it is missing)

from jaxmnist import cli
from jaxmnist.presets import PRESETS
from jaxmnist.runlog import atomic_write, git_commit, versions

ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> cli.ArgumentParser:
    p = cli.script_parser("scripts/parallel_overhead.py", __doc__)
    p.add_argument("--preset", default="cnn_tb", choices=sorted(PRESETS))
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (the first one is not averaged)")
    p.add_argument("--max-steps", type=int, help="at most N steps per epoch")
    p.add_argument("--devices", type=int, default=2, help="N: devices of the mesh, and processes")
    p.add_argument("--data-dir", help="directory of the four MNIST IDX files")
    p.add_argument("--out", help="JSON file (default benchmarks/cpu-parallel.json)")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, logdir: Path, devices_per_process: int, mesh: int, process: tuple[int, int, int] | None):
    """One trainer process; `process`: (port, count, id) for jax.distributed."""
    cmd = [sys.executable, "-m", "jaxmnist.train", "--preset", args.preset, "--epochs", str(args.epochs)]
    cmd += ["--no-progress", "--logdir", str(logdir), "--devices", str(mesh)]
    cmd += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    if process:
        port, count, pid = process
        cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", str(pid)]
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices_per_process)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def layout(args, name: str, tmp: Path) -> dict:
    """Runs one layout ('1 device', 'N devices', 'N processes') and reads process 0's metrics.json."""
    n = args.devices
    logdir = tmp / name.replace(" ", "_")
    if name == "1 device":
        procs = [launch(args, logdir, 1, 1, None)]
    elif name.endswith("devices"):
        procs = [launch(args, logdir, n, n, None)]
    else:
        port = free_port()
        procs = [launch(args, logdir if i == 0 else tmp / f"ignored{i}", 1, n, (port, n, i)) for i in range(n)]
    t0 = time.perf_counter()
    errors = [p.communicate(timeout=3600)[1] for p in procs]
    wall_s = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise cli.RunError(f"{name}: " + next(e for e in errors if e.strip()).strip().splitlines()[-1])
    record = json.loads((logdir / "metrics.json").read_text())
    epoch_s = [e["time_s"] for e in record["epochs"]]
    later = epoch_s[1:] or epoch_s
    mean_s = sum(later) / len(later)
    print(
        f"{name:>12}: {mean_s:7.2f} s per epoch (after the first), compile {record['compile_s']:.1f} s, "
        f"final {record['final_acc']:.2f} %",
        flush=True,
    )
    return {
        "layout": name,
        "epoch_s": epoch_s,
        "epoch_s_after_first": mean_s,
        "compile_s": record["compile_s"],
        "final_acc": record["final_acc"],
        "wall_s": wall_s,
        "device": record["device"],
    }


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.devices < 2:
        raise cli.UsageError(f"--devices must be >= 2, got {args.devices}")
    out = Path(args.out or ROOT / "benchmarks" / "cpu-parallel.json")
    n = args.devices
    with tempfile.TemporaryDirectory(prefix="jaxmnist-parallel-") as tmp:
        runs = [layout(args, name, Path(tmp)) for name in ("1 device", f"{n} devices", f"{n} processes")]
    base = runs[0]["epoch_s_after_first"]
    for r in runs:
        r["vs_one_device"] = r["epoch_s_after_first"] / base
    doc = {
        "preset": args.preset,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "cpu_count": os.cpu_count(),
        "versions": versions("jax", "jaxlib", "flax", "optax"),
        "commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(doc, indent=1).encode())
    print(f"written {out}")
    return 0


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
