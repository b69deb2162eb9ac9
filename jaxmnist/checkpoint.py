"""Checkpoints of a training run: the train state (orbax) with the host's state beside it (JSON), verified.

WORKDIR/latest keeps the last two epochs, WORKDIR/best the best test accuracy so far. orbax writes a step to a
temporary directory and renames it; then a manifest of the sha256 of every file it wrote (arrays included) is
written beside them, atomically, with Ctrl-C and SIGTERM held off until both are done. A step whose files do
not match its manifest, or that has none (a kill between the rename and the manifest), is damaged: it is moved
to WORKDIR/damaged/ and reported in one line, and the run resumes from the newest intact step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import jax
import numpy as np

from jaxmnist import cli, engine
from jaxmnist.cli import UsageError

MANIFEST = "jaxmnist-sha256.json"
KEEP_LATEST = 2  # a damaged last epoch still leaves the one before


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(step_dir: Path) -> None:
    digests = {str(p.relative_to(step_dir)): _sha256(p) for p in _files(step_dir)}
    tmp = step_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(digests, indent=0, sort_keys=True))
    os.replace(tmp, step_dir / MANIFEST)


def damage(step_dir: Path) -> str | None:
    """What is wrong with a step directory (one phrase), or None if every file is as it was written."""
    try:
        expected = json.loads((step_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return "no checksum manifest (killed while saving, or written by an older jaxmnist)"
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({type(e).__name__})"
    found = {str(p.relative_to(step_dir)): p for p in _files(step_dir)}
    for name, digest in sorted(expected.items()):
        if name not in found:
            return f"{name} is missing"
        if _sha256(found[name]) != digest:
            return f"{name} does not match its checksum"
    extra = sorted(set(found) - set(expected))
    return f"unexpected file {extra[0]}" if extra else None


def saved_epoch(workdir: str | os.PathLike) -> int | None:
    """The newest epoch checkpointed in `workdir` (WORKDIR/latest or /best, intact or not), from the directory
    names alone; None when it holds none."""
    root = Path(workdir)
    kinds = [root / kind for kind in ("latest", "best") if (root / kind).is_dir()]
    return max((int(p.name) for k in kinds for p in k.iterdir() if p.is_dir() and p.name.isdigit()), default=None)


# torch_ref's checkpoint (torch_ref.resume.FILE; jaxmnist imports no torch): a workdir of the other trainer.
TORCH_REF_FILE = "checkpoint.pt"


def holds_torch_ref_checkpoint(workdir: str | os.PathLike) -> bool:
    return (Path(workdir) / TORCH_REF_FILE).exists()


def holds_checkpoint(workdir: str | os.PathLike) -> bool:
    """Whether `workdir` holds a jaxmnist checkpoint: one run's or vmapped seeds' (saved_epoch), or sequential
    seeds' in seed<k>/ (torch_ref refuses such a workdir)."""
    root = Path(workdir)
    return saved_epoch(root) is not None or any(saved_epoch(d) is not None for d in root.glob("seed*"))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _placed_like(target, restored):
    """A restored leaf placed as its target was. orbax commits every array it restores to its target's devices;
    a target left uncommitted (one device, no mesh) gets an uncommitted copy, or every program of the resumed run
    would lower with sharding annotations that a fresh run's lack: other programs, compiled again on every resume
    instead of read from the compile cache."""
    if isinstance(target, jax.Array) and not target.committed and restored.committed:
        return jax.device_put(np.asarray(restored))
    return restored


