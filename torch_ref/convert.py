"""Weight transfer between torch_ref's state_dicts and jaxmnist's flax variables, both ways, exactly.

One naming rule covers every network. A flax module path, joined with '.', is the torch module
path once each flax name's '_' becomes '.': flax ``layer1_0`` is torch ``layer1.0`` (a Sequential
index), and no torch module name in these networks contains '_'. Leaves map as

  params/.../kernel        <-> ...weight        Conv: HWIO <-> OIHW; Dense: (in, out) <-> (out, in)
  params/.../scale         <-> ...weight        BatchNorm and LayerNorm
  params/.../bias          <-> ...bias
  batch_stats/.../mean     <-> ...running_mean
  batch_stats/.../var      <-> ...running_var   (both store torch's unbiased running variance)
  (none)                   <-> ...num_batches_tracked   dropped; written as 0

e.g. ``params/layer1_0/downsample_0/kernel`` <-> ``layer1.0.downsample.0.weight``. Flax's Dense after
Flatten already flattens in torch's C,H,W order, so Linear weights need no permutation.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import traverse_util

from jaxmnist import models as flax_models
from torch_ref import models as torch_models

_FLAX_TO_TORCH_LEAF = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}
_TORCH_TO_FLAX_STAT = {'running_mean': 'mean', 'running_var': 'var'}


def _torch_module_path(flax_modules):
    return '.'.join(name.replace('_', '.') for name in flax_modules)


def _flax_module_path(torch_modules):
    """Fuses each Sequential index onto its container's name: layer1.0.conv1 -> (layer1_0, conv1)."""
    path = []
    for name in torch_modules:
        if name.isdigit():
            path[-1] += '_' + name
        else:
            path.append(name)
    return tuple(path)


def _to_flax_layout(leaf, array):
    if leaf == 'weight' and array.ndim == 4:
        return 'kernel', array.transpose(2, 3, 1, 0)
    if leaf == 'weight' and array.ndim == 2:
        return 'kernel', array.T
    if leaf == 'weight':
        return 'scale', array
    return leaf, array


def _to_torch_layout(leaf, array):
    if leaf == 'kernel' and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if leaf == 'kernel':
        return array.T
    return array


@functools.lru_cache(maxsize=None)
def _flax_paths(name):
    """The (collection, *path) of every variable of the flax model ``name``; shapes need no compute."""
    model = flax_models.get_model(name)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    return frozenset(traverse_util.flatten_dict(variables))


def _torch_keys(name):
    with torch.device('meta'):  # Structure only: no memory, no initialisation.
        return list(torch_models.get_model(name).state_dict())


def _check_same(kind, expected, got):
    missing, unexpected = set(expected) - set(got), set(got) - set(expected)
    if missing or unexpected:
        raise ValueError(f'{kind} mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}')


def torch_to_flax(name, state_dict):
    """torch_ref's ``name`` state_dict -> ``{'params': ..., 'batch_stats': ...}`` of numpy arrays."""
    flat = {}
    for key, tensor in state_dict.items():
        *modules, leaf = key.split('.')
        if leaf == 'num_batches_tracked':
            continue
        array = tensor.detach().cpu().numpy().copy()  # numpy() shares memory with the tensor.
        if leaf in _TORCH_TO_FLAX_STAT:
            collection, leaf = 'batch_stats', _TORCH_TO_FLAX_STAT[leaf]
        else:
            collection = 'params'
            leaf, array = _to_flax_layout(leaf, array)
        flat[(collection, *_flax_module_path(modules), leaf)] = np.ascontiguousarray(array)
    _check_same(f'flax variables of {name!r}', _flax_paths(name), flat)
    return traverse_util.unflatten_dict(flat)


def flax_to_torch(name, variables):
    """Flax variables of ``name`` -> a state_dict that torch_ref's model loads with strict=True."""
    state_dict = {}
    for (collection, *modules, leaf), value in traverse_util.flatten_dict(variables).items():
        array = np.array(value)  # A writable copy: torch.from_numpy shares memory.
        if collection == 'params':
            array = _to_torch_layout(leaf, array)
        module = _torch_module_path(modules)
        key = f'{module}.{_FLAX_TO_TORCH_LEAF[collection, leaf]}'
        state_dict[key] = torch.from_numpy(np.ascontiguousarray(array))
        if (collection, leaf) == ('batch_stats', 'mean'):
            # Flax does not count batches; torch only reads the count when its momentum is None.
            state_dict[f'{module}.num_batches_tracked'] = torch.tensor(0)
    torch_keys = _torch_keys(name)
    _check_same(f'torch state_dict of {name!r}', torch_keys, state_dict)
    return {key: state_dict[key] for key in torch_keys}
