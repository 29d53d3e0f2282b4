"""CIFAR-style ResNets (kuangliu/pytorch-cifar, as used by the MART, MAIL and VIR repos).

3x3 stride-1 stem conv, no max-pool, four stages (64, 128, 256, 512 planes, strides 1,2,2,2),
global average pooling (adaptive, so 28/32/64 inputs all work) and one linear layer.
ResNet-18 uses BasicBlock [2, 2, 2, 2]; ResNet-50 uses Bottleneck [3, 4, 6, 3] with the same
CIFAR stem (Zeng et al. train it on 64x64 Tiny ImageNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_IMAGE_SIZE = 8


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection_shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity, or a 1x1 conv + BN where the block changes the shape (kuangliu's CIFAR ResNets)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


def make_stage(block, in_planes: int, planes: int, num_blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    """``num_blocks`` blocks, the first with ``stride``; returns the stage and its output width."""
    layers = []
    for s in [stride] + [1] * (num_blocks - 1):
        layers.append(block(in_planes, planes, s))
        in_planes = planes * block.expansion
    return nn.Sequential(*layers), in_planes


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = projection_shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)  # == avg_pool2d(4) on 32x32 inputs
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        stage, self.in_planes = make_stage(block, self.in_planes, planes, num_blocks, stride)
        return stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))


def resnet18(num_classes: int, in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels)


def resnet50(num_classes: int, in_channels: int = 3) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels)
