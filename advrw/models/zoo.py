"""RobustBench's model zoo, offline: ``ckpt=robustbench:<Name>`` and the layout ``advrw.export`` writes.

A zoo checkpoint is a file in RobustBench's own layout, ``<model_dir>/<dataset>/<threat_model>/<Name>.pt``
(``robustbench.model_dir``, default ``./models``); advrw never downloads. An entry of RobustBench's
zoo is built with the ``robustbench`` package's own architecture (``model_zoo.model_dicts``, so
also the timm-served ones, from the local file) and its weights read through
``advrw.core.checkpoints``. A file with an advrw model-info JSON beside it (``<Name>.json`` with an
``advrw`` block, written by ``python -m advrw.export <run dir> --robustbench``) is an advrw model
and is rebuilt with ``advrw.models.build_model``.

``import_robustbench`` makes robustbench 1.1.1 importable whatever the install order: it needs a
module named ``autoattack`` (PyPI ships that code as ``pyautoattack``: aliased here),
``pkg_resources`` (setuptools < 81), torchvision beside a CPU torch (``advrw._compat``); and it
refuses a ``robustbench`` that is not the real distribution -- torchattacks 3.5.1's wheel ships a
2022 copy into site-packages, which a later install overwrites file by file or shadows.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import pkgutil
import sys
from pathlib import Path

from advrw.core.errors import AdvrwError

PREFIX = "robustbench:"
# Files whose content must match the distribution's RECORD (the ones torchattacks' copy also has).
_CHECKED = ("robustbench/__init__.py", "robustbench/utils.py", "robustbench/model_zoo/cifar10.py")


def is_zoo(ckpt) -> bool:
    return isinstance(ckpt, str) and ckpt.startswith(PREFIX)


def zoo_path(ckpt: str, rb) -> Path:
    """``<model_dir>/<dataset>/<threat_model>/<Name>.pt`` for ``ckpt=robustbench:<Name>``."""
    name = ckpt[len(PREFIX):]
    if not name or "/" in name:
        raise AdvrwError(f"ckpt={ckpt} is invalid: write ckpt=robustbench:<Name>, e.g. robustbench:Zhang2020Geometry")
    return Path(str(rb["model_dir"])).expanduser() / str(rb["dataset"]) / str(rb["threat_model"]) / f"{name}.pt"


def missing_message(ckpt: str, path: Path, rb) -> str:
    name = ckpt[len(PREFIX):]
    return (f"ckpt={ckpt}: no file at {path} (advrw evaluates zoo entries offline): put RobustBench's checkpoint "
            f"there, e.g. on a machine with internet: python -c \"from robustbench.utils import load_model; "
            f"load_model('{name}', model_dir='{rb['model_dir']}', dataset='{rb['dataset']}', "
            f"threat_model='{rb['threat_model']}')\", or set robustbench.model_dir=")


def _record_matches(dist, rel: str) -> bool:
    for f in dist.files or []:
        if str(f).replace("\\", "/") == rel and f.hash is not None:
            data = Path(dist.locate_file(f)).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.new(f.hash.mode, data).digest()).rstrip(b"=").decode()
            return digest == f.hash.value
    return False


def import_robustbench():
    """The real ``robustbench`` package, importable (see the module docstring); one line if not."""
    from advrw._compat import import_torchvision  # deferred: torchvision only for the zoo

    hint = "pip install -e \".[robustbench]\" (robustbench 1.1.1, setuptools<81, pyautoattack)"
    try:
        dist = importlib.metadata.distribution("robustbench")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    spec = importlib.util.find_spec("robustbench")
    if spec is None:
        raise AdvrwError(f"ckpt=robustbench:... needs the robustbench package, which is not installed: {hint}")
    if dist is None or not all(_record_matches(dist, rel) for rel in _CHECKED):
        raise AdvrwError(f"the robustbench package at {Path(spec.origin).parent} is not the robustbench distribution "
                         "(torchattacks 3.5.1 ships an old copy of it into site-packages): "
                         "pip install --force-reinstall --no-deps robustbench==1.1.1")
    if importlib.util.find_spec("pkg_resources") is None:
        raise AdvrwError("robustbench 1.1.1 imports pkg_resources, which setuptools >= 81 no longer has: "
                         "pip install \"setuptools<81\"")
    if importlib.util.find_spec("autoattack") is None:  # the same code, packaged as pyautoattack
        import pyautoattack

        sys.modules["autoattack"] = pyautoattack
        for m in pkgutil.iter_modules(pyautoattack.__path__):
            if not m.name.startswith("utils_tf"):  # TensorFlow helpers: not used, not importable here
                sys.modules[f"autoattack.{m.name}"] = importlib.import_module(f"pyautoattack.{m.name}")
    import_torchvision()
    return importlib.import_module("robustbench")


def zoo_entry(name: str, rb):
    """RobustBench's architecture constructor for ``name`` (built without weights)."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts  # deferred: the optional package
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        entries = model_dicts[BenchmarkDataset(str(rb["dataset"]))][ThreatModel(str(rb["threat_model"]))]
    except (ValueError, KeyError):
        raise AdvrwError(f"robustbench.dataset={rb['dataset']} / threat_model={rb['threat_model']} is not a "
                         "RobustBench benchmark (e.g. cifar10 / Linf)") from None
    if name not in entries:
        raise AdvrwError(f"ckpt=robustbench:{name} is not in RobustBench's {rb['dataset']}/{rb['threat_model']} zoo "
                         "and has no advrw model-info JSON beside it")
    return entries[name]["model"]


def advrw_info(path: Path) -> dict | None:
    """The ``advrw`` block of an exported model's info JSON beside ``path``, if there is one."""
    info = path.with_suffix(".json")
    if not info.is_file():
        return None
    try:
        return json.loads(info.read_text()).get("advrw")
    except (OSError, ValueError) as err:
        raise AdvrwError(f"{info} is unreadable: {err}") from None
