"""One run per dir: :class:`RunLock`, taken before a training or an evaluation writes anything.

``fcntl.flock`` on ``run.lock`` is atomic and the kernel drops it when the process dies, so a lock
file whose pid is gone is reported as stale and taken over; a live one refuses the launch in one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from advrw.core.errors import AdvrwError

log = logging.getLogger("advrw.core.lock")

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
                raise AdvrwError(_in_use(self.path, holder)) from None
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


def _in_use(path: Path, holder: str) -> str:
    return (f"{path.parent} is in use by a running advrw process (pid {holder}, {path}): wait for it or "
            "choose another hydra.run.dir")


def check_free(run_dir: Path) -> None:
    """Refuse (one line) when a live process holds ``run_dir``'s lock: the command-line precheck asks
    before Hydra writes its ``.hydra/`` files into that dir. It reads the pid without locking (a
    probe lock could make a simultaneous launch's real lock fail); the run's own lock decides."""
    try:
        holder = (Path(run_dir) / LOCK_NAME).read_text().strip()
    except OSError:  # no lock file: free
        return
    if not holder.isdigit() or int(holder) == os.getpid():
        return
    try:
        os.kill(int(holder), 0)
    except ProcessLookupError:  # a stale lock: the run takes it over and says so
        return
    except PermissionError:  # alive, another user's
        pass
    raise AdvrwError(_in_use(Path(run_dir) / LOCK_NAME, holder))
