"""Weights across frameworks: a PyTorch state_dict of one of the blog's networks in, or out.

The conversion itself is torch_ref.convert's (tested layer by layer against torch); this module loads and saves
the files for the command lines, imports torch only when called, and turns every failure into one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxmnist import models
from jaxmnist.cli import UsageError


def _torch(flag: str):
    try:
        import torch

        from torch_ref import convert
    except ModuleNotFoundError as e:
        raise UsageError(f"{flag} needs {e.name}: pip install -e '.[torch]'") from None
    return torch, convert


def load_torch(path: str | os.PathLike, name: str, flag: str = "--init-from", num_classes: int | None = None) -> dict:
    """{'params', 'batch_stats'} (numpy) from a state_dict of torch_ref's `name`, loaded strictly: every key of
    the network and no other, every shape as the network's."""
    torch, convert = _torch(flag)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError) as e:
        raise UsageError(f"cannot read {flag} {path}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    if not isinstance(state_dict, dict):
        raise UsageError(f"{flag} {path} holds a {type(state_dict).__name__}, not a state_dict")
    try:
        variables = convert.torch_to_flax(name, state_dict)
    except (ValueError, KeyError) as e:
        raise UsageError(f"{flag} {path} is not a {name} state_dict: {str(e)[:300]}") from None
    model = models.get_model(name, num_classes)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False))
    shapes = jax.tree.map(lambda x: tuple(x.shape), {k: expected[k] for k in variables})
    if jax.tree.map(lambda x: tuple(x.shape), variables) != shapes:
        raise UsageError(f"{flag} {path}: the shapes are not {name}'s (another head or width?)")
    return variables


def save_torch(path: str | os.PathLike, name: str, variables: dict) -> Path:
    """Writes the state_dict of torch_ref's `name` holding `variables`, atomically (a temporary file, renamed)."""
    torch, convert = _torch("--to")
    state_dict = convert.flax_to_torch(name, variables)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state_dict, tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write --to {path}: {e.strerror}") from None
    return path
