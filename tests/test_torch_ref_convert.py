"""torch_ref.convert: the weight bridge between the blog's state_dicts and flax variables, both directions."""

import jax
import numpy as np
import pytest
import torch
from helpers import flat, init_shapes, torch_model_holding

from torch_ref import convert
from torch_ref import models as torch_models

ALL = list(torch_models.MODEL_NAMES)


@pytest.mark.parametrize('name', ALL)
def test_transferred_tree_is_flax_init_tree(name):
    with torch.device('meta'):
        shapes_only = torch_models.get_model(name).state_dict()
    state_dict = {key: torch.zeros(t.shape, dtype=t.dtype) for key, t in shapes_only.items()}
    transferred = convert.torch_to_flax(name, state_dict)
    expected = init_shapes(name)
    assert jax.tree.structure(transferred) == jax.tree.structure(expected)
    for path, leaf in flat(expected).items():
        assert flat(transferred)[path].shape == leaf.shape, path
        assert flat(transferred)[path].dtype == leaf.dtype == np.float32, path


@pytest.mark.parametrize('name', ALL)
def test_round_trips_are_exact(name):
    rng = np.random.default_rng(0)  # Arbitrary values: any layout slip shows.
    flax_variables = jax.tree.map(lambda leaf: rng.standard_normal(leaf.shape, np.float32), init_shapes(name))
    state_dict = torch_model_holding(name, convert.flax_to_torch(name, flax_variables)).state_dict()
    back = convert.torch_to_flax(name, state_dict)
    assert jax.tree.structure(back) == jax.tree.structure(flax_variables)
    for path, leaf in flat(flax_variables).items():
        assert np.array_equal(flat(back)[path], leaf), path

    again = convert.flax_to_torch(name, back)
    assert list(again) == list(state_dict)
    for key, tensor in state_dict.items():
        assert torch.equal(again[key], tensor), key
