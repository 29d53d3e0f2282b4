"""Config helpers shared by the entry points: resolvers, device, run records.

Validation of config values lives in :mod:`advrw.validation`.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import torch
from omegaconf import OmegaConf

from advrw.errors import AdvrwError

log = logging.getLogger(__name__)


def register_resolvers() -> None:
    """``${mul:a,b}``: budgets written relative to eps (PGD-20 step = eps/10)."""
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: float(a) * float(b))
    from advrw.campaign import register_resolvers as campaign_resolvers  # ${advrw_uid:}, ${advrw_min:}

    campaign_resolvers()


register_resolvers()


def as_list(value) -> list:
    """A scalar or a list from the config (sweeps pass one value per job)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return list(value)
    return [value]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AdvrwError(f"device={name!r} is invalid: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AdvrwError(f"device={name!r} is not available here: no CUDA device; use device=cpu or auto")
    return device


def amp_dtype(precision: str):
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    raise AdvrwError(f"precision={precision!r} is unknown: choose fp32 or bf16")


def __getattr__(name: str):
    """``validate_train`` / ``validate_eval`` now live in ``advrw.validation`` (re-exported lazily:
    validation imports the suite, which imports this module)."""
    if name in ("validate_train", "validate_eval"):
        from advrw import validation

        return getattr(validation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_writable(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(run_dir, os.W_OK):
        raise AdvrwError(f"output dir {str(run_dir)!r} is not writable: pick another hydra.run.dir")


def git_commit() -> str | None:
    """The commit of the advrw checkout (None outside git); recorded with every run."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
