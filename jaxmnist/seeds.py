"""Several seeds of one experiment: which seeds (`--seeds`), how they train (vmapped in one program or one after
another), their states stacked on a leading axis, and the mean ± std line that ends the run."""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import convs, engine
from jaxmnist.cli import UsageError
from jaxmnist.convs import ConvPlan
from jaxmnist.presets import MAX_SEED, Config

SEED_MODES = ("auto", "vmap", "sequential")


@dataclasses.dataclass(frozen=True)
class Seeds:
    """The seeds one program trains: one alone (`vmapped=False`), or several whose states are stacked on a
    leading axis and vmapped through the chunk, the step and the evaluation."""

    seeds: tuple[int, ...]
    vmapped: bool = False

    def __post_init__(self):
        if not self.vmapped and len(self.seeds) != 1:
            raise ValueError("several seeds in one program must be vmapped")

    def map(self, fn: Callable, in_axes) -> Callable:
        """`fn` over the stack (the axis 0 of the arguments `in_axes` marks 0), or `fn` itself for one seed."""
        return jax.vmap(fn, in_axes=in_axes) if self.vmapped else fn

    def array(self, values, dtype=None) -> jax.Array:
        """Per-seed values (as many as seeds) as the program takes them: stacked, or the one value."""
        return jnp.asarray(values if self.vmapped else values[0], dtype)

    def take(self, tree, i: int):
        """Seed i's part of a host or device tree the program returned."""
        return jax.tree.map(lambda x: x[i], tree) if self.vmapped else tree

    def create_state(
        self, config: Config, total_steps: int, variables: dict | None = None, conv_plan: ConvPlan = convs.XLA
    ) -> engine.TrainState:
        """Each seed's fresh state (its own initialisation and keys), stacked when vmapped: vmap draws every
        seed's initial weights exactly as the seed alone would. `variables` (e.g. from --torch-state-dict) replace
        the initialisation, the same for every seed."""
        keys = jnp.stack([jax.random.PRNGKey(s) for s in self.seeds])
        create = functools.partial(
            engine.create_state, config, variables=variables, total_steps=total_steps, conv_plan=conv_plan
        )
        return jax.vmap(create)(keys) if self.vmapped else create(keys[0])


MAX_SEEDS = 10_000  # a count or range beyond this is a typo, not a study


def seed_list(text: str) -> tuple[int, ...] | None:
    """'3-5' -> (3, 4, 5); '0,4,9' -> those; None for any other text, and for a list that repeats a seed or an
    empty range. Both --seeds (training) and --seed (picking trained seeds) take these forms."""
    if re.fullmatch(r"\d+(,\d+)+", text):
        seeds = tuple(int(t) for t in text.split(","))
    elif (m := re.fullmatch(r"(\d+)-(\d+)", text)) and int(m[2]) - int(m[1]) < MAX_SEEDS:
        seeds = tuple(range(int(m[1]), int(m[2]) + 1))
    else:
        return None
    return seeds if seeds and len(set(seeds)) == len(seeds) <= MAX_SEEDS and max(seeds) <= MAX_SEED else None


def parse_seeds(text: str) -> tuple[int, ...]:
    """--seeds: '8' -> seeds 0..7; '3-5' -> 3, 4, 5; '0,4,9' -> those."""
    count = int(text) if re.fullmatch(r"\d+", text) and int(text) <= MAX_SEEDS else 0
    seeds = seed_list(text) or tuple(range(count))
    if not seeds:
        raise UsageError(f"--seeds {text!r}: expected a count (8), a range (0-7) or distinct seeds (0,3,5), "
                         f"at most {MAX_SEEDS} of them, in [0, {MAX_SEED}]")  # fmt: skip
    return seeds


def choose_seed_mode(mode: str, config: Config, n: int) -> tuple[str, str]:
    """(mode, why): how to train n seeds. 'auto' vmaps them on accelerators and runs them one after another on
    the CPU, where vmapped convolutions become grouped ones and run slower than the seeds in turn
    (benchmarks/README.md)."""
    if mode not in SEED_MODES:
        raise UsageError(f"--seed-mode {mode!r}: choose from {', '.join(SEED_MODES)}")
    if n == 1:
        return "sequential", "one seed"
    if config.val_size and mode == "vmap":
        raise UsageError("--seed-mode vmap cannot hold out --val-size: each seed holds out its own validation images")
    if mode != "auto":
        return mode, f"--seed-mode {mode}"
    if config.val_size:
        return "sequential", "each seed holds out its own --val-size images"
    if jax.default_backend() == "cpu":
        return "sequential", "vmapped convolutions are slower than sequential ones on the CPU"
    return "vmap", f"vmapped on {jax.default_backend()}"


def seeds_summary(records: list[dict], seeds, mode: str, wall_s: float) -> dict:
    """Mean ± std of the final and best test accuracy over the seeds' run records, and the wall time per seed."""
    final = [r.get("final_acc") for r in records]
    best = [r.get("best_acc") for r in records]
    stats = lambda xs: {"mean": float(np.mean(xs)), "std": float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0}  # noqa: E731
    summary = {"seeds": list(seeds), "mode": mode, "wall_s": wall_s, "wall_s_per_seed": wall_s / len(seeds)}
    if None not in final:
        summary.update(final_acc={**stats(final), "each": final}, best_acc={**stats(best), "each": best})
    acc = (
        f"final {summary['final_acc']['mean']:.2f} ± {summary['final_acc']['std']:.2f} %, " if None not in final else ""
    )
    summary["line"] = f"{len(seeds)} seed(s), {mode}: {acc}{wall_s:.1f} s in all, {wall_s / len(seeds):.1f} s per seed"
    return summary
