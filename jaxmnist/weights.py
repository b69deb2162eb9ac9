"""A trained model, wherever its weights come from: a jaxmnist.train checkpoint (`--workdir`, `--which`,
`--seed`) or a PyTorch state_dict of one of the blog's networks (`--torch-state-dict FILE --model NAME`), and
its softmax over any uint8 digits. Several of them are an ensemble: their probabilities averaged, in one program
over the stacked weights. Every command that reads a trained model (predict, evaluate, serve, export) takes these
flags from `add_flags` and the model from `load`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import autotune, convs, engine, interop, models
from jaxmnist import data as data_lib
from jaxmnist.checkpoint import TORCH_REF_FILE, Checkpointer, holds_torch_ref_checkpoint
from jaxmnist.cli import UsageError
from jaxmnist.convs import ConvPlan
from jaxmnist.presets import Config
from jaxmnist.seeds import Seeds, seed_list

WHICH = ("best", "latest")


def _softmax(apply_fn, variables, images_u8):
    """[N, classes] softmax of `apply_fn` in eval mode over uint8 [N, 28, 28] digits."""
    logits = apply_fn(variables, data_lib.normalize(images_u8), train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def _mean_softmax(apply_fn, stacked, images_u8):
    """The mean softmax of the members whose variables are stacked on a leading axis. The members run in turn
    (`lax.map`): on a CPU, vmapping over weights turns the convolutions into grouped ones, which XLA runs slower
    than the members one after another (benchmarks/README.md)."""
    return jax.lax.map(lambda variables: _softmax(apply_fn, variables, images_u8), stacked).mean(0)


def softmax_program(plan: ConvPlan = convs.XLA, ensemble: bool = False):
    """The jitted softmax (`ensemble`: of stacked members, averaged), (apply_fn, variables, images) ->
    probabilities, compiled with the kernel library of `plan` as training compiles (jaxmnist.convs: on x86 CPUs
    XLA's default kernels are the slower ones)."""
    return _jitted(ensemble, tuple(sorted(plan.compiler_options.items())))


@functools.cache
def _jitted(ensemble: bool, options: tuple):
    return jax.jit(_mean_softmax if ensemble else _softmax, static_argnums=0, compiler_options=dict(options))


def probabilities(apply_fn, variables, images_u8: np.ndarray, program, batch_size: int = 1000) -> np.ndarray:
    """[N, classes] softmax of a model in eval mode over uint8 [N, 28, 28] digits, a batch at a time (compiled
    once per network and batch shape: `apply_fn` a models.Apply); `program`: the `softmax_program` of the network's
    plan."""
    parts = [program(apply_fn, variables, images_u8[i : i + batch_size]) for i in range(0, len(images_u8), batch_size)]
    return np.concatenate([np.asarray(p) for p in parts])


@dataclasses.dataclass
class Model:
    name: str  # the network
    variables: dict  # {'params', 'batch_stats'}: the weights evaluation uses
    source: str  # where they came from, for the first line
    num_classes: int | None = None  # the head, if the run set one (--num-classes)
    test_acc: float | None = None  # the checkpoint's test accuracy (%), where the run measured one
    conv_impl: str | None = None  # how its convolutions run (--conv-impl; None: $JAXMNIST_CONV_IMPL, else auto)
    ensemble: ClassVar[bool] = False

    @functools.cached_property
    def plan(self) -> ConvPlan:
        """This machine's plan for the network (`autotune.plan_for`; auto: measured once per machine, cached), chosen
        at the tuning batch size whatever the number of digits, so that every request shares it."""
        network = models.get_model(self.name, self.num_classes)
        return autotune.plan_for(self.conv_impl, network, autotune.TUNING_BATCH, say=_note)

    @functools.cached_property
    def module(self):
        return models.get_model(self.name, self.num_classes, conv_plan=self.plan)

    @property
    def program(self):
        """(apply_fn, variables, images) -> probabilities, jitted with the plan's compiler options."""
        return softmax_program(self.plan, self.ensemble)

    def probabilities(self, images_u8: np.ndarray) -> np.ndarray:
        """[N, classes] softmax of the network in eval mode, for uint8 [N, 28, 28] digits."""
        return probabilities(models.Apply(self.module), self.variables, images_u8, self.program)


def _note(message: str) -> None:
    """What choosing the plan says (timing the candidates, once per machine): on stderr, as stdout may be JSON."""
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Ensemble(Model):
    """Several trained models of one network: `variables` stacked on a leading axis, probabilities averaged."""

    members: int = 1
    ensemble: ClassVar[bool] = True

    @classmethod
    def of(cls, members: list[Model]) -> Model:
        """One model as it is; several as their ensemble (one network and one head, or a UsageError)."""
        if len(members) == 1:
            return members[0]
        kinds = {(m.name, m.num_classes) for m in members}
        if len(kinds) > 1:
            names = ", ".join(f"{m.source.split(' (')[0]} is {m.name}" for m in members)
            raise UsageError(f"an ensemble's members must be one network with one head: {names}")
        stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *[m.variables for m in members])
        source = f"an ensemble of {len(members)}: " + "; ".join(m.source for m in members)
        first = members[0]
        return cls(first.name, stacked, source, first.num_classes, conv_impl=first.conv_impl, members=len(members))


