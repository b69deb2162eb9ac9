"""What a resumed run may change of the settings its checkpoint was made with, in both trainers (jaxmnist.resume,
torch_ref.resume): the checks that refuse the rest in one line, and the settings the continued run trains with."""

from __future__ import annotations

import dataclasses
import json

from jaxmnist.cli import UsageError
from jaxmnist.presets import Config


def _as_stored(saved: dict, config: Config) -> tuple[dict, dict]:
    """`saved` (a config as a checkpoint stored it) and `config`, both as JSON holds them: a checkpoint's JSON gives
    a tuple field (blog_best) back as a list, the same setting. A field the saved config lacks was added since, and
    it ran at that field's default (e.g. `scale`, 0)."""
    added = {f.name: f.default for f in dataclasses.fields(Config) if f.name not in saved}
    return tuple(json.loads(json.dumps(d)) for d in ({**added, **saved}, dataclasses.asdict(config)))


def changed_settings(saved: dict, config: Config) -> list[str]:
    """The fields in which `config` differs from `saved`, a config as a checkpoint stored it (`_as_stored`)."""
    saved, current = _as_stored(saved, config)
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))


# What a resumed run may change, in both trainers: a lower learning rate after a divergence, more epochs, how often
# it evaluates. Unless given on the command line, a resumed run keeps its checkpoint's (`continued`).
RESUMABLE_CHANGES = ("lr", "epochs", "evals_per_epoch")
# What a preset records of the blog's run, not how a run trains: never a reason to refuse a resume.
BLOG_RECORD = ("blog_result", "blog_epoch_s", "blog_best")


def continued(saved: dict, config: Config, given: frozenset[str] | None, workdir, done: int) -> Config:
    """The settings a resumed run trains with: `config`, except that those a resumed run may change
    (RESUMABLE_CHANGES) keep the checkpoint's values (`saved`, after `done` epochs) unless `given` names them, so
    that a run resumed once with `--lr 0.01` goes on at 0.01 when resumed again without it. `given`: the fields the
    command line set (`given_settings`); None takes `config` whole (a library caller's). Then `resumable`'s checks."""
    if given is not None:
        stored, _ = _as_stored(saved, config)  # a field added since the checkpoint: the default it ran at
        config = config.replace(**{k: stored[k] for k in RESUMABLE_CHANGES if k not in given})
    resumable(saved, config, workdir, done)
    return config


def resumable(saved: dict, config: Config, workdir, done: int) -> None:
    """Checks the settings a resumed run changes against its checkpoint's (`saved`, after `done` epochs): a usage
    error naming any but RESUMABLE_CHANGES, with the checkpoint's value and this run's (BLOG_RECORD's train nothing),
    for fewer epochs than are done (the run would train nothing and report the checkpoint's epochs as its own), and
    for more or fewer epochs under the one-cycle schedule, which spans the steps of the epochs it began with."""
    changed = changed_settings(saved, config)
    if refused := [k for k in changed if k not in RESUMABLE_CHANGES + BLOG_RECORD]:
        stored, current = _as_stored(saved, config)
        differences = ", ".join(f"{k} {stored.get(k)} (here {current.get(k)})" for k in refused)
        raise UsageError(f"checkpoint in {workdir} was made with different settings: {differences}")
    if config.epochs < done:
        raise UsageError(f"--epochs {config.epochs}: the run in {workdir} has trained {done} epochs already")
    if "epochs" in changed and config.schedule == "onecycle":
        raise UsageError(
            f"--epochs {config.epochs}: the run in {workdir} follows a one-cycle schedule over its "
            f"{saved['epochs']} epochs, which a resumed run cannot stretch; train longer in a new run"
        )


def new_lr_line(saved: dict, config: Config) -> str:
    """What a resumed run says when --lr changed its checkpoint's learning rate."""
    return f"learning rate {saved['lr']:g} -> {config.lr:g} (--lr)"


def nothing_to_train(workdir, epochs: int) -> str:
    """What a resumed run says when its checkpoint has trained all its epochs (both trainers): it trains nothing
    and leaves its logs and report as they were."""
    return (f"the run in {workdir} has trained all its {epochs} epochs: nothing to train (--epochs trains it on, "
            "except under the one-cycle schedule)")  # fmt: skip
