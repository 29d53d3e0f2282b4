"""The WideResNet of DeepMind's robustness code (Gowal et al. 2020), as DM-Improves-AT and RobustBench's
``DMWideResNet`` define it: the architecture of today's strongest CIFAR checkpoints (WRN-28-10, 34-20,
70-16 with SiLU/Swish).

Module names are theirs (``init_conv``, ``layer.<g>.block.<b>.{batchnorm_0,conv_0,batchnorm_1,conv_1,
shortcut}``, ``batchnorm``, ``logits``), so a RobustBench / DM-AT state_dict loads as is (DM-AT's files
add a ``module.0.`` prefix, which advrw's checkpoint reader strips). Like theirs, the model normalises its
input itself and keeps mean/std out of the state_dict (non-persistent buffers here, plain attributes
there). Differences from the TRADES WideResNet in ``wide_resnet.py`` that change the numbers: the first
3x3 convolution of a block pads explicitly, (0, 1, 0, 1) when it strides 2 (TensorFlow's ``SAME``), BN
momentum 0.01 by default, and the activation is a parameter (``silu`` in the anchors, ``relu`` possible).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advrw.models.wide_resnet import init_weights

MIN_IMAGE_SIZE = 8
ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU}


class _Block(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, act, bn_momentum: float):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_planes, momentum=bn_momentum)
        self.relu_0 = act()  # their attribute names, whatever the activation
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes, momentum=bn_momentum)
        self.relu_1 = act()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False) if self.has_shortcut else None
        self._pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        if self.has_shortcut:  # the projection sees the pre-activated input, the identity the raw one
            x = act
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(F.pad(act, self._pad)))))
        return out + (self.shortcut(x) if self.has_shortcut else x)


class _BlockGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, act, bn_momentum: float):
        super().__init__()
        self.block = nn.Sequential(*[_Block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                                            act, bn_momentum) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """WRN-``depth``-``width``: ``(depth - 4) / 6`` blocks per group, channels 16, 16w, 32w, 64w."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, in_channels: int = 3,
                 activation: str = "silu", mean=None, std=None, bn_momentum: float = 0.01):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth {depth} is invalid: must be 6n + 4")
        act = ACTIVATIONS[activation]
        ch = [16, 16 * width, 32 * width, 64 * width]
        n = (depth - 4) // 6
        self.num_classes = num_classes
        mean = torch.zeros(in_channels) if mean is None else torch.tensor(mean, dtype=torch.float32)
        std = torch.ones(in_channels) if std is None else torch.tensor(std, dtype=torch.float32)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)
        self.init_conv = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(_BlockGroup(n, ch[0], ch[1], 1, act, bn_momentum),
                                   _BlockGroup(n, ch[1], ch[2], 2, act, bn_momentum),
                                   _BlockGroup(n, ch[2], ch[3], 2, act, bn_momentum))
        self.batchnorm = nn.BatchNorm2d(ch[3], momentum=bn_momentum)
        self.relu = act()
        self.logits = nn.Linear(ch[3], num_classes)
        init_weights(self)  # the same initialisation as the TRADES WideResNet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = self.relu(self.batchnorm(self.layer(self.init_conv(out))))
        return self.logits(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))  # == avg_pool2d(8) on 32x32
