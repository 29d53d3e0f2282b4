"""Which checkpoint files a run keeps, and when: called once per epoch, like timm's CheckpointSaver.

``last.pt`` is written on the ``checkpoint_every`` schedule, at the last epoch, before a stop and
whenever the epoch is a new best; ``best.pt`` (highest validation PGD accuracy) is then a hard link
to that ``last.pt`` (saves replace files, never rewrite them). So ``last.pt`` always exists once an
epoch with a checkpoint ended, and a kill during any save leaves the previous files intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from advrw.core import checkpoints as ckpt_io
from advrw.training.rundir import link_or_copy


class Checkpointer:
    """``save(epoch, ...)`` writes last.pt/best.pt; ``payload(epoch, **fields)`` builds a checkpoint."""

    def __init__(self, run_dir: Path, every: int, payload: Callable[..., dict], refuse: Callable[..., Exception],
                 best: float = -1.0, has_last: bool = False):
        self.run_dir, self.every, self.payload, self.refuse = Path(run_dir), int(every), payload, refuse
        self.best = best
        self.saved_last: Path | None = self.run_dir / "last.pt" if has_last else None

    def is_best(self, metric: float | None) -> bool:
        return metric is not None and metric > self.best

    def write(self, name: str, payload: dict, epoch: int, step: int | None = None) -> Path:
        """Atomic save that never writes a non-finite tensor (BN running stats included)."""
        bad = ckpt_io.nonfinite_tensors({"model": payload["model"], "optimizer": payload["optimizer"]})
        if bad:
            raise self.refuse(epoch, step, f"the weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
        path = self.run_dir / name
        ckpt_io.save(path, payload)
        if name == "last.pt":
            self.saved_last = path
        return path

    def end_epoch(self, epoch: int, metric: float | None, final: bool, interrupted: str | None) -> bool:
        """After epoch ``epoch`` (0-based): last.pt when due, best.pt when ``metric`` is a new best.

        Returns whether the epoch was a new best. ``best`` is updated before the payload is built,
        so both files carry it."""
        best = self.is_best(metric)
        if best:
            self.best = float(metric)
        due = (epoch + 1) % self.every == 0 or final or interrupted is not None or best
        if due:
            last = self.write("last.pt", self.payload(epoch + 1, interrupted=None if final else interrupted), epoch)
            if best:
                link_or_copy(last, self.run_dir / "best.pt")
        return best