class Checkpointer:
    """The run's checkpoints in `workdir`; damaged steps found on opening are set aside (see `damaged`).
    `read_only` (predict, evaluate, export) writes nothing: a damaged newest step is refused instead."""

    def __init__(self, workdir: str | os.PathLike, read_only: bool = False):
        import orbax.checkpoint as ocp

        self.ocp, self.workdir, self.read_only = ocp, workdir, read_only
        self.root = Path(workdir).absolute()
        if not read_only:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                probe = self.root / f".write-test-{jax.process_index()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as e:
                raise cli.unwritable("--workdir", workdir, e) from None
        # With several processes (one shared workdir), process 0 alone sets damaged steps aside and writes
        # manifests; orbax itself saves and restores the multi-host way (every process its shards).
        self.main = jax.process_index() == 0
        self.damaged = (
            [note for kind in ("latest", "best") for note in self._set_aside_damaged(kind)]
            if self.main and not read_only
            else []
        )
        _barrier("jaxmnist-checkpoint-open")

        def manager(kind, keep):
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
                create=not read_only, read_only=read_only, enable_async_checkpointing=False
            )  # fmt: skip
            # A read-only manager also warns that its directory is read-only: what predict and evaluate asked
            # for, on stderr before their own lines.
            absl = logging.getLogger("absl")
            level = absl.level
            if read_only:
                absl.setLevel(logging.ERROR)
            try:
                return ocp.CheckpointManager(self.root / kind, options=options)
            finally:
                absl.setLevel(level)

        self.latest, self.best = manager("latest", KEEP_LATEST), manager("best", 1)
        self.best_acc = None if read_only else self._best_so_far()  # only saving needs it

    def _set_aside_damaged(self, kind: str) -> list[str]:
        """Moves every damaged step of WORKDIR/<kind> to WORKDIR/damaged/; one line per step moved."""
        notes = []
        steps = self.root / kind
        for step_dir in sorted(steps.iterdir() if steps.is_dir() else (), key=lambda p: p.name):
            if not (step_dir.is_dir() and step_dir.name.isdigit()):
                continue
            problem = damage(step_dir)
            if problem is None:
                continue
            aside = self.root / "damaged" / f"{kind}-{step_dir.name}-{int(time.time())}"
            aside.parent.mkdir(exist_ok=True)
            os.replace(step_dir, aside)
            notes.append(f"checkpoint {step_dir} is damaged ({problem}); moved to {aside}")
        return notes

    def _best_so_far(self) -> float:
        meta = self.read_meta("best")
        return -1.0 if meta is None else meta["test_acc"]

    def _newest(self, kind: str):
        """(manager, newest step) of WORKDIR/<kind>; read-only, a damaged newest step is a one-line error."""
        manager = {"latest": self.latest, "best": self.best}[kind]
        step = manager.latest_step()
        if step is not None and self.read_only and (problem := damage(self.root / kind / str(step))):
            raise UsageError(
                f"the {kind} checkpoint in {self.workdir} (epoch {step}) is damaged: {problem}; "
                f"{'--which latest' if kind == 'best' else 'an earlier epoch'} may still be intact, or --resume "
                "training sets it aside"
            )
        return manager, step

    def read_meta(self, kind: str = "latest") -> dict | None:
        """The host-side JSON of the newest step of WORKDIR/<kind> (its config, epoch, ...), or None."""
        manager, step = self._newest(kind)
        if step is None:
            return None
        return manager.restore(step, args=self.ocp.args.Composite(meta=self.ocp.args.JsonRestore()))["meta"]

    def _save(self, manager, epoch: int, state, meta: dict) -> None:
        arrays = {k: v for k, v in state.__dict__.items() if k not in ("apply_fn", "tx")}
        args = self.ocp.args.Composite(state=self.ocp.args.StandardSave(arrays), meta=self.ocp.args.JsonSave(meta))
        if not manager.save(epoch, args=args):  # orbax skips a step at or below its newest one
            raise cli.RunError(f"epoch {epoch} was not saved in {self.workdir}: it holds a later epoch")
        if self.main:
            write_manifest(Path(manager.directory) / str(epoch))
        _barrier(f"jaxmnist-checkpoint-{epoch}")

    def save(self, state: engine.TrainState, epoch: int, test_acc: float, meta: dict) -> None:
        """`latest` every epoch, `best` on a new best test accuracy; a Ctrl-C or SIGTERM waits until both are
        written."""
        meta = {**meta, "test_acc": test_acc}
        with cli.deferred_signals():
            self._save(self.latest, epoch, state, meta)
            if test_acc > self.best_acc:
                self._save(self.best, epoch, state, meta)
                self.best_acc = test_acc

    def latest_epoch(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, like: engine.TrainState):
        """(state, meta) of the newest intact step, or None when there is none."""
        return self.restore(like, "latest")

    def restore(self, like: engine.TrainState, kind: str = "latest"):
        """(state, meta) of the newest intact step of WORKDIR/<kind> ('latest' or 'best'), or None."""
        manager, step = self._newest(kind)
        if step is None:
            return None
        target = {k: v for k, v in like.__dict__.items() if k not in ("apply_fn", "tx")}
        out = manager.restore(
            step,
            args=self.ocp.args.Composite(state=self.ocp.args.StandardRestore(target), meta=self.ocp.args.JsonRestore()),
        )
        return like.replace(**jax.tree.map(_placed_like, target, out["state"])), out["meta"]

    def close(self) -> None:
        self.latest.close()
        self.best.close()
