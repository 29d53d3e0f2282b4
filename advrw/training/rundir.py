"""What a resumed run finds or carries in its run dir (one run at a time: :class:`advrw.core.lock.RunLock`).

:func:`prepare` removes temp files of killed saves and gives a resumed run's new dir its checkpoints
and records up to the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from advrw.core import checkpoints as ckpt_io
from advrw.core.errors import AdvrwError, CheckpointWriteError
from advrw.core.files import describe_os_error
from advrw.core.keys import REQUEUE_MUTABLE, without

log = logging.getLogger("advrw.training.rundir")

def interrupted_here(cfg, run_dir: Path) -> dict | None:
    """A requeued job (same command, same dir): continue only from a signal checkpoint of this config."""
    try:
        saved = ckpt_io.read(run_dir / "last.pt", trust=bool(cfg.get("ckpt_trust", False)), key="last.pt")
    except AdvrwError:
        return None
    if not saved.get("interrupted") or "config" not in saved:
        return None
    now = OmegaConf.to_container(cfg, resolve=True)
    return saved if without(now, REQUEUE_MUTABLE) == without(saved["config"], REQUEUE_MUTABLE) else None


def refuse_occupied(run_dir: Path) -> None:
    raise AdvrwError(f"{run_dir} already holds a run (last.pt): pass resume={run_dir} or choose a new dir")


def prepare(run_dir: Path, source: Path | None, start_epoch: int) -> None:
    """Stale temp files out; a resumed run's new dir gets its checkpoints and trimmed records."""
    dirs = {run_dir.resolve()} | ({source.parent.resolve()} if source is not None else set())
    for d in dirs:
        for p in ckpt_io.remove_stale_temps(d):
            log.info("removed %s left by an interrupted save", p)
    if source is None:
        return
    src_dir = source.parent
    if src_dir.resolve() != run_dir.resolve():
        link_or_copy(source, run_dir / "last.pt")
        if (src_dir / "best.pt").exists():
            link_or_copy(src_dir / "best.pt", run_dir / "best.pt")
    trim_metrics(src_dir / "metrics.jsonl", run_dir / "metrics.jsonl", start_epoch)


def trim_metrics(src: Path, dst: Path, epoch: int) -> None:
    """Records up to the checkpoint's epoch only: each epoch appears once after a resume."""
    if not src.exists():
        return
    keep = []
    for line in src.read_text().splitlines():
        try:
            if int(json.loads(line)["epoch"]) <= epoch:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill mid-write
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, dst)


def completed_results(source: Path, start_epoch: int, epochs: int) -> dict | None:
    """The results of a resumed run whose training and evaluation (figures included) are both done."""
    res = source.parent / "results.json"
    if start_epoch < epochs or not res.exists():
        return None
    log.info("run %s is complete (epoch %d of %d); its results are in %s", source.parent, start_epoch, epochs, res)
    return json.loads(res.read_text())


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when possible (free; saves replace files, never rewrite them), else copy; atomic."""
    if dst.exists() and dst.samefile(src):
        return
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(f"cannot write checkpoint {str(dst)!r}: {describe_os_error(err)}") from None

