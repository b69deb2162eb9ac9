"""torch_ref.data: the blog's transforms on jaxmnist's arrays, normalised as jaxmnist normalises, augmented as the
blog augments (seeded by torch), elastic distortion after the affine steps."""

import numpy as np
import pytest
import torch

from jaxmnist import data as data_lib
from jaxmnist.augment import Warp
from torch_ref.data import MnistDataset


def test_dataset_matches_jaxmnist_normalisation(mnist):
    dataset = MnistDataset(mnist.test_images[:64], mnist.test_labels[:64], augment=False)
    images = torch.stack([dataset[i][0] for i in range(64)])
    expected = np.asarray(data_lib.normalize(mnist.test_images[:64]))
    # torch equals numpy's float32 (x / 255 - mean) / std exactly; XLA (divisions folded into multiplications)
    # is 1 ulp off on some pixels.
    np.testing.assert_allclose(images.permute(0, 2, 3, 1).numpy(), expected, rtol=0, atol=5e-7)
    assert [dataset[i][1] for i in range(64)] == mnist.test_labels[:64].tolist()


def test_augmented_dataset_is_seeded_and_moves_pixels(mnist):
    dataset = MnistDataset(mnist.test_images[:8], mnist.test_labels[:8], augment=True)
    plain = MnistDataset(mnist.test_images[:8], mnist.test_labels[:8], augment=False)
    torch.manual_seed(0)
    first = torch.stack([dataset[i][0] for i in range(8)])
    torch.manual_seed(0)
    again = torch.stack([dataset[i][0] for i in range(8)])
    assert torch.equal(first, again)
    assert not torch.equal(first, torch.stack([plain[i][0] for i in range(8)]))
    assert first.min().item() == pytest.approx(-data_lib.MEAN / data_lib.STD)  # fill 0 before Normalize


def test_elastic_dataset_distorts_after_the_affine_steps(mnist):
    """Config.elastic_alpha: torchvision's ElasticTransform between ToTensor and Normalize; seeded like the rest."""
    images, labels = mnist.test_images[:8], mnist.test_labels[:8]
    elastic = MnistDataset(images, labels, augment=False, elastic=(50.0, 5.0))
    plain = MnistDataset(images, labels, augment=False)
    steps = [type(t).__name__ for t in elastic.transform.transforms]
    assert steps == ["ToTensor", "ElasticTransform", "Normalize"], steps
    torch.manual_seed(0)
    first = torch.stack([elastic[i][0] for i in range(8)])
    torch.manual_seed(0)
    assert torch.equal(first, torch.stack([elastic[i][0] for i in range(8)]))
    moved = (first - torch.stack([plain[i][0] for i in range(8)])).abs()
    assert 0.05 < moved.mean().item() < 1.0  # a distortion of about a pixel, in normalised units
    assert first.min().item() >= -data_lib.MEAN / data_lib.STD - 1e-6  # bilinear, fill 0: no value below black


def test_the_warps_ranges_are_torchvisions_arguments(mnist):
    """Config.warp: RandomAffine's translate and its own scale=(1 - s, 1 + s), drawn with its shifts, before the
    RandomRotation's degrees; the §4's by default."""
    images, labels = mnist.test_images[:8], mnist.test_labels[:8]
    scaled = MnistDataset(images, labels, augment=True, warp=Warp(scale=0.1))
    affine = scaled.transform.transforms[0]
    assert type(affine).__name__ == "RandomAffine" and affine.scale == (0.9, 1.1) and affine.translate == (0.1, 0.1)
    section4 = MnistDataset(images, labels, augment=True).transform.transforms
    assert section4[0].scale is None and section4[0].translate == (0.1, 0.1) and section4[1].degrees == [-10.0, 10.0]
    wider = MnistDataset(images, labels, augment=True, warp=Warp(0.2, 20.0)).transform.transforms
    assert wider[0].translate == (0.2, 0.2) and wider[1].degrees == [-20.0, 20.0] and wider[0].scale is None
    torch.manual_seed(0)
    first = torch.stack([scaled[i][0] for i in range(8)])
    torch.manual_seed(0)
    assert not torch.equal(first, torch.stack([MnistDataset(images, labels, augment=True)[i][0] for i in range(8)]))
