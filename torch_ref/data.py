"""The blog's data pipeline in torch: jaxmnist.data's verified uint8 arrays served by a torch Dataset through the
blog's torchvision transforms (its §4 augmentation: RandomAffine shifts, RandomRotation), in a shuffling DataLoader.
torch_ref.train and the benchmarks (scripts/benchlib/torch_side.py) read MNIST through it."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from jaxmnist import data as data_lib
from jaxmnist.augment import Warp


class MnistDataset(torch.utils.data.Dataset):
    """uint8 images [n,28,28] through the blog's transforms: items are (float [1,28,28], int label). `elastic`:
    (alpha, sigma) of an ElasticTransform after ToTensor (Config.elastic_alpha), or None; `warp`: the ranges of the
    RandomAffine's shifts (and scales, if > 0) and of the RandomRotation (Config.warp: the §4's by default)."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, augment: bool, elastic: tuple | None = None, warp: Warp = Warp()
    ):
        self.images = np.array(images, np.uint8)  # a writable copy: torch warns on read-only arrays
        self.labels = np.asarray(labels, np.int64)
        self.augment = augment
        scales = (1 - warp.scale, 1 + warp.scale) if warp.scale else None
        affine = transforms.RandomAffine(degrees=0, translate=(warp.translate, warp.translate), scale=scales)
        steps = [affine, transforms.RandomRotation((-warp.degrees, warp.degrees))] if augment else []
        steps.append(transforms.ToTensor())
        if elastic:
            steps.append(transforms.ElasticTransform(alpha=float(elastic[0]), sigma=float(elastic[1])))
        self.transform = transforms.Compose(steps + [transforms.Normalize((data_lib.MEAN,), (data_lib.STD,))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        # The augmentations work on PIL images, as in the blog; without them ToTensor takes the HWC array as it
        # is (the same float32 values, at half the cost).
        image = Image.fromarray(image) if self.augment else image[:, :, None]
        return self.transform(image), int(self.labels[i])


def make_loader(
    images,
    labels,
    batch_size: int,
    *,
    augment: bool,
    shuffle: bool,
    device,
    num_workers: int = 0,
    timeout: float = 0,
    elastic: tuple | None = None,
    warp: Warp = Warp(),
):
    """The blog's DataLoader over `MnistDataset`: the training loader shuffles, the test loader does not; pinned
    memory for CUDA, as the blog. `timeout` (seconds, with workers) turns a hung worker into an error."""
    return torch.utils.data.DataLoader(
        MnistDataset(images, labels, augment, elastic, warp),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        timeout=timeout if num_workers else 0,
    )
