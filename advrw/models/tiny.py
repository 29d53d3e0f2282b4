"""A very small, fast CNN with BatchNorm for tests and smoke runs (not from any paper)."""

from __future__ import annotations

import torch
from torch import nn

MIN_IMAGE_SIZE = 8


class TinyCNN(nn.Module):
    """conv(in,8,3,s2)-BN-ReLU-conv(8,16,3,s2)-BN-ReLU-global avg pool-linear (1,586 params for 3 channels, 10 classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(self.features(x)), 1))