def initialised(name: str, seed: int = 0, num_classes: int | None = None) -> Model:
    """Freshly initialised weights of network `name` (for benchmarks and tests: a prediction's cost and shape do
    not depend on the values)."""
    variables = jax.device_get(engine.init_variables(models.get_model(name, num_classes), jax.random.PRNGKey(seed)))
    return Model(name, variables, f"{name} seed {seed}", num_classes)


def from_workdir(workdir: str, which: str = "best", seed: int | None = None) -> Model:
    """The weights of one jaxmnist.train checkpoint (the weight average, if the run kept one); of seeds trained
    together (vmapped), `seed` picks one."""
    return Ensemble.of(workdir_members(workdir, which, seed))


def workdir_members(workdir: str, which: str = "best", seed: int | tuple[int, ...] | str | None = None) -> list[Model]:
    """The models of a workdir: its checkpoint, one per seed of a vmapped stack (`seed` picks), or the seed<k>/
    runs of sequential seeds (`seed` picks). A single run's checkpoint takes no `seed` but its own (or 'all')."""
    root = Path(workdir)
    if not (root / which).is_dir():
        runs = {int(d.name[4:]): d for d in root.glob("seed*") if d.name[4:].isdigit() and (d / which).is_dir()}
        if not root.is_dir():
            raise UsageError(f"--workdir {workdir}: {'a file' if root.exists() else 'no such directory'}")
        if holds_torch_ref_checkpoint(root):
            raise UsageError(f"--workdir {workdir} holds torch_ref's checkpoint, not jaxmnist's: save its model's "
                             f"state_dict (torch.load('{root / TORCH_REF_FILE}')['parts']['model']) and give "
                             "--torch-state-dict FILE --model NAME")  # fmt: skip
        if not runs:
            raise UsageError(f"no {which} checkpoint in {workdir} (train with --workdir {workdir} first)")
        chosen = pick(seed, tuple(sorted(runs)), f"{workdir} holds seeds {_listed(runs)}, one run each")
        return [from_workdir(str(runs[k]), which) for k in chosen]
    ckpt = Checkpointer(workdir, read_only=True)
    meta = ckpt.read_meta(which)
    if meta is None:
        raise UsageError(f"no intact {which} checkpoint in {workdir}")
    config = saved_config(meta)
    seeds = tuple(meta.get("seeds") or (config.seed,))
    if len(seeds) == 1:  # a --seed that names another seed than the run's is refused, not ignored
        chosen = seeds if seed is None else pick(seed, seeds, f"{workdir} holds one run, of seed {seeds[0]}")
    else:
        chosen = pick(seed, seeds, f"{workdir} holds seeds {_listed(seeds)} trained together")
    stack = Seeds(seeds, vmapped=len(seeds) > 1)
    state, meta = ckpt.restore(restore_target(stack, config), which)
    ckpt.close()
    variables = jax.device_get(state.eval_variables())
    if len(seeds) == 1:
        where = f"{workdir} ({which}: epoch {meta['epoch']}, test accuracy {meta['test_acc']:.2f} %)"
        return [Model(config.model, variables, where, config.num_classes, meta.get("test_acc"))]
    mean = f"{which}: epoch {meta['epoch']}, its {len(seeds)} seeds' mean test accuracy {meta['test_acc']:.2f} %"
    return [
        Model(config.model, stack.take(variables, seeds.index(k)), f"{workdir} seed {k} ({mean})", config.num_classes)
        for k in chosen
    ]


def saved_config(meta: dict) -> Config:
    """The Config a checkpoint's host-side JSON records (fields added since take their defaults, removed ones are
    dropped)."""
    known = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in meta["config"].items() if k in known})


