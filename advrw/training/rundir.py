"""The run dir: one run at a time (an exclusive lock), and what a resumed run finds or carries there.

:class:`RunLock` is taken before the run writes anything: ``fcntl.flock`` on ``run.lock`` is atomic
and the kernel drops it when the process dies, so a lock file whose pid is gone is reported as
stale and taken over; a live one refuses the launch in one line. :func:`prepare` removes temp files
of killed saves and gives a resumed run's new dir its checkpoints and records up to the checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
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

LOCK_NAME = "run.lock"


class RunLock:
    """``with RunLock(run_dir):`` -- this process is the only run in ``run_dir`` until the block ends."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except PermissionError:
                raise AdvrwError(f"output dir {str(self.path.parent)!r} is not writable: pick another "
                                 "hydra.run.dir") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise AdvrwError(f"{self.path.parent} is in use by a running advrw process (pid {holder}, "
                                 f"{self.path}): wait for it or choose another hydra.run.dir") from None
            try:  # the file we locked may have been released and removed meanwhile: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if old.isdigit() and int(old) != os.getpid():
            log.warning("%s was left by pid %s, which is no longer running (stale lock): taking it over",
                        self.path, old)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before the unlock: a waiting launch then re-opens the path (see above)
        os.close(self.fd)
        self.fd = None


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

