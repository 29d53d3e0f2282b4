"""The loaded data set: :class:`DataBundle` (what ``build_data`` returns) and :class:`RawData`.

Images are kept as uint8 NCHW tensors on the training device; batches are converted to float
in [0, 1] only when they are drawn (see :mod:`advrw.data.batches`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RawData:
    """What a source loader returns: full train/test sets on the CPU, before any split."""

    train_x: torch.Tensor  # uint8 NCHW
    train_y: torch.Tensor  # int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


@dataclass
class DataBundle:
    """Train / validation / test tensors of one data set, already on the training device.

    ``train_x`` ends with ``n_extra`` rows taken from ``dataset.extra_npz`` (0 without it).
    ``val_x`` has 0 rows when ``dataset.val_size == 0``.
    """

    name: str
    train_x: torch.Tensor  # uint8 NCHW, on `device`
    train_y: torch.Tensor  # int64, on `device`
    val_x: torch.Tensor  # uint8 NCHW (0 rows when val_size == 0)
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    classes: list[str]
    mean: tuple[float, ...]  # per-channel, of the data set, in [0, 1] units
    std: tuple[float, ...]
    augment: bool  # crop(pad 4) + flip for training batches
    n_extra: int = 0  # trailing rows of train_x that came from dataset.extra_npz
    # how each split was taken (advrw.data.subsets.describe): rule, seed, size, hash of the indices
    subsets: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Image height (all supported data sets are square)."""
        return int(self.train_x.shape[2])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(int(s) for s in self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.val_x.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_x.shape[0])

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def summary(self) -> str:
        c, h, w = self.input_shape
        extra = f" (incl. {self.n_extra} extra)" if self.n_extra else ""
        return (
            f"{self.name}: {self.n_train} train{extra} / {self.n_val} val / {self.n_test} test, "
            f"{c}x{h}x{w}, {self.num_classes} classes, augment={self.augment}"
        )


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std (in [0, 1] units) of a uint8 NCHW tensor, via histograms."""
    if x.numel() == 0:
        c = int(x.shape[1]) if x.dim() == 4 else 1
        return (0.0,) * c, (1.0,) * c
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for ch in range(x.shape[1]):
        counts = torch.bincount(x[:, ch].reshape(-1), minlength=256).to(torch.float64).cpu()
        total = counts.sum()
        mean = (counts * values).sum() / total
        var = (counts * (values - mean) ** 2).sum() / total
        means.append(round(float(mean), 6))
        stds.append(round(max(float(var.sqrt()), 1e-6), 6))
    return tuple(means), tuple(stds)
