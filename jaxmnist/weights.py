"""A trained model, wherever its weights come from: a jaxmnist.train checkpoint (`--workdir`, `--which`,
`--seed`) or a PyTorch state_dict of one of the blog's networks (`--torch-state-dict FILE --model NAME`), and
its softmax over any uint8 digits. Every command that reads a trained model (predict, evaluate, export) takes
these flags from `add_flags` and the model from `load`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import data as data_lib
from jaxmnist import interop, models
from jaxmnist.checkpoint import Checkpointer
from jaxmnist.cli import UsageError
from jaxmnist.presets import Config
from jaxmnist.seeds import Seeds

WHICH = ("best", "latest")


@functools.partial(jax.jit, static_argnums=0)
def softmax(apply_fn, variables, images_u8):
    """[N, classes] softmax of `apply_fn` in eval mode over uint8 [N, 28, 28] digits, as one program."""
    logits = apply_fn(variables, data_lib.normalize(images_u8), train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def probabilities(apply_fn, variables, images_u8: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """[N, classes] softmax of a model in eval mode over uint8 [N, 28, 28] digits, a batch at a time (compiled
    once per apply_fn and batch shape)."""
    parts = [softmax(apply_fn, variables, images_u8[i : i + batch_size]) for i in range(0, len(images_u8), batch_size)]
    return np.concatenate([np.asarray(p) for p in parts])


@dataclasses.dataclass
class Model:
    name: str  # the network
    variables: dict  # {'params', 'batch_stats'}: the weights evaluation uses
    source: str  # where they came from, for the first line
    num_classes: int | None = None  # the head, if the run set one (--num-classes)
    test_acc: float | None = None  # the checkpoint's test accuracy (%), where the run measured one

    @functools.cached_property
    def module(self):
        return models.get_model(self.name, self.num_classes)

    def probabilities(self, images_u8: np.ndarray) -> np.ndarray:
        """[N, classes] softmax of the network in eval mode, for uint8 [N, 28, 28] digits."""
        return probabilities(self.module.apply, self.variables, images_u8)


def from_workdir(workdir: str, which: str = "best", seed: int | None = None) -> Model:
    """The weights of a jaxmnist.train checkpoint (the weight average, if the run kept one)."""
    if not (Path(workdir) / which).is_dir():
        raise UsageError(f"no {which} checkpoint in {workdir} (train with --workdir {workdir} first)")
    ckpt = Checkpointer(workdir, read_only=True)
    meta = ckpt.read_meta(which)
    if meta is None:
        raise UsageError(f"no intact {which} checkpoint in {workdir}")
    known = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in meta["config"].items() if k in known})
    seeds = tuple(meta.get("seeds") or (config.seed,))
    if len(seeds) > 1 and seed not in seeds:
        raise UsageError(f"{workdir} holds seeds {', '.join(map(str, seeds))} trained together: pick one with --seed")
    stack = Seeds(seeds, vmapped=len(seeds) > 1)
    state, meta = ckpt.restore(stack.create_state(config, total_steps=1), which)
    ckpt.close()
    state = stack.take(state, seeds.index(seed)) if len(seeds) > 1 else state
    variables = jax.device_get(state.eval_variables())
    where = f"{workdir} ({which}: epoch {meta['epoch']}, test accuracy {meta['test_acc']:.2f} %)"
    return Model(config.model, variables, where, config.num_classes, meta.get("test_acc"))


def from_torch(path: str, name: str) -> Model:
    """A PyTorch state_dict of torch_ref's `name` (the blog's classes), loaded strictly and converted exactly."""
    return Model(name, interop.load_torch(path, name, "--torch-state-dict"), f"{path} (PyTorch {name})")


# ------------------------------------------------------------------------------------------ the flags
def add_flags(p, torch: bool = True) -> None:
    """The flags that name a trained model: a checkpoint (--workdir, --which, --seed) and, with `torch`, a
    PyTorch state_dict instead (--torch-state-dict, formerly --init-from, with --model)."""
    p.add_argument("--workdir", help="a jaxmnist.train --workdir: its checkpoint")
    p.add_argument("--which", choices=WHICH, default="best", help="which checkpoint (default best)")
    p.add_argument("--seed", type=int, help="with seeds trained together (--seeds ... vmapped): which one")
    if torch:
        add_torch_flag(p, "instead: a PyTorch state_dict of one of the blog's networks (with --model)")
        p.add_argument("--model", choices=tuple(models.MODELS), help="the network of --torch-state-dict")


def add_torch_flag(p, help: str) -> None:
    """--torch-state-dict FILE.pth, every command's one name for a PyTorch state_dict (--init-from: an alias)."""
    p.add_argument("--torch-state-dict", "--init-from", dest="torch_state_dict", metavar="FILE.pth", help=help)


def load(args) -> Model:
    """The model the flags of `add_flags` name."""
    if bool(args.workdir) == bool(args.torch_state_dict):
        raise UsageError("give --workdir or --torch-state-dict (with --model)")
    if args.torch_state_dict:
        if not args.model:
            raise UsageError("--torch-state-dict needs --model")
        return from_torch(args.torch_state_dict, args.model)
    return from_workdir(args.workdir, args.which, args.seed)
