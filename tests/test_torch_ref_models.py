"""torch_ref.models: the blog's PyTorch networks (names, sizes) and torchvision's, as the blog trains them."""

import os

import jax
import pytest
import torch
import torchvision
from helpers import init_shapes

from jaxmnist import models
from torch_ref import models as torch_models


@pytest.mark.parametrize('name', list(models.MODELS))
def test_every_network_of_jaxmnist_has_a_torch_original(name):
    with torch.device('meta'):
        model = torch_models.get_model(name)
    assert isinstance(model, torch.nn.Module)
    assert (type(model).__module__.startswith('torchvision')) == (name in models.TORCHVISION)


def test_unknown_network():
    with pytest.raises(ValueError, match='unknown model'):
        torch_models.get_model('resnet50')


@pytest.mark.parametrize(
    'name, num_classes, count',
    [('resnet18', None, 11_689_512), ('resnet101', None, 44_549_160), ('resnet18', 10, 11_181_642)],
)
def test_torchvision_sizes(name, num_classes, count):
    with torch.device('meta'):
        reference = getattr(torchvision.models, name)(**({} if num_classes is None else {'num_classes': num_classes}))
        ours = torch_models.get_model(name, num_classes)
    assert type(ours) is type(reference)
    assert sum(p.numel() for p in reference.parameters()) == count
    assert sum(p.numel() for p in ours.parameters()) == count
    variables = init_shapes(name, num_classes)
    assert sum(x.size for x in jax.tree.leaves(variables['params'])) == count


def test_prepare_input_expands_only_for_torchvision():
    x = torch.randn(2, 1, 28, 28)
    assert torch_models.prepare_input('resnet', x) is x
    three = torch_models.prepare_input('resnet18', x)
    assert three.shape == (2, 3, 28, 28) and torch.equal(three[:, 2], x[:, 0])


@pytest.mark.parametrize(
    'name, keys',
    [
        ('cnn', ['block1.0.weight', 'block1.3.running_var', 'block2.0.bias', 'fc.1.weight']),
        ('cnn_deep', ['layer1.0.weight', 'layer1.2.running_mean', 'layer2.5.num_batches_tracked', 'fc.4.bias']),
        ('resnet', ['conv.weight', 'bn.bias', 'layer2.0.downsample.0.weight', 'layer3.1.bn2.weight', 'normfc12.weight',
                    'fc2.bias']),
    ],
)  # fmt: skip
def test_the_blogs_module_names(name, keys):
    """The blog's attribute names and Sequential indices, so a state_dict saved by its code loads strictly."""
    with torch.device('meta'):
        state_dict = torch_models.get_model(name).state_dict()
    assert set(keys) <= set(state_dict), sorted(set(keys) - set(state_dict))


def test_a_test_worker_runs_torch_on_its_share_of_the_cores():
    """conftest.share_the_cores: with pytest-xdist (make test), each worker's torch, and its subprocesses', takes
    cores // workers threads."""
    workers, cores = os.environ.get("PYTEST_XDIST_WORKER_COUNT"), len(os.sched_getaffinity(0))
    if workers is None:
        pytest.skip("NOT TESTED: no pytest-xdist workers (-n 0), so no cores to share")
    assert torch.get_num_threads() == max(1, cores // int(workers)) == int(os.environ["OMP_NUM_THREADS"])
