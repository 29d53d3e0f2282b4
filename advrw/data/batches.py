"""Batching straight from device tensors: no DataLoader, no per-image Python.

All randomness (epoch permutation, crop offsets, flips) is drawn from one ``torch.Generator``
(or the global RNG of the data's device when it is None), in a fixed order, so two
:class:`DeviceBatches` whose generators are in the same state yield identical batches.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from advrw.core.errors import AdvrwError


def crop_flip(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop of the zero-padded image plus per-image random horizontal flip.

    ``x`` is NCHW of any dtype; returns a new tensor of the same shape, dtype and device.
    Each output image is ``padded[:, dy:dy+H, dx:dx+W]`` (dy, dx uniform in [0, 2*pad]) and then,
    with probability 1/2, flipped left-right. Draws, in order: offsets ``randint(0, 2*pad+1,
    (2, N))`` (row 0 = dy, row 1 = dx), then flips ``randint(0, 2, (N,))``.
    """
    if x.dim() != 4:
        raise AdvrwError(f"crop_flip input shape {tuple(x.shape)} is invalid: must be NCHW (4-D)")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise AdvrwError(f"crop_flip pad={pad!r} is invalid: must be an integer >= 0")
    n, c, h, w = x.shape
    dev = x.device
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=dev)
    flips = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
    if n == 0:
        return x.clone()
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = offsets[0, :, None] + ar_h  # (N, H): source rows in the padded image
    cols = offsets[1, :, None] + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)  # (N, W)
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, padded.shape[3]))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


class DeviceBatches:
    """Iterate ``(x, y)`` mini-batches over uint8 images that already live on the device.

    ``x`` comes out float32 in [0, 1], NCHW, on the device of ``x_uint8``; ``y`` int64.
    ``shuffle`` draws a fresh permutation per epoch (per ``__iter__``); ``augment`` applies
    :func:`crop_flip` (pad ``pad``) to each batch. With ``with_index=True`` each item is
    ``(x, y, idx)`` where ``idx`` are the rows of ``x_uint8`` in the batch (for per-example state).
    """

    def __init__(
        self,
        x_uint8: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        pad: int = 4,
        with_index: bool = False,
    ) -> None:
        if not isinstance(x_uint8, torch.Tensor) or x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
            desc = f"{x_uint8.dtype} {tuple(x_uint8.shape)}" if isinstance(x_uint8, torch.Tensor) else type(x_uint8).__name__
            raise AdvrwError(f"DeviceBatches images ({desc}) are invalid: must be a uint8 NCHW tensor")
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x_uint8.shape[0]:
            desc = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise AdvrwError(
                f"DeviceBatches labels {desc} are invalid: must be a 1-D tensor of length {x_uint8.shape[0]}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise AdvrwError(f"batch_size={batch_size!r} is invalid: must be an integer >= 1")
        if generator is not None and generator.device.type != x_uint8.device.type:
            raise AdvrwError(
                f"DeviceBatches generator on {generator.device} is invalid: must be on the data's device "
                f"({x_uint8.device})"
            )
        self.x = x_uint8
        self.y = y if y.dtype == torch.int64 else y.long()
        if self.y.device != self.x.device:
            self.y = self.y.to(self.x.device)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.generator = generator
        self.drop_last = bool(drop_last)
        self.pad = pad
        self.with_index = bool(with_index)
        self.order: torch.Tensor | None = None

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return self.batches()

    def batches(self, order: torch.Tensor | None = None, start: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch of batches; ``batches()`` is exactly ``iter(self)``.

        To continue an epoch that was interrupted, pass the epoch's permutation (``self.order`` as it
        was, saved in a checkpoint) and the index of the first batch still to do: no permutation is
        drawn, and with the generator restored to its state after batch ``start - 1`` the remaining
        batches (crop offsets and flips included) are those of the uninterrupted epoch.
        """
        n = self.x.shape[0]
        dev = self.x.device
        nb = len(self)
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= nb:
            raise AdvrwError(f"DeviceBatches start={start!r} is invalid: must be an integer in [0, {nb}]")
        if order is not None:
            if order.shape != (n,) or not self.shuffle:
                raise AdvrwError(f"DeviceBatches order of shape {tuple(order.shape)} is invalid: must be a "
                                 f"permutation of {n} rows (and shuffle=True)")
            order = order.to(dev)
        elif self.shuffle:  # drawn lazily, at the first batch, as before (same draw order)
            order = torch.randperm(n, generator=self.generator, device=dev)
        self.order = order  # this epoch's permutation, for a mid-epoch checkpoint
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        for start_row in range(start * self.batch_size, stop, self.batch_size):
            end = min(start_row + self.batch_size, n)
            if order is None:
                idx = torch.arange(start_row, end, device=dev)
                xb, yb = self.x[start_row:end], self.y[start_row:end]
            else:
                idx = order[start_row:end]
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
            if self.augment:
                xb = crop_flip(xb, self.pad, self.generator)
            xf = xb.float().div_(255)
            yield (xf, yb, idx) if self.with_index else (xf, yb)
