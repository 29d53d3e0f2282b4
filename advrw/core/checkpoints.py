"""Checkpoints: model, optimiser, scheduler, RNG states, epoch and the run's resolved config.

Written atomically (temp file + fsync + rename) so an interrupted save never leaves a broken file;
a failed save removes its temp file and raises one line naming the path and the reason (ENOSPC
reads "no space left on device").
``load_model_state`` also reads a plain ``state_dict`` (e.g. a released model).
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import numpy as np
import torch

from advrw.core.errors import AdvrwError


def rng_state(generator: torch.Generator | None) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict, generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


class CheckpointWriteError(AdvrwError):
    """A checkpoint could not be written (disk full, read-only, permissions); the old file is intact."""

    exit_code = 4


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


def save(path: Path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        # A Python file object (not a path) so the OSError (e.g. ENOSPC) survives as the context.
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(err, (OSError, RuntimeError)):
            kept = f"; the previous {path.name} is kept" if path.exists() else ""
            raise CheckpointWriteError(f"cannot write checkpoint {str(path)!r}: "
                                       f"{describe_os_error(os_error(err))}{kept}") from None
        raise


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete ``*.tmp`` left by a save that was killed (kill -9, a second signal)."""
    removed = []
    for p in Path(run_dir).glob("*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def read(path: str | Path) -> dict:
    """Load a checkpoint file onto the CPU; one-line AdvrwError when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise AdvrwError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle/zip errors vary; the user needs the path and the reason
        raise AdvrwError(f"checkpoint {str(path)!r} is unreadable: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(obj, dict):
        raise AdvrwError(f"checkpoint {str(path)!r} is not a dict of tensors or an advrw checkpoint")
    return obj


def model_state(obj: dict) -> dict:
    """The model weights of an advrw checkpoint or a plain state_dict (common wrappers unwrapped)."""
    for key in ("model", "state_dict", "model_state_dict", "net"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    # DM-Improves-AT's DataParallel(Sequential(model)) files; then DataParallel / torch.compile prefixes
    if obj and all(str(k).startswith("module.0.") for k in obj):
        obj = {k.removeprefix("module.0."): v for k, v in obj.items()}
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def load_model_state(model: torch.nn.Module, state: dict, where: str, model_name: str, num_classes: int) -> None:
    """Strict load with a one-line message for the usual mismatches (model=, class count)."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        text = str(err)
        head = ""
        for k, v in state.items():
            if hasattr(v, "shape") and v.ndim == 2 and k.endswith("weight") and v.shape[0] != num_classes and \
                    k.split(".")[0] in ("fc", "linear", "classifier", "fc3", "head"):
                head = f"; its classifier has {v.shape[0]} outputs but the data set has {num_classes} classes"
        missing = "missing keys" in text
        raise AdvrwError(f"checkpoint {where!r} does not match model={model_name} "
                         f"({'different layer names' if missing else 'different shapes'}{head})") from None
