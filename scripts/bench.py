"""Benchmarks the blog's networks in JAX and PyTorch: train step, epoch, evaluation, FLOPs and peak utilisation.

    python scripts/bench.py --quick                          # CI smoke test (seconds; numbers mean nothing)
    python scripts/bench.py --networks cnn,resnet --batch-sizes 512,64
    python scripts/bench.py --budget-s 420 --data-dir data/mnist --offline --resume  # what gpu_bench.sh runs
    python scripts/bench.py --profile-cnn 512                # where the cnn step's CPU time goes, op by op
    python scripts/bench.py --table benchmarks/cpu-2vcpu-pinned-1core.json   # reprint a saved run

Prints a markdown table and writes every raw timing to a JSON file (default benchmarks/<platform>-<device>.json),
rewritten after each measurement so an interrupted run keeps what it measured. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

T_START = time.perf_counter()  # the budget counts imports and data loading too
ROOT = Path(__file__).resolve().parent.parent

# JAX and torch share the GPU in this process: JAX must not grab 75 % of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The blog's DataLoader forks its workers after JAX has started; they run only PIL and torch CPU code, never JAX,
# so JAX's fork warning (one per worker, per loader) is noise here.
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)

import needs_jaxmnist  # noqa: F401  (before jaxmnist: one line, not a traceback, where it is missing)

from benchlib import environment, plan, profile, report
from benchlib.settings import NETWORKS, Settings, quick_settings
from jaxmnist import cli, convs, runlog
from jaxmnist import data as data_lib
from jaxmnist.cli import UsageError


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> cli.ArgumentParser:
    p = cli.script_parser("scripts/bench.py", __doc__)
    p.add_argument("--quick", action="store_true", help="smoke test: cnn and resnet, batch 8, a few steps")
    p.add_argument("--networks", help="comma-separated (default: every network of jaxmnist.models; --quick: "
                   "cnn,resnet)")  # fmt: skip
    p.add_argument(
        "--batch-sizes",
        type=int_list,
        help="the first gets the full set (default 512,64,4096 on GPU, 512,64,2048 on CPU)",
    )
    p.add_argument("--epoch-batch-sizes", type=int_list, help="epoch + evaluation at these (default: the first)")
    p.add_argument("--compile-batch-sizes", type=int_list, help="torch.compile at these (default: the first)")
    p.add_argument(
        "--budget-s",
        type=float,
        help="skip what no longer fits after this many seconds; results so far are still written",
    )
    p.add_argument("--out", help="JSON file (default benchmarks/<platform>-<device>.json; --quick: runs/bench/)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep what OUT already holds, measured on the same device kind, versions and settings; measure the rest",
    )
    p.add_argument("--data-dir", help="directory of the four MNIST IDX files (else jaxmnist.data's cache/sources)")
    p.add_argument("--offline", action="store_true", help="never try the network for MNIST")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="JAX bf16 steps (default: on for GPU)")
    p.add_argument("--no-torch", action="store_true", help="JAX only")
    p.add_argument(
        "--conv-impl",
        choices=convs.IMPLS,
        help="how JAX's convolutions run, as jaxmnist.train's --conv-impl (default: auto, or $JAXMNIST_CONV_IMPL)",
    )
    p.add_argument("--no-torch-compile", action="store_true", help="no torch.compile measurements")
    p.add_argument("--torch-device", help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument(
        "--num-workers", type=int, help="blog DataLoader workers (default: 4 with CUDA, as the blog; 0 on CPU)"
    )
    p.add_argument("--iters", type=int, help="timed steps per measurement (default 50; capped by --max-s)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 3)")
    p.add_argument("--max-s", type=float, help="stop a measurement after this many seconds of samples (default 3)")
    p.add_argument("--epoch-repeats", type=int, help="epochs timed, best kept (default 2)")
    p.add_argument(
        "--pair-rounds", type=int, help="rounds of JAX and tuned torch alternating, paired (default 10; 0: none)"
    )
    p.add_argument("--train-size", type=int, help="epoch over only the first N training images")
    p.add_argument("--seeds", type=int, help="jax_epoch_seeds: this many seeds vmapped in one program (default 4; 1: none)")
    p.add_argument(
        "--profile-cnn",
        type=int,
        nargs="?",
        const=512,
        metavar="BATCH",
        help="instead: per-op profile of the cnn train step (default batch 512)",
    )
    p.add_argument("--table", metavar="JSON", help="instead: print the tables of a saved run")
    p.add_argument("--dry-run", action="store_true", help="list the planned measurements in order, run none")
    return p


def check_numbers(args) -> None:
    """The numeric flags' ranges, before anything is loaded or measured (a zero or negative count, a NaN)."""
    if args.networks is not None and not any(n.strip() for n in args.networks.split(",")):
        raise UsageError(f"--networks {args.networks!r} names no network; choose from {', '.join(NETWORKS)}")
    for name in ("iters", "max_s", "epoch_repeats", "train_size", "seeds", "budget_s", "warmup", "pair_rounds"):
        value, may_be_zero = getattr(args, name), name in ("warmup", "pair_rounds")
        if value is not None and not (math.isfinite(value) and (value >= 0 if may_be_zero else value > 0)):
            raise UsageError(f"--{name.replace('_', '-')} must be {'0 or more' if may_be_zero else '> 0'}, got {value}")


