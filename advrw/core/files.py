"""Plain files of a run dir, written whole: a temp file, fsync, then rename over the target.

A failed write (disk full, read-only) removes its temp file and raises one line naming the path
(:class:`CheckpointWriteError`, exit 4), so no ``.tmp`` or 0-byte file is ever left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
from pathlib import Path

import torch

from advrw.core.errors import AdvrwError, CheckpointWriteError


def jsonable(value):
    """Tensors as numbers or lists, non-finite floats as null (JSON has no nan)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: torch wraps a failed write in a RuntimeError ("unexpected pos")."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def describe_os_error(err: OSError | None) -> str:
    if err is None:
        return "write failed"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device"
    return os.strerror(err.errno).lower() if err.errno else str(err)


def write_error(err: BaseException, path: Path | None = None) -> CheckpointWriteError | None:
    """A one-line error for a failed write, or None if ``err`` is not an I/O failure."""
    inner = os_error(err)
    if inner is None or inner.errno is None:
        return None
    where = path if path is not None else inner.filename
    shown = f" {str(where)!r}" if where else ""
    return CheckpointWriteError(f"cannot write{shown}: {describe_os_error(inner)}")


@contextlib.contextmanager
def atomic_write(path: Path, what: str = "file"):
    """``with atomic_write(p) as f:`` writes ``p`` whole or not at all (binary file object)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):  # torch.save reports ENOSPC as a RuntimeError
            kept = f"; the previous {path.name} is kept" if path.exists() else ""
            raise CheckpointWriteError(f"cannot write {what} {str(path)!r}: "
                                       f"{describe_os_error(os_error(err))}{kept}") from None
        raise


def write_json(path: Path, obj) -> None:
    text = json.dumps(jsonable(obj), indent=2).encode()
    with atomic_write(path, "record") as f:
        f.write(text)


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointWriteError(f"cannot create output dir {str(run_dir)!r}: {describe_os_error(err)}") from None
    if not os.access(run_dir, os.W_OK):
        raise AdvrwError(f"output dir {str(run_dir)!r} is not writable: pick another hydra.run.dir")


def remove_stray_run_dir(run_dir: Path) -> None:
    """After a refused or unwritable run, remove the run dir Hydra made if it holds only Hydra's files.

    Safety net for errors only knowable inside the job (e.g. ``eval.n_eval`` larger than the test
    set); anything else in the dir (a checkpoint, results, a user's file) keeps it.
    """
    hydra_files = {"config.yaml", "hydra.yaml", "overrides.yaml"}
    try:
        for e in run_dir.iterdir():
            if e.name == ".hydra" and e.is_dir() and {p.name for p in e.iterdir()} <= hydra_files:
                continue
            if e.is_file() and e.suffix == ".log":
                continue
            return
        shutil.rmtree(run_dir)
        # and the date / sweep folders Hydra made for it, when nothing else is in them
        outputs = (Path.cwd() / "outputs").resolve()
        for parent in run_dir.resolve().parents:
            if outputs not in parent.parents:  # only folders inside ./outputs, never outputs/ itself
                break
            left = [p.name for p in parent.iterdir()]
            if left and left != ["multirun.yaml"]:
                break
            shutil.rmtree(parent)
    except OSError:
        pass
