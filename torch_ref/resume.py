"""torch_ref's checkpoint: everything an epoch leaves behind, so that `--resume` continues a stopped run bit for bit.

WORKDIR/checkpoint.pt holds the model, the optimiser, both schedules, the weight average, the random streams
(torch's global generator draws the DataLoader's shuffle, the augmentation and the dropout) and the run log's
record. It is written after every epoch to a temporary file and renamed, so a kill leaves the previous epoch's
intact. jaxmnist's checkpoints (jaxmnist.checkpoint) are the JAX side's counterpart.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from jaxmnist import cli
from jaxmnist.cli import UsageError
from jaxmnist.continuation import continued, new_lr_line
from jaxmnist.presets import Config
from torch_ref.optim import set_lr

FILE = "checkpoint.pt"


def path(workdir: str | os.PathLike) -> Path:
    return Path(workdir) / FILE


def _state_dicts(parts: dict) -> dict:
    return {name: part.state_dict() for name, part in parts.items() if part is not None}


def save(workdir, epoch: int, config, parts: dict, record: dict | None, num_workers: int = 0) -> None:
    """The state after `epoch` epochs: `parts` (name -> model, optimiser, scheduler or None), the random streams,
    `record` (the run log's) and the DataLoader's `num_workers` (which decides the augmentation's random streams),
    written atomically."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    state = {
        "epoch": epoch,
        "config": dataclasses.asdict(config),
        "parts": _state_dicts(parts),
        "rng": torch.get_rng_state(),
        # Only where the run made a CUDA context: a CPU run on a GPU machine would otherwise start one on every GPU.
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "record": record,
        "num_workers": num_workers,
    }
    target = path(workdir)
    tmp = target.with_name(f".{FILE}.tmp")
    with cli.deferred_signals():  # a Ctrl-C or SIGTERM waits for the epoch's checkpoint, as jaxmnist's does
        torch.save(state, tmp)
        os.replace(tmp, target)


def saved_epoch(workdir) -> int | None:
    """The epoch WORKDIR/checkpoint.pt was written after, or None where it cannot be read as a checkpoint."""
    try:
        state = torch.load(path(workdir), weights_only=True, map_location="cpu")
    except Exception:
        return None
    return state.get("epoch") if isinstance(state, dict) else None


def read(workdir, config, num_workers: int = 0, given: frozenset[str] | None = None) -> tuple[dict | None, Config]:
    """(WORKDIR/checkpoint.pt's contents, the settings the resumed run trains with: jaxmnist.continuation's, from
    `config`, the checkpoint's and the fields `given` on the command line), checked (one-line errors, before the
    run prints or builds anything); (None, config) when there is none."""
    target = path(workdir)
    if not target.exists():
        return None, config
    try:
        state = torch.load(target, weights_only=True, map_location="cpu")  # a GPU run's, on any machine
    except Exception as e:  # a damaged file: name it, never a traceback
        raise cli.RunError(f"cannot read {target} ({type(e).__name__}); remove it to start over") from None
    if not (isinstance(state, dict) and {"epoch", "config", "parts", "rng", "record"} <= state.keys()):
        raise cli.RunError(f"cannot read {target} (not a torch_ref checkpoint); remove it to start over")
    config = continued(state["config"], config, given, workdir, state["epoch"])
    if state.get("num_workers", 0) != num_workers:  # other workers draw other augmentations
        raise UsageError(f"--num-workers {num_workers}: the run in {workdir} loaded its batches with "
                         f"{state.get('num_workers', 0)}, which its random streams depend on")  # fmt: skip
    return state, config


def restore(state: dict | None, workdir, config, parts: dict, say) -> tuple[int, dict | None]:
    """(epochs done, the run log's record) from a checkpoint `read` returned, with `parts` and the random streams
    restored in place; (0, None) when there is none. With a new --lr (continuation.RESUMABLE_CHANGES), training continues
    at it, as jaxmnist's does."""
    if state is None:
        say(f"no checkpoint in {workdir}: starting from scratch")
        return 0, None
    missing = sorted(name for name, part in parts.items() if part is not None and name not in state["parts"])
    if missing:
        raise UsageError(f"checkpoint in {workdir} lacks {', '.join(missing)}: it was made with other settings")
    for name, part in parts.items():
        if part is not None:
            part.load_state_dict(state["parts"][name])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])  # (another machine's GPUs: their streams cannot continue)
    say(f"resumed from {workdir} after epoch {state['epoch']}")
    if config.lr != state["config"]["lr"]:
        say(new_lr_line(state["config"], config))
        set_lr(parts["optimizer"], parts.get("schedule"), config.lr)
    return state["epoch"], state["record"]
