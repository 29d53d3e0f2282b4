"""SmallCNN: the 4-conv + 3-fc MNIST network of the TRADES repository (``small_cnn.py``).

Same layers, names and initialisation as TRADES (kaiming-normal convs with zero bias, BN at
1/0, last fc weight and bias at 0); the only changes are that the first conv takes
``in_channels`` and the first fc's input size is computed from ``image_size``, so the same
net runs on 28x28x1 (MNIST: 64*4*4) and 32x32x3 (64*5*5).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

MIN_IMAGE_SIZE = 16  # two (conv3, conv3, pool2) stages must leave at least 1x1


def _feature_size(image_size: int) -> int:
    s = (image_size - 4) // 2  # conv3, conv3 (no padding), maxpool 2
    return (s - 4) // 2  # conv3, conv3, maxpool 2


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, drop: float = 0.5):
        super().__init__()
        self.num_classes = num_classes
        self.feature_extractor = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 32, 3)),
            ("relu1", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(32, 32, 3)),
            ("relu2", nn.ReLU(inplace=True)),
            ("maxpool1", nn.MaxPool2d(2, 2)),
            ("conv3", nn.Conv2d(32, 64, 3)),
            ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(64, 64, 3)),
            ("relu4", nn.ReLU(inplace=True)),
            ("maxpool2", nn.MaxPool2d(2, 2)),
        ]))
        side = _feature_size(image_size)
        self.flat_features = 64 * side * side
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(self.flat_features, 200)),
            ("relu1", nn.ReLU(inplace=True)),
            ("drop", nn.Dropout(drop)),
            ("fc2", nn.Linear(200, 200)),
            ("relu2", nn.ReLU(inplace=True)),
            ("fc3", nn.Linear(200, num_classes)),
        ]))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.classifier.fc3.weight, 0)
        nn.init.constant_(self.classifier.fc3.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.feature_extractor(x)
        # flatten(1) instead of TRADES' view(-1, ...): works for channels_last (non-contiguous) too.
        return self.classifier(torch.flatten(features, 1))
