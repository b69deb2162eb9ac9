"""Weight transfer between torch_ref's state_dicts and jaxmnist's flax variables, both ways, exactly.

The naming and layout rule is jaxmnist.interop's (torch-free, so that jaxmnist reads and writes .pth files
itself); this module applies it to torch tensors and checks the keys against torch's own modules.
"""

import numpy as np
import torch

from jaxmnist import interop
from torch_ref import models as torch_models


def _torch_keys(name):
    with torch.device('meta'):  # Structure only: no memory, no initialisation.
        return list(torch_models.get_model(name).state_dict())


def torch_to_flax(name, state_dict):
    """torch_ref's ``name`` state_dict -> ``{'params': ..., 'batch_stats': ...}`` of numpy arrays."""
    # numpy() shares memory with the tensor: copy.
    arrays = {key: tensor.detach().cpu().numpy().copy() for key, tensor in state_dict.items()}
    return interop.torch_to_flax(name, arrays)


def flax_to_torch(name, variables):
    """Flax variables of ``name`` -> a state_dict that torch_ref's model loads with strict=True."""
    # np.array: a writable copy, since torch.from_numpy shares memory.
    state_dict = {key: torch.from_numpy(np.array(a)) for key, a in interop.flax_to_torch(name, variables).items()}
    torch_keys = _torch_keys(name)
    interop.check_same(f'torch state_dict of {name!r}', torch_keys, state_dict)
    return {key: state_dict[key] for key in torch_keys}