def restore_target(stack: Seeds, config: Config) -> engine.TrainState:
    """The shapes and dtypes of `stack`'s state for `config`, computing nothing (jax.eval_shape): what a checkpoint
    restores into. A fresh state to overwrite compiled about twenty programs at a command's start (the network's
    initialisation, the optimiser's zeros, the key splits): most of the time a vmapped workdir took to load."""
    shapes = engine.variable_shapes(models.get_model(config.model, config.num_classes))
    return jax.eval_shape(lambda v: stack.create_state(config, total_steps=1, variables=v), shapes)


def parse_seed(text: str | None) -> int | tuple[int, ...] | str | None:
    """--seed: '3' (one), '0,2,4' or '0-4' (several, an ensemble), 'all' (every seed), or None."""
    if text is None or text == "all":
        return text
    if re.fullmatch(r"\d+", text):
        return int(text)
    if seeds := seed_list(text):
        return seeds
    raise UsageError(f"--seed {text!r}: expected a seed (3), several distinct ones (0,2,4 or 0-4) or all")


def pick(seed, available: tuple[int, ...], what: str) -> tuple[int, ...]:
    """The seeds `seed` names among `available`; a UsageError naming `what` when it names none or one not there."""
    if seed is None:
        raise UsageError(f"{what}: pick one with --seed, or --seed all for their ensemble")
    wanted = available if seed == "all" else (seed,) if isinstance(seed, int) else tuple(seed)
    missing = [k for k in wanted if k not in available]
    if missing:
        raise UsageError(f"{what}: no seed {', '.join(map(str, missing))}; pick one with --seed, or --seed all")
    return wanted


def _listed(seeds) -> str:
    return ", ".join(map(str, sorted(seeds)))


def from_torch(path: str, name: str) -> Model:
    """A PyTorch state_dict of torch_ref's `name` (the blog's classes), loaded strictly and converted exactly."""
    return Model(name, interop.load_torch(path, name, "--torch-state-dict"), f"{path} (PyTorch {name})")


# ------------------------------------------------------------------------------------------ the flags
def add_flags(p, torch: bool = True, ensemble: bool = True, computes: bool = True) -> None:
    """The flags that name a trained model: a checkpoint (--workdir, --which, --seed) and, with `torch`, a
    PyTorch state_dict (--torch-state-dict, formerly --init-from, with --model). With `ensemble`, --workdir and
    --torch-state-dict repeat and --seed takes several seeds or `all`: the models named are an ensemble. With
    `computes` (a command that runs the model), --conv-impl."""
    many = {"action": "append"} if ensemble else {}
    p.add_argument("--workdir", **many, help="a jaxmnist.train --workdir: its checkpoint" + _again(ensemble))
    p.add_argument("--which", choices=WHICH, default="best", help="which checkpoint (default best)")
    if ensemble:
        p.add_argument("--seed", help="of seeds trained in one workdir (--seeds): one (3), several (0,2,4 or 0-4) "
                       "or all; several are an ensemble")  # fmt: skip
    else:
        p.add_argument("--seed", type=int, help="with seeds trained together (--seeds ... vmapped): which one")
    if torch:
        add_torch_flag(p, "a PyTorch state_dict of one of the blog's networks (with --model)" + _again(ensemble), many)
        p.add_argument("--model", choices=tuple(models.MODELS), help="the network of --torch-state-dict")
    if computes:
        convs.add_flag(p, " (chosen at batch 256 for inference)")


def _again(ensemble: bool) -> str:
    return "; repeat it for an ensemble (probabilities averaged)" if ensemble else ""


def add_torch_flag(p, help: str, extra: dict | None = None) -> None:
    """--torch-state-dict FILE.pth, every command's one name for a PyTorch state_dict (--init-from: an alias)."""
    p.add_argument("--torch-state-dict", "--init-from", dest="torch_state_dict", metavar="FILE.pth", help=help,
                   **(extra or {}))  # fmt: skip


def load(args) -> Model:
    """The model the flags of `add_flags` name: one, or the ensemble of several (one network)."""
    workdirs, dicts = list(args.workdir or ()), list(args.torch_state_dict or ())
    if not workdirs and not dicts:
        raise UsageError("give --workdir or --torch-state-dict (with --model)")
    if dicts and not args.model:
        raise UsageError("--torch-state-dict needs --model")
    seed = parse_seed(args.seed)
    members = [m for workdir in workdirs for m in workdir_members(workdir, args.which, seed)]
    if args.model and not dicts and (other := next((m for m in members if m.name != args.model), None)):
        raise UsageError(f"--model {args.model} names the network of --torch-state-dict; {other.source} is a "
                         f"{other.name}")  # fmt: skip
    model = Ensemble.of(members + [from_torch(path, args.model) for path in dicts])
    return dataclasses.replace(model, conv_impl=args.conv_impl)
