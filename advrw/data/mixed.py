"""Batches with a fixed share of extra (generated or pseudo-labelled) data: ``dataset.extra_fraction``.

The DDPM-data papers (and RST with pseudo-labels) build every batch from ``round(f * B)`` extra
images and ``B - round(f * B)`` original ones, and count an epoch on the original set. Here:

- the original rows (``train_x[:n - n_extra]``) are shuffled once per epoch with the run's
  generator and cut into chunks of ``B - k`` (``k = round(f * B)``): the epoch has
  ``ceil(n_orig / (B - k))`` batches, each original image once; the last, shorter chunk gets
  ``round(len * k / (B - k))`` extra images so the ratio holds there too;
- the extra rows (``train_x[n - n_extra:]``) are read as one stream of permutations, one per
  pass over the extra set, each drawn from its own generator seeded by ``(extra_seed, pass)``:
  without replacement until the extra set is used up, and the position in the stream is a
  function of the epoch alone, so a run resumed at an epoch boundary (``start_epoch``) reads
  exactly the extra rows the uninterrupted run would have read, with no state to checkpoint;
- augmentation (:func:`crop_flip`) draws from the run's generator on the whole batch, after
  the epoch's permutation, as :class:`DeviceBatches` does.

With ``dataset.extra_fraction: null`` the trainer keeps :class:`DeviceBatches` over the
concatenated set (the extra rows are then just more training rows).
"""

from __future__ import annotations

import logging
import math
from typing import Iterator

import torch

from advrw.data.batches import crop_flip
from advrw.core.errors import AdvrwError

log = logging.getLogger(__name__)


def extra_per_batch(fraction: float, batch_size: int) -> int:
    """Extra images in a full batch: ``round(fraction * batch_size)``."""
    return int(round(fraction * batch_size))


class MixedBatches:
    """``(x, y)`` batches of ``B - k`` original and ``k`` extra images (float [0, 1], NCHW).

    ``x_uint8`` / ``y``: the training split with its last ``n_extra`` rows from the extra data
    (as :func:`advrw.data.build_data` lays it out). Each ``__iter__`` is one epoch; the first is
    epoch ``start_epoch`` (0-indexed). In a batch the original images come first.
    """

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, n_extra: int, batch_size: int, fraction: float, *,
                 augment: bool, generator: torch.Generator | None, extra_seed: int, start_epoch: int = 0,
                 pad: int = 4) -> None:
        n = int(x_uint8.shape[0])
        if not 0 < n_extra < n:
            raise AdvrwError(f"dataset.extra_fraction={fraction} needs extra rows and original rows: "
                             f"got {n_extra} extra of {n}")
        k = extra_per_batch(fraction, batch_size)
        if not 0 < k < batch_size:
            raise AdvrwError(f"dataset.extra_fraction={fraction} with batch size {batch_size} gives {k} extra "
                             "images per batch: must leave at least one extra and one original image")
        self.x, self.y = x_uint8, y if y.dtype == torch.int64 else y.long()
        self.n_orig, self.n_extra = n - n_extra, int(n_extra)
        self.batch_size, self.k, self.b_orig = int(batch_size), k, int(batch_size) - k
        self.augment, self.generator, self.pad = bool(augment), generator, pad
        self.extra_seed = int(extra_seed)
        self.epoch = int(start_epoch)
        self._perm: tuple[int, torch.Tensor] | None = None  # (pass, permutation) cache
        self.order: torch.Tensor | None = None

    def __len__(self) -> int:
        return math.ceil(self.n_orig / self.b_orig)

    def extra_counts(self) -> list[int]:
        """Extra images in each batch of an epoch (the same every epoch)."""
        last = self.n_orig - (len(self) - 1) * self.b_orig
        return [self.k] * (len(self) - 1) + [int(round(last * self.k / self.b_orig))]

    def extras_per_epoch(self) -> int:
        return sum(self.extra_counts())

    def _pass_perm(self, p: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != p:
            g = torch.Generator(device=self.x.device)
            g.manual_seed(self.extra_seed * 1_000_003 + p)
            self._perm = (p, torch.randperm(self.n_extra, generator=g, device=self.x.device))
        return self._perm[1]

    def extra_rows(self, start: int, count: int) -> torch.Tensor:
        """Rows ``start .. start + count`` of the extra stream, as indices into ``x_uint8``."""
        parts, pos, end = [], start, start + count
        while pos < end:
            p, off = divmod(pos, self.n_extra)
            take = min(end - pos, self.n_extra - off)
            parts.append(self._pass_perm(p)[off:off + take])
            pos += take
        idx = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long, device=self.x.device)
        return idx + self.n_orig

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, order: torch.Tensor | None = None, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch; ``batches()`` is ``iter(self)``. As :meth:`DeviceBatches.batches`, an interrupted
        epoch continues from its saved permutation ``order`` at batch ``start`` (the extra stream's
        position follows from the epoch and the batch index alone)."""
        dev = self.x.device
        if order is None:
            order = torch.randperm(self.n_orig, generator=self.generator, device=dev)
        self.order = order = order.to(dev)  # this epoch's permutation, for a mid-epoch checkpoint
        counts = self.extra_counts()
        stream = self.epoch * self.extras_per_epoch() + sum(counts[:start])
        self.epoch += 1
        for i in range(start, len(counts)):
            k = counts[i]
            idx = torch.cat([order[i * self.b_orig:(i + 1) * self.b_orig], self.extra_rows(stream, k)])
            stream += k
            xb = self.x.index_select(0, idx)
            if self.augment:
                xb = crop_flip(xb, self.pad, self.generator)
            yield xb.float().div_(255), self.y.index_select(0, idx)


def validate_extra(cfg) -> None:
    """``dataset.extra_fraction``: null, or a number in (0, 1) with ``dataset.extra_npz`` set."""
    ds = cfg.dataset
    f = ds.get("extra_fraction")
    if f is None:
        return
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
        raise AdvrwError(f"dataset.extra_fraction={f} is invalid: must be a number in (0, 1) "
                         "(the share of extra images in each batch) or null")
    if ds.get("extra_npz") is None:
        raise AdvrwError(f"dataset.extra_fraction={f} needs dataset.extra_npz (the extra images to mix in)")
    bs = cfg.get("schedule", {}).get("batch_size")
    if isinstance(bs, int) and not 0 < extra_per_batch(f, bs) < bs:
        raise AdvrwError(f"dataset.extra_fraction={f} with schedule.batch_size={bs} gives "
                         f"{extra_per_batch(f, bs)} extra images per batch: must leave at least one of each kind")


def mixed_batches(data, cfg, generator: torch.Generator | None, start_epoch: int) -> MixedBatches:
    """The trainer's batch source for ``dataset.extra_fraction`` (see the module docstring)."""
    mb = MixedBatches(data.train_x, data.train_y, data.n_extra, int(cfg.schedule.batch_size),
                        float(cfg.dataset.extra_fraction), augment=data.augment, generator=generator,
                        extra_seed=int(cfg.seed), start_epoch=start_epoch)
    log.info("extra data: %d of %d images per batch are extra (%.4f; dataset.extra_fraction=%s); an epoch is %d "
             "batches over the %d original images, %d extra images", mb.k, mb.batch_size, mb.k / mb.batch_size,
             cfg.dataset.extra_fraction, len(mb), mb.n_orig, mb.extras_per_epoch())
    return mb
