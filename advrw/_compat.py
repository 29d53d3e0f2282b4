"""Import torchvision next to a CPU-only torch.

PyPI's torchvision wheels are CUDA builds; beside the CPU torch wheel their import dies with
``operator torchvision::nms does not exist`` because the compiled ops library cannot load.
advrw only uses torchvision's pure-Python parts (datasets, which we decode with PIL), so when
-- and only when -- that exact failure happens we declare the two op schemas it registers
fake kernels for and import again. Where torchvision imports normally this does nothing.
"""

from __future__ import annotations

import importlib
import sys

_LIB = None  # keep the Library object alive: dropping it removes the definitions


def import_torchvision():
    """Return the ``torchvision`` module, applying the CPU-torch workaround if needed."""
    global _LIB
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::nms does not exist" not in str(err):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # drop the half-imported package before retrying
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    return importlib.import_module("torchvision")
