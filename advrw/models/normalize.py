"""Per-channel input normalisation as a module, so a model can own its preprocessing.

Attacks work in [0, 1] pixel space (eps, clipping), so normalisation has to live *inside* the
model, in front of the first layer: ``Normalize(mean, std)(x) == (x - mean) / std``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from advrw.core.errors import AdvrwError


def _as_floats(name: str, values, positive: bool = False) -> tuple[float, ...]:
    """Turn a per-channel sequence (tuple, list, Hydra ListConfig) into a tuple of finite floats."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise AdvrwError(f"{name}={values!r} is invalid: must be a sequence of numbers, one per channel")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise AdvrwError(
            f"{name}={values!r} is invalid: must be a sequence of numbers, one per channel"
        ) from None
    if not out:
        raise AdvrwError(f"{name}={values!r} is invalid: must hold at least one value")
    for v in out:
        if not math.isfinite(v) or (positive and v <= 0):
            allowed = "finite numbers > 0" if positive else "finite numbers"
            raise AdvrwError(f"{name}={values!r} is invalid: must hold {allowed}")
    return out


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel of an NCHW input; mean and std are (persistent) buffers.

    Buffers have shape ``[1, C, 1, 1]`` so they broadcast over NCHW in either memory format, and
    they follow ``model.to(device/dtype)``. The output keeps the input's floating dtype (the
    buffers are cast to it), which keeps a bf16 model bf16; under ``torch.autocast`` the
    fp32 input stays fp32 here and the following conv does the cast.
    """

    def __init__(self, mean, std):
        super().__init__()
        mean_t = _as_floats("mean", mean)
        std_t = _as_floats("std", std, positive=True)
        if len(mean_t) != len(std_t):
            raise AdvrwError(
                f"mean={mean_t} and std={std_t} are invalid: must have the same length (one per channel)"
            )
        self.register_buffer("mean", torch.tensor(mean_t, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_t, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def num_channels(self) -> int:
        return self.mean.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean, self.std
        if x.is_floating_point():
            mean, std = mean.to(dtype=x.dtype), std.to(dtype=x.dtype)
        return (x - mean) / std

    def extra_repr(self) -> str:
        fmt = lambda t: "(" + ", ".join(f"{v:.4g}" for v in t.flatten().tolist()) + ")"  # noqa: E731
        return f"mean={fmt(self.mean)}, std={fmt(self.std)}"
