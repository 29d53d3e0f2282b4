"""WideResNet as in the TRADES / MART repositories (``wideresnet.py``).

Pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3; when the width changes the
pre-activated input feeds both the block and a 1x1 projection shortcut), three groups of
``n`` blocks with 16k, 32k, 64k channels (strides 1, 2, 2), a final BN-ReLU, global average
pooling and a linear layer; dropout 0 by default. Module names match the TRADES file, so its
checkpoints load (its unused ``sub_block1`` is left out; load those with ``strict=False``).

Depth naming: TRADES/MART count ``n = (depth - 4) / 6`` (WRN-34-10: n = 5; WRN-28-10: n = 4).
Madry's "WRN-32-10" (``Wide_ResNet_Madry`` in the FAT/GAIRAT repos) counts
``n = (depth - 2) / 6`` = 5: the very same network as WRN-34-10.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MIN_IMAGE_SIZE = 8


def init_weights(model: nn.Module) -> None:
    """The TRADES / DeepMind WideResNet initialisation: conv N(0, 2 / fan_out), BN 1 and 0, linear bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal_in_out else self.convShortcut(act))


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(nb_layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """``blocks_per_group`` = n above (5 for WRN-34-10 / WRN-32-10, 4 for WRN-28-10)."""

    def __init__(self, blocks_per_group: int, widen_factor: int = 10, num_classes: int = 10,
                 in_channels: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks_per_group, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(blocks_per_group, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(blocks_per_group, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)  # == avg_pool2d(8) on 32x32 inputs
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(self.pool(out), 1))


def wrn34_10(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(5, 10, num_classes=num_classes, in_channels=in_channels)


def wrn28_10(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(4, 10, num_classes=num_classes, in_channels=in_channels)


def wrn32_10(num_classes: int, in_channels: int = 3) -> WideResNet:
    """Madry's WRN-32-10 (GAIRAT, FAT): n = (32 - 2) / 6 = 5, i.e. identical to ``wrn34_10``."""
    return WideResNet(5, 10, num_classes=num_classes, in_channels=in_channels)
