"""The blog's PyTorch networks, with its module and attribute names, so its state_dicts load strictly.

``cnn``, ``cnn_deep`` and ``resnet`` are the blog's own classes; ``resnet18`` and ``resnet101`` are
torchvision's models themselves, whose 3-channel input is made by ``prepare_input``.
"""

import torchvision
from torch import nn

from jaxmnist.models import MODELS, TORCHVISION


class CNN(nn.Module):
    """Sections 1-3: conv -> max-pool -> ReLU -> BN, twice, then a Linear (8,550 parameters)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True), nn.BatchNorm2d(10))
        self.block2 = nn.Sequential(nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True), nn.BatchNorm2d(20))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(20 * 4 * 4, num_classes))

    def forward(self, x):
        return self.fc(self.block2(self.block1(x)))


def kaiming_conv_init(module):
    """The section 4 re-initialisation, applied with ``model.apply``: convs only, biases untouched."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')


class CNNDeep(nn.Module):
    """Section 4: two double-conv stages with BN and dropout, a two-layer head (232,554 parameters)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.layer1 = self._stage(1, 32, 5)
        self.layer2 = self._stage(32, 64, 3)
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 3 * 3, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, num_classes)
        )
        self.apply(kaiming_conv_init)

    @staticmethod
    def _stage(in_channels, channels, kernel_size):
        return nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size),
            nn.ReLU(),
            nn.BatchNorm2d(channels),
            nn.Conv2d(channels, channels, kernel_size),
            nn.ReLU(),
            nn.BatchNorm2d(channels),
            nn.MaxPool2d(2, 2),
            nn.Dropout(0.25),
        )

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(x)))


def conv3x3(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=True)


class ResidualBlock(nn.Module):
    """The blog's residual block; its ``downsample`` (if any) is a biased 3x3 conv and a BN."""

    def __init__(self, in_channels, out_channels, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class ResNet(nn.Module):
    """The blog's own "ResNet18" (598,442 parameters with ResidualBlock and [2, 2, 2])."""

    def __init__(self, block, layers, num_classes=10):
        super().__init__()
        self.in_channels = 16
        self.conv = conv3x3(1, 16)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self.make_layer(block, 16, layers[0], stride=1)
        self.layer2 = self.make_layer(block, 32, layers[1], stride=2)
        self.layer3 = self.make_layer(block, 64, layers[2], stride=2)
        self.avg_pool = nn.AvgPool2d(8)  # Defined by the blog, never used.
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.normfc12 = nn.LayerNorm(128, eps=1e-5)
        self.fc2 = nn.Linear(128, num_classes)

    def make_layer(self, block, out_channels, blocks, stride=1):
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(conv3x3(self.in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
        layers = [block(self.in_channels, out_channels, stride, downsample)]
        self.in_channels = out_channels
        layers += [block(out_channels, out_channels) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.relu(self.bn(self.conv(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = self.fc1(out.flatten(1))
        return self.fc2(self.relu(self.normfc12(out)))


class FastNet(nn.Module):
    """The `fast` preset's network (not the blog's): stages of 3x3 padded conv -> BN -> ReLU, each ending in a
    2x2 max-pool (28 -> 14 -> 7 -> 3), then one Linear; jaxmnist.models.FastNet's mirror."""

    def __init__(self, num_classes=10, widths=(32, 64, 128), convs_per_stage=1):
        super().__init__()
        layers, channels = [], 1
        for width in widths:
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels * 3 * 3, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


# The networks are jaxmnist.models' (one list for both frameworks); torchvision's are built by their own name.
MODEL_NAMES = tuple(MODELS)
_OWN_MODELS = {
    'cnn': CNN,
    'cnn_deep': CNNDeep,
    'resnet': lambda num_classes: ResNet(ResidualBlock, [2, 2, 2], num_classes),
    'fast': FastNet,
}


def get_model(name, num_classes=None):
    """Builds ``name``; ``num_classes=None`` is the natural head (10 for the blog's nets, 1000 for
    torchvision's)."""
    if name in TORCHVISION:
        return getattr(torchvision.models, name)(**({} if num_classes is None else {'num_classes': num_classes}))
    if name in _OWN_MODELS:
        return _OWN_MODELS[name](10 if num_classes is None else num_classes)
    raise ValueError(f'unknown model {name!r}; choose from {", ".join(MODEL_NAMES)}')


def prepare_input(name, images):
    """The blog's per-model input step: torchvision's ResNets take the 1-channel batch as 3 channels."""
    if name in TORCHVISION:
        return images.expand(-1, 3, -1, -1)
    return images
