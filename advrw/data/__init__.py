"""Data sets as uint8 tensors on the training device, and batching/augmentation without a DataLoader.

- :func:`build_data` (``build.py``): ``dataset.*`` config -> :class:`DataBundle`.
- ``sources.py``: torchvision sets (MNIST, CIFAR-10/100, SVHN), ``.npz``, synthetic data.
- ``archive.py``: ImageFolder / Tiny ImageNet from a folder or ``.tar.gz``/``.tgz``/``.tar``/``.zip``, cached.
- ``batches.py``: :class:`DeviceBatches` and :func:`crop_flip`.
- ``mixed.py``: :class:`MixedBatches`, a fixed share of extra data per batch (``dataset.extra_fraction``).
"""

from advrw.data.batches import DeviceBatches, crop_flip
from advrw.data.build import DATASET_NAMES, DEFAULT_AUGMENT, STATS, build_data
from advrw.data.bundle import DataBundle, channel_stats
from advrw.data import subsets
from advrw.data.mixed import MixedBatches

__all__ = [
    "subsets",
    "DATASET_NAMES",
    "DEFAULT_AUGMENT",
    "STATS",
    "DataBundle",
    "DeviceBatches",
    "MixedBatches",
    "build_data",
    "channel_stats",
    "crop_flip",
]