def settings_from_args(args, platform: str, torch_device: str | None) -> Settings:
    overrides = {}
    if args.networks:
        nets = tuple(n.strip() for n in args.networks.split(",") if n.strip())
        unknown = [n for n in nets if n not in NETWORKS]
        if unknown:
            raise UsageError(f"unknown network(s) {', '.join(unknown)}; choose from {', '.join(NETWORKS)}")
        overrides["networks"] = nets
    if args.batch_sizes:
        overrides["batch_sizes"] = args.batch_sizes
    elif not args.quick:
        overrides["batch_sizes"] = (512, 64, 4096) if platform != "cpu" else (512, 64, 2048)
    first = overrides.get("batch_sizes", (8,) if args.quick else (512,))[0]
    if not args.quick or args.batch_sizes:
        overrides["epoch_batch_sizes"] = args.epoch_batch_sizes or (first,)
        overrides["compile_batch_sizes"] = args.compile_batch_sizes or ((first,) if not args.quick else ())
    cuda = bool(torch_device and torch_device.startswith("cuda"))
    overrides["num_workers"] = args.num_workers if args.num_workers is not None else (4 if cuda else 0)
    overrides["pin_memory"] = cuda
    overrides["bf16"] = args.bf16 if args.bf16 is not None else platform != "cpu"
    overrides["torch"] = torch_device is not None
    if args.no_torch_compile:
        overrides["torch_compile"] = False
    for name in ("iters", "warmup", "max_s", "epoch_repeats", "pair_rounds", "train_size", "seeds", "conv_impl"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    overrides["budget_s"] = args.budget_s
    return quick_settings(**overrides) if args.quick else Settings(**overrides)


def pick_torch_device(args) -> tuple[str | None, str | None]:
    """(device, why not) — torch is optional: without it the JAX half still runs."""
    if args.no_torch:
        return None, "--no-torch"
    try:
        import torch
    except Exception as e:
        return None, f"torch not importable: {e}"
    if args.torch_device:
        try:
            kind = torch.device(args.torch_device).type
        except RuntimeError:
            raise UsageError(f"--torch-device {args.torch_device!r}: expected cpu or cuda[:N]") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--torch-device {args.torch_device}: torch sees no CUDA device here")
        return args.torch_device, None
    return ("cuda" if torch.cuda.is_available() else "cpu"), None


def default_out(env: dict, quick: bool, what: str = "") -> Path:
    if env["platform"] == "cpu":
        name = f"cpu-{environment.slug(env['cpu'].get('model') or 'cpu')}-{env['cpu']['cores']}c"
    else:
        name = f"gpu-{environment.slug(env['device_kind'])}"  # 'gpu' whatever jax calls the platform
    if quick:
        return ROOT / "runs" / "bench" / f"quick-{name}.json"
    return ROOT / "benchmarks" / f"{what}{name}.json"


def _interrupt(signum, frame):
    """`timeout` and schedulers send SIGTERM: finish as on Ctrl-C, with the partial results written and printed."""
    raise KeyboardInterrupt


def run_profile(args, env: dict, torch_device: str | None) -> int:
    """--profile-cnn: the per-op table of the cnn train step, printed and written as JSON."""
    out = Path(args.out) if args.out else default_out(env, False, f"profile-cnn-{args.profile_cnn}-")
    print(
        f"profile of the cnn train step at batch {args.profile_cnn} on {env['platform']}:{env['device_kind']}"
        f" (load average {', '.join(f'{x:.2f}' for x in os.getloadavg())})",
        flush=True,
    )
    rows = profile.profile_cnn(args.profile_cnn, rounds=args.iters or 15, with_torch=torch_device is not None)
    doc = {
        "format": plan.FORMAT_VERSION,
        "env": env,
        "profile_cnn": {"batch_size": args.profile_cnn, "rows": rows},
        "load_avg_end": os.getloadavg(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    runlog.atomic_write(out, json.dumps(doc, indent=1, default=str).encode())
    print(report.profile_report(rows), end="")
    print(f"wrote {out}")
    return 0


def run_benchmark(args, argv: list[str], env: dict, torch_device: str | None) -> int:
    """The plan of measurements under the budget; the JSON is rewritten after each, the tables printed at the end."""
    settings = settings_from_args(args, env["platform"], torch_device)
    peak = environment.device_peak(env["platform"], env["device_kind"])
    data = data_lib.load(
        "mnist",
        args.data_dir,
        network=not args.offline,
        progress=False,
        log=lambda m: print(f"[data] {m}", file=sys.stderr),
    )
    out = Path(args.out) if args.out else default_out(env, settings.quick)
    doc = plan.new_doc(settings, env, peak, argv=argv)
    doc["data_source"] = data.source
    if args.resume:
        kept, why_not = plan.earlier_results(out, doc)
        doc["results"] = kept
        print(f"--resume: kept {len(kept)} measurements of {out}" if kept else f"--resume: nothing kept: {why_not}")
    runner = plan.Runner(doc, out, settings.budget_s, log=lambda m: print(m, flush=True), t0=T_START)
    items = plan.build_plan(settings, data, peak, torch_device if settings.torch else None, doc)
    if args.dry_run:
        for item in items:
            kept = plan.kept(doc, item.kind, item.network, item.batch_size) is not None
            print(
                f"  tier {plan.priority(item.kind, item.network, item.batch_size, settings)}  {item.kind:22s} "
                f"{item.network:9s} batch {item.batch_size:5d}  "
                + ("kept" if kept else f"prior ~{runner.estimate(item):.0f} s")
            )
        return 0
    print(
        f"{len(items)} measurements on {env['platform']}:{env['device_kind']}, torch on {torch_device}; "
        f"budget {settings.budget_s or 'none'} s; writing {out}",
        flush=True,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    interrupted = False
    try:
        for item in items:
            runner.run(item)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: writing partial results", file=sys.stderr)
    runner.save(finished=not interrupted)
    print()
    print(report.report(doc), end="")
    print(f"\nwrote {out}")
    return 130 if interrupted else 0


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_numbers(args)
    if args.table:
        try:
            doc = json.loads(Path(args.table).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read --table {args.table}: {e}") from None
        if not (isinstance(doc, dict) and {"env", "settings", "results"} <= doc.keys()):
            raise UsageError(f"--table {args.table} is not a result file of scripts/bench.py")
        print(report.report(doc), end="")
        return 0
    torch_device, no_torch = pick_torch_device(args)
    env = environment.environment(torch_device)
    if no_torch:
        env["torch"] = {"skipped": no_torch}
    if args.profile_cnn:
        return run_profile(args, env, torch_device)
    return run_benchmark(args, sys.argv[1:] if argv is None else argv, env, torch_device)


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv), user_errors=(data_lib.DataError,))


if __name__ == "__main__":
    sys.exit(main())
