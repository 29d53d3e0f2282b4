"""Plain files of a run dir: JSON records written whole (temp file + rename) and the writable check."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from advrw.core.errors import AdvrwError


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


def write_json(path: Path, obj) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=2))
    tmp.replace(path)


def check_writable(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(run_dir, os.W_OK):
        raise AdvrwError(f"output dir {str(run_dir)!r} is not writable: pick another hydra.run.dir")
