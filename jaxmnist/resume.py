"""A run's checkpoints and what they keep of the host: each seed's plateau rule and run log, the settings and
the convolution plan, so that `--resume` continues a killed run bit for bit, or refuses in one line."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from jaxmnist import autotune, cli, models, optim, runlog
from jaxmnist.checkpoint import Checkpointer, saved_epoch
from jaxmnist.cli import Diverged, UsageError
from jaxmnist.continuation import continued, new_lr_line
from jaxmnist.convs import ConvPlan
from jaxmnist.distributed import Placement
from jaxmnist.presets import Config
from jaxmnist.seeds import Seeds


@dataclasses.dataclass
class SeedRun:
    """One seed's host side: its plateau rule (stepped on its own accuracy) and its report (lines, logs)."""

    seed: int
    plateau: optim.ReduceLROnPlateau
    report: runlog.Report


def host_meta(runs: list[SeedRun], seeds: Seeds) -> dict:
    """What a checkpoint keeps of the host side: each seed's plateau rule and run log (one seed: unlisted)."""
    plateau = [r.plateau.state_dict() for r in runs]
    record = [r.report.log.record if r.report.log else None for r in runs]
    if not seeds.vmapped:
        return {"plateau": plateau[0], "record": record[0]}
    return {"seeds": list(seeds.seeds), "plateau": plateau, "record": record}


def continued_config(meta: dict | None, config: Config, seeds: Seeds, given: frozenset[str] | None, workdir) -> Config:
    """The settings the resumed run trains with (continuation.continued: those given on the command line, else the
    checkpoint's, from its `meta`, Checkpointer.read_meta's); a usage error for settings it may not change. Read
    before anything is built from them: arrays of another network or optimiser would not restore. `config` itself
    where there is no intact checkpoint (`meta` None)."""
    if meta is None:
        return config
    if (saved := meta.get("seeds", [config.seed])) != list(seeds.seeds):
        raise UsageError(f"checkpoint in {workdir} was made with different settings: seeds {saved} "
                         f"(here {list(seeds.seeds)})")  # fmt: skip
    return continued(meta["config"], config, given, workdir, meta["epoch"])


def continued_base(config: Config, workdirs: list, seeds: tuple[int, ...], given: frozenset[str] | None) -> Config:
    """Sequential seeds resumed: the settings of the first seed that has a checkpoint (continued_config), for the
    seeds that have none yet, so that no seed trains with other settings than the rest. Each seed with a checkpoint
    then continues its own."""
    for workdir, seed in zip(workdirs, seeds):
        if saved_epoch(workdir) is not None:
            ckpt = Checkpointer(workdir)
            try:
                adopted = continued_config(ckpt.read_meta(), config.replace(seed=seed), Seeds((seed,)), given, workdir)
                return adopted.replace(seed=config.seed)
            finally:
                ckpt.close()
    return config


def resume_from(ckpt: Checkpointer, state, config: Config, runs: list[SeedRun], seeds: Seeds, say: Callable):
    """(state, epochs done) from the newest intact checkpoint, with each seed's plateau rule and run log
    restored; (state, 0) when there is none. `config`: continued_config's; with a new --lr, training continues at
    it."""
    restored = ckpt.restore_latest(state)  # its settings were checked by continued_config, before state was built
    if restored is None:
        if ckpt.damaged:
            raise cli.RunError(f"no intact checkpoint is left in {ckpt.workdir}; remove it to start over")
        say(f"no checkpoint in {ckpt.workdir}: starting from scratch")
        return state, 0
    state, meta = restored
    listed = (lambda x: x) if seeds.vmapped else (lambda x: [x])
    for run, plateau, record in zip(runs, listed(meta["plateau"]), listed(meta.get("record"))):
        run.plateau.load_state_dict(plateau)
        if run.report.log and record:
            run.report.log.record = record
    say(f"resumed from {ckpt.workdir} after epoch {meta['epoch']}")
    if config.lr != meta["config"]["lr"]:  # a new --lr (continuation.RESUMABLE_CHANGES), as torch_ref's restore
        say(new_lr_line(meta["config"], config))
        for run in runs:
            run.plateau.lr = config.lr
        state = state.replace(lr=seeds.array([config.lr] * len(runs), jnp.float32))
    return state, meta["epoch"]


def diverged_error(e: Diverged, ckpt: Checkpointer | None) -> cli.RunError:
    """The one line a divergence ends the run with (cli.diverged)."""
    return cli.diverged(e, ckpt.workdir if ckpt else None, ckpt.latest_epoch() if ckpt else None)


def save(ckpt: Checkpointer, state, config: Config, epoch: int, test_acc: float, meta: dict) -> None:
    """The epoch's checkpoint; `test_acc` (the mean over vmapped seeds) decides whether it is the best."""
    ckpt.save(state, epoch + 1, test_acc, {"config": dataclasses.asdict(config), "epoch": epoch + 1, **meta})


def choose_conv_plan(
    config: Config, impl: str | None, meta: dict | None, placement: Placement, say: Callable
) -> ConvPlan:
    """How the run's convolutions run: a resumed run's as its checkpoint recorded them in its `meta` (so that it
    continues bit for bit), else `--conv-impl` (`autotune.plan_for`: on the CPU `auto` times the candidates once per
    machine)."""
    if meta and "conv_plan" in meta:
        why = "the run being resumed ran convolutions on oneDNN, and continuing it bit for bit needs them: "
        return ConvPlan.from_json(meta["conv_plan"]).require_runnable(why)
    model = models.get_model(config.model, num_classes=config.num_classes)
    return autotune.plan_for(impl, model, config.batch_size // placement.size, say)
