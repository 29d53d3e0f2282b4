"""Model registry: ``build_model(name, num_classes, ...)`` -> ``nn.Module`` mapping [0, 1] NCHW to logits.

Every model takes raw [0, 1] inputs (as the TRADES/MART/GAIRAT/MAIL papers train); pass per-channel
``mean`` and ``std`` to put a :class:`Normalize` layer in front. Models use adaptive pooling or
computed sizes, so ``image_size`` 28 (MNIST), 32 (CIFAR/SVHN) and 64 (Tiny ImageNet) all work.
"""

from __future__ import annotations

import logging
import numbers
from collections import OrderedDict
from typing import Callable, NamedTuple

from torch import nn

from advrw.core.errors import AdvrwError
from advrw.models import dm_wide_resnet, preact_resnet, resnet, smallcnn, tiny, wide_resnet
from advrw.models.dm_wide_resnet import ACTIVATIONS, DMWideResNet
from advrw.models.normalize import Normalize
from advrw.models.preact_resnet import PreActResNet
from advrw.models.resnet import ResNet
from advrw.models.smallcnn import SmallCNN
from advrw.models.tiny import TinyCNN
from advrw.models.wide_resnet import WideResNet

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_NAMES", "Normalize", "build_model", "num_parameters",
    "SmallCNN", "ResNet", "PreActResNet", "WideResNet", "TinyCNN", "DMWideResNet", "validate_model",
]


class _Entry(NamedTuple):
    factory: Callable[..., nn.Module]  # (num_classes, in_channels, image_size[, mean, std, activation])
    min_image_size: int
    own_norm: bool = False  # normalises inside, mean/std outside the state_dict (RobustBench's layout)


def _dm(depth: int, width: int) -> _Entry:
    return _Entry(lambda k, c, s, mean=None, std=None, activation="silu": DMWideResNet(
        depth, width, k, c, activation=activation, mean=mean, std=std), dm_wide_resnet.MIN_IMAGE_SIZE, own_norm=True)


_REGISTRY: dict[str, _Entry] = {
    "smallcnn": _Entry(lambda k, c, s: SmallCNN(k, c, s), smallcnn.MIN_IMAGE_SIZE),
    "resnet18": _Entry(lambda k, c, s: resnet.resnet18(k, c), resnet.MIN_IMAGE_SIZE),
    "preact_resnet18": _Entry(lambda k, c, s: preact_resnet.preact_resnet18(k, c), preact_resnet.MIN_IMAGE_SIZE),
    "wrn34_10": _Entry(lambda k, c, s: wide_resnet.wrn34_10(k, c), wide_resnet.MIN_IMAGE_SIZE),
    "wrn28_10": _Entry(lambda k, c, s: wide_resnet.wrn28_10(k, c), wide_resnet.MIN_IMAGE_SIZE),
    "wrn32_10": _Entry(lambda k, c, s: wide_resnet.wrn32_10(k, c), wide_resnet.MIN_IMAGE_SIZE),
    "resnet50": _Entry(lambda k, c, s: resnet.resnet50(k, c), resnet.MIN_IMAGE_SIZE),
    "tiny": _Entry(lambda k, c, s: TinyCNN(k, c), tiny.MIN_IMAGE_SIZE),
    # DeepMind / DM-Improves-AT / RobustBench WideResNets (advrw/models/dm_wide_resnet.py)
    "wrn28_10_silu": _dm(28, 10),
    "wrn34_20_silu": _dm(34, 20),
    "wrn70_16_silu": _dm(70, 16),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def validate_model(cfg) -> None:
    """model.*: the name, and ``activation`` only where the architecture takes one."""
    m = cfg.model
    if m.name not in _REGISTRY:
        raise AdvrwError(f"model.name={m.name!r} is unknown: choose one of {', '.join(MODEL_NAMES)}")
    act = m.get("activation")
    if act is not None and not _REGISTRY[m.name].own_norm:
        raise AdvrwError(f"model.activation={act} is not a setting of model={m.name}: only the "
                         f"{', '.join(n for n, e in _REGISTRY.items() if e.own_norm)} models take one")
    if act is not None and act not in ACTIVATIONS:
        raise AdvrwError(f"model.activation={act!r} is unknown: choose one of {', '.join(ACTIVATIONS)}")
    for key in ("bn_momentum", "first_bn_momentum"):
        bn = m.get(key)
        if bn is not None and (isinstance(bn, bool) or not isinstance(bn, (int, float)) or not 0 < bn <= 1):
            raise AdvrwError(f"model.{key}={bn} is invalid: must be a number in (0, 1] or null (the architecture's "
                             "own momentum)")


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
                mean=None, std=None, activation: str | None = None, bn_momentum: float | None = None) -> nn.Module:
    """Build a freshly initialised model mapping [0, 1] NCHW inputs to ``[N, num_classes]`` logits.

    With ``mean`` and ``std`` (one value per input channel) the result is
    ``nn.Sequential(normalize=Normalize(mean, std), net=<model>)``; without them it is the bare
    model. Raises :class:`AdvrwError` for an unknown name or a bad size argument.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise AdvrwError(f"model name {name!r} is unknown: must be one of {', '.join(MODEL_NAMES)}")
    if not _is_int(num_classes) or num_classes < 2:
        raise AdvrwError(f"num_classes={num_classes!r} is invalid: must be an integer >= 2")
    if not _is_int(in_channels) or in_channels < 1:
        raise AdvrwError(f"in_channels={in_channels!r} is invalid: must be an integer >= 1")
    entry = _REGISTRY[name]
    if not _is_int(image_size) or image_size < entry.min_image_size:
        raise AdvrwError(
            f"image_size={image_size!r} is invalid for model {name!r}: must be an integer >= {entry.min_image_size}"
        )
    if (mean is None) != (std is None):
        raise AdvrwError(f"mean={mean!r}, std={std!r} is invalid: give both (one value per channel) or neither")

    norm = None
    if mean is not None:
        norm = Normalize(mean, std)
        if norm.num_channels != in_channels:
            raise AdvrwError(
                f"mean={tuple(norm.mean.flatten().tolist())} is invalid: must have in_channels={in_channels} values"
            )

    if entry.own_norm:  # the model normalises itself, as the checkpoints it loads expect
        net = entry.factory(int(num_classes), int(in_channels), int(image_size),
                            mean=None if norm is None else [float(v) for v in mean],
                            std=None if norm is None else [float(v) for v in std], activation=activation or "silu")
        norm = None
    else:
        net = entry.factory(int(num_classes), int(in_channels), int(image_size))
    if bn_momentum is not None:  # e.g. 0.01, the anchors' (DeepMind's) BN momentum
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = float(bn_momentum)
    logger.debug("built model %s (num_classes=%d, in_channels=%d, image_size=%d): %d parameters%s",
                 name, num_classes, in_channels, image_size, num_parameters(net),
                 f", normalised by {norm.extra_repr()}" if norm is not None else "")
    if norm is None:
        return net
    return nn.Sequential(OrderedDict([("normalize", norm), ("net", net)]))
