"""Checkpoint files: where they are, how they are read, written and put into a model.

- :func:`resolve` -- the one "run dir or .pt -> file" rule (``resume=``, ``ckpt=``, best/last).
- :func:`read` -- the one reader. Every load uses ``torch.load(weights_only=True)``: tensors, plain
  containers and numbers only, so a downloaded file cannot run code. A file that needs arbitrary
  unpickling is refused in one line unless the caller passes ``trust=True`` (``ckpt_trust=true``).
  Checkpoints of earlier advrw versions (numpy RNG state as an ``ndarray``) load too: numpy's plain
  array constructor is the only global allowed beyond torch's defaults.
- :func:`save` -- atomic (temp file, fsync, rename); a failed save removes its temp file and raises
  one line naming the path (ENOSPC reads "no space left on device"), exit 4.
- :func:`rng_state` / :func:`restore_rng` -- every RNG as tensors and plain lists (weights_only-safe).
- :func:`load_model_state` -- strict load; a mismatch names the missing/unexpected layers or the
  shapes; :func:`nonfinite_tensors` lists weights holding nan/inf.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from advrw.core.errors import AdvrwError, CheckpointWriteError
from advrw.core.files import atomic_write

__all__ = ["CheckpointWriteError", "resolve", "read", "save", "rng_state", "restore_rng", "model_state",
           "load_model_state", "nonfinite_tensors", "remove_stale_temps"]

TRUST_KEY = "ckpt_trust"


# ----------------------------------------------------------------------------------- where
def resolve(spec, kind: str = "last", key: str = "ckpt") -> Path:
    """``spec`` (a run dir or a file) -> the checkpoint file; a run dir gives ``<kind>.pt``."""
    given = Path(str(spec)).expanduser()
    p = given / f"{kind}.pt" if given.is_dir() else given
    if not p.is_file():
        if p.name == "best.pt" and (p.parent / "last.pt").is_file():
            raise AdvrwError(missing(spec, p, key))
        raise AdvrwError(f"{key}={spec} has no checkpoint: {p} does not exist (expected a run dir with {kind}.pt "
                         "or a .pt file)")
    return p


# ----------------------------------------------------------------------------------- reading
def _legacy_globals() -> list:
    """What checkpoints before weights_only held beyond torch's defaults: the numpy RNG state as an
    ndarray (numpy's plain-array constructor; its elements still go through torch's restricted
    unpickler) and ``torch.__version__`` (a ``str`` subclass) in ``run_info``."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), torch.torch_version.TorchVersion]


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:160]}" if text else type(err).__name__


def read(path: str | Path, trust: bool = False, key: str = "ckpt", mmap: bool = False) -> dict:
    """A checkpoint file as a dict on the CPU; one-line AdvrwError when missing, unreadable or unsafe.

    ``mmap`` maps a zip checkpoint instead of reading it (the precheck only needs its config).
    """
    path = Path(path)
    name = f"{key}={path}"
    if path.is_dir():
        raise AdvrwError(f"{name} is a directory: pass a .pt file (or a run dir where a run dir is allowed)")
    if not path.is_file():
        raise AdvrwError(f"{name} does not exist")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        raise AdvrwError(f"{name} is unreadable: {_first_line(err)}") from None
    zipped = head.startswith(b"PK")
    if not (zipped or head[:1] == b"\x80"):  # torch's zip format, or a legacy pickle
        raise AdvrwError(f"{name} is unreadable: not a torch checkpoint (neither a torch zip archive nor a pickle)")
    try:
        if trust:
            obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap and zipped)
        else:
            with torch.serialization.safe_globals(_legacy_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise AdvrwError(f"{name} was not loaded: it holds objects beyond tensors and plain containers, and "
                             f"unpickling them could run code; if you trust its source, pass {TRUST_KEY}=true") from None
        raise AdvrwError(f"{name} is unreadable: {_first_line(err)}") from None
    except Exception as err:  # zip/pickle errors vary; the user needs the path and the reason
        raise AdvrwError(f"{name} is unreadable: {_first_line(err)}") from None
    if not isinstance(obj, dict):
        raise AdvrwError(f"{name} is not a dict of tensors or an advrw checkpoint (it holds a {type(obj).__name__})")
    return obj


# ----------------------------------------------------------------------------------- writing
def save(path: Path, payload: dict) -> None:
    # A Python file object (not a path) so the OSError (e.g. ENOSPC) survives as the context.
    with atomic_write(Path(path), "checkpoint") as f:
        torch.save(payload, f)


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


# ----------------------------------------------------------------------------------- RNG states
def rng_state(generator: torch.Generator | None) -> dict:
    """Every RNG as tensors and plain lists, so the checkpoint loads under weights_only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def missing(ckpt, path: Path, key: str = "ckpt") -> str:
    """Why ``ckpt=`` names no file: a run without a validation split has no best.pt, and says so."""
    path = Path(path)
    if path.name == "best.pt" and (path.parent / "last.pt").is_file():
        return (f"{key}={ckpt} has no best.pt: best.pt is chosen on a validation split and this run trained "
                "without one (dataset.val_size=0); score last.pt with eval.checkpoint=last, or train with "
                "dataset.val_size=1000")
    return f"{key}={ckpt} does not exist" + (f" (looked for {path})" if path != Path(str(ckpt)) else "")


def restore_rng(state: dict, generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    if isinstance(npy, dict):
        np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                             npy["cached_gaussian"]))
    else:  # an earlier advrw version: numpy's own tuple
        np.random.set_state(npy)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


# ----------------------------------------------------------------------------------- model weights
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


def nonfinite_tensors(obj, prefix: str = "") -> list[str]:
    """Names of floating tensors holding nan/inf anywhere in a nested checkpoint payload."""
    bad = []
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            bad.append(prefix or "tensor")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            bad += nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad += nonfinite_tensors(v, f"{prefix}[{i}]")
    return bad


def _names(keys, n: int = 4) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_model_state(model: torch.nn.Module, state: dict, where: str, model_name: str, num_classes: int) -> None:
    """Strict load of finite weights, with a one-line message for the usual mismatches."""
    ours, theirs = model.state_dict(), state
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    if missing or unexpected:
        parts = ([f"missing layer names: {_names(missing)}"] if missing else []) + \
                ([f"unexpected layer names: {_names(unexpected)}"] if unexpected else [])
        raise AdvrwError(f"checkpoint {where!r} does not match model={model_name} ({'; '.join(parts)})")
    shapes = [k for k, v in ours.items() if hasattr(theirs[k], "shape") and tuple(theirs[k].shape) != tuple(v.shape)]
    if shapes:
        k = shapes[0]
        head = ""
        v = theirs[k]
        if v.ndim == 2 and k.endswith("weight") and v.shape[0] != num_classes and \
                k.split(".")[0] in ("fc", "linear", "classifier", "fc3", "head"):
            head = f"; its classifier has {v.shape[0]} outputs but the data set has {num_classes} classes"
        raise AdvrwError(f"checkpoint {where!r} does not match model={model_name} (different shapes: {k} is "
                         f"{tuple(v.shape)} in the file, {tuple(ours[k].shape)} in the model{head})")
    bad = nonfinite_tensors(theirs)
    if bad:
        raise AdvrwError(f"checkpoint {where!r} has non-finite weights (nan/inf in {_names(bad, 3)}): "
                         "nothing to evaluate or resume")
    model.load_state_dict(state, strict=True)
