"""Train one of the blog's networks: the command line (jaxmnist.trainer runs the loop).

    python -m jaxmnist.train --model resnet            # the blog's ResNet preset (or: jaxmnist-train ...)
    python -m jaxmnist.train --preset cnn_cpu --epochs 3
    python -m jaxmnist.train --preset cnn_tb --seeds 8          # 8 seeds: vmapped on a GPU, in turn on a CPU
    python -m jaxmnist.train --help

Why it is fast: the uint8 dataset is put on the device once; every program the run needs is compiled before
the first epoch (the time is reported apart; compiled programs are cached on disk for the next run); an epoch
runs as a few chunks of steps with the state donated, and the host queues chunk k+1 before it waits on chunk k's
per-batch metrics, so there is no host sync per step. After the first epoch nothing compiles again (counted,
and reported).
"""

from __future__ import annotations

import os
import sys

import jax

from jaxmnist import cli, compile_cache, convs, distributed, interop, weights
from jaxmnist import data as data_lib
from jaxmnist.cli import UsageError
from jaxmnist.distributed import Placement
from jaxmnist.presets import config_from_args, given_settings, trainer_parser
from jaxmnist.seeds import SEED_MODES, parse_seeds
from jaxmnist.trainer import train_and_evaluate, train_seeds  # the library's entry points, re-exported

__all__ = ["build_parser", "main", "train_and_evaluate", "train_seeds"]


def build_parser() -> cli.ArgumentParser:
    p = trainer_parser("python -m jaxmnist.train", "Train one of the blog's networks on MNIST with JAX/Flax.")
    p.add_argument("--logdir", help="TensorBoard events, metrics.json, curves.png (default runs/<preset>, "
                   "or runs/<preset>-2, ... where that holds an earlier run's)")
    p.add_argument("--workdir", help="checkpoints (latest and best, every epoch)")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --workdir")
    p.add_argument(
        "--seeds",
        help="train several seeds: a count (8: seeds 0-7), a range (0-7) or a list (0,3,5); each logs to "
        "LOGDIR/seed<k>, and a mean ± std line and LOGDIR/seeds.json end the run",
    )
    p.add_argument(
        "--seed-mode",
        default="auto",
        choices=SEED_MODES,
        help="--seeds in one vmapped program, or one after another; auto: vmapped on a GPU or TPU, one after "
        "another on the CPU (where vmapped convolutions are slower)",
    )
    p.add_argument(
        "--devices",
        type=int,
        help="data parallel over this many devices (default: all, or as many as split the batch evenly)",
    )
    weights.add_torch_flag(
        p,
        "start from a PyTorch state_dict of the preset's network (the blog's classes; loaded strictly, converted "
        "exactly) instead of a fresh initialisation",
    )
    convs.add_flag(p, ". A resumed run keeps its own")
    p.add_argument(
        "--chunk-steps",
        type=int,
        help="training steps per compiled program (default: 8 unrolled steps on the CPU, an eighth of the epoch as "
        "a scan elsewhere); 1 compiles fastest, for short runs",
    )
    compile_cache.add_flag(p)
    p.add_argument("--coordinator", help="jax.distributed: host:port of process 0 (or JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=int, help="jax.distributed: how many processes (or JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, help="jax.distributed: this process, from 0 (or JAX_PROCESS_ID)")
    return p


def _main(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    if args.torch_state_dict and args.resume:  # before the file is read
        raise cli.init_or_resume()
    preset, config = config_from_args(args)
    if args.seeds is not None and args.seed is not None:
        raise UsageError("give --seed or --seeds, not both")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else (config.seed,)
    if args.chunk_steps is not None and args.chunk_steps < 1:
        raise UsageError(f"--chunk-steps must be >= 1, got {args.chunk_steps}")
    compile_cache.configure(args.no_compile_cache)
    # Before anything touches a device (reading a state_dict does): jax.distributed must come first.
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    state_dict = args.torch_state_dict
    init = (
        interop.load_torch(state_dict, config.model, "--torch-state-dict", config.num_classes) if state_dict else None
    )
    placement = Placement.over(args.devices, config.batch_size)
    main_process = distributed.is_main()  # the others train as silently as they can
    if main_process and args.devices is None and placement.size < jax.device_count():
        print(
            f"using {placement.size} of {jax.device_count()} devices: batch {config.batch_size} splits evenly only so"
        )
    cli.stop_on_sigterm()
    with cli.resume_hint(args.workdir):
        train_seeds(
            config,
            seeds,
            args.seed_mode,
            preset=preset,
            data_dir=args.data_dir,
            logdir=(args.logdir or cli.default_logdir(preset)) if main_process else None,
            workdir=args.workdir,
            resume=args.resume,
            given=given_settings(args),
            progress=not args.no_progress and main_process,
            placement=placement,
            init=init,
            report=not args.no_report,
            conv_impl=args.conv_impl,
            chunk_steps=args.chunk_steps,
            out=None if main_process else open(os.devnull, "w"),
        )


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv), user_errors=(data_lib.DataError,))


if __name__ == "__main__":
    sys.exit(main())
