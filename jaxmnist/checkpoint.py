"""Checkpoints of a training run: the train state (orbax) with the host's state beside it (JSON)."""

from __future__ import annotations

import os
from pathlib import Path

from jaxmnist import engine
from jaxmnist.cli import UsageError


class Checkpointer:
    """orbax checkpoints of the train state plus host-side state (JSON): `latest` every epoch, `best` on a new
    best test accuracy, one of each kept. orbax writes to a temporary directory and renames: atomic."""

    def __init__(self, workdir: str | os.PathLike):
        import orbax.checkpoint as ocp

        self.ocp, self.workdir = ocp, workdir
        root = Path(workdir).absolute()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create --workdir {root}: {e.strerror}") from None
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
        self.latest = ocp.CheckpointManager(root / "latest", options=options)
        self.best = ocp.CheckpointManager(root / "best", options=options)
        self.best_acc = self._best_so_far()

    def _best_so_far(self) -> float:
        step = self.best.latest_step()
        if step is None:
            return -1.0
        meta = self.best.restore(step, args=self.ocp.args.Composite(meta=self.ocp.args.JsonRestore()))["meta"]
        return meta["test_acc"]

    def _args(self, state, meta):
        arrays = {k: v for k, v in state.__dict__.items() if k not in ("apply_fn", "tx")}
        return self.ocp.args.Composite(state=self.ocp.args.StandardSave(arrays), meta=self.ocp.args.JsonSave(meta))

    def save(self, state: engine.TrainState, epoch: int, test_acc: float, meta: dict) -> None:
        meta = {**meta, "test_acc": test_acc}
        self.latest.save(epoch, args=self._args(state, meta))
        if test_acc > self.best_acc:
            self.best.save(epoch, args=self._args(state, meta))
            self.best_acc = test_acc

    def restore_latest(self, like: engine.TrainState):
        step = self.latest.latest_step()
        if step is None:
            return None
        target = {k: v for k, v in like.__dict__.items() if k not in ("apply_fn", "tx")}
        out = self.latest.restore(
            step,
            args=self.ocp.args.Composite(state=self.ocp.args.StandardRestore(target), meta=self.ocp.args.JsonRestore()),
        )
        return like.replace(**out["state"]), out["meta"]

    def close(self) -> None:
        self.latest.close()
        self.best.close()
