"""``resume=``: the checkpoint a run continues, and the one merge of its config with the command line.

Both the command-line precheck (which validates what the resumed run will be, for every job) and
the training loop call these, so a resume is refused or accepted the same way in both places.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from advrw.core import checkpoints as ckpt_io
from advrw.core.errors import AdvrwError
from advrw.core.keys import INVOCATION_KEYS, RESUME_MUTABLE, matches, override_key


def training_checkpoint(cfg: DictConfig, mmap: bool = False) -> tuple[Path, dict]:
    """``(path, contents)`` of the checkpoint ``resume=`` names; refused unless it is advrw's own."""
    path = ckpt_io.resolve(cfg.resume, "last", key="resume")
    saved = ckpt_io.read(path, trust=bool(cfg.get("ckpt_trust", False)), key="resume", mmap=mmap)
    if "config" not in saved or "optimizer" not in saved:
        raise AdvrwError(f"resume={cfg.resume}: {path} is not an advrw training checkpoint (no config/optimizer)")
    return path, saved


def merge(cfg: DictConfig, saved: dict, overrides: list[str], choices_now: dict) -> DictConfig:
    """The checkpoint's config with the command line's allowed changes applied.

    ``overrides`` are the job's command-line overrides and ``choices_now`` its group selections; a
    change of anything outside :data:`advrw.core.keys.RESUME_MUTABLE` is refused in one line.
    """
    saved_cfg = OmegaConf.create(saved["config"])
    choices = saved.get("choices", {})
    for o in overrides:
        key = override_key(o)
        if key.startswith("hydra") or "=" not in o:
            continue
        if key in choices:  # a group selection, e.g. model=wrn34_10
            if key in RESUME_MUTABLE:
                saved_cfg[key] = cfg[key]
            elif choices_now.get(key) != choices[key]:
                raise AdvrwError(f"resume: {key}={choices_now.get(key)} does not match the checkpoint's "
                                 f"{key}={choices[key]}; a resumed run keeps its config (start a new run instead)")
            continue
        if matches(key, RESUME_MUTABLE):
            OmegaConf.update(saved_cfg, key, OmegaConf.select(cfg, key), force_add=True)
        elif OmegaConf.select(saved_cfg, key) != OmegaConf.select(cfg, key):
            raise AdvrwError(f"resume: {key}={o.partition('=')[2]} does not match the checkpoint's {key}="
                             f"{OmegaConf.select(saved_cfg, key)}; a resumed run keeps its config")
    for key in INVOCATION_KEYS:
        saved_cfg[key] = cfg.get(key)
    return saved_cfg


def group_choices(overrides: list[str]) -> dict:
    """The group selections of an override list (``model=tiny`` -> ``{"model": "tiny"}``)."""
    return {override_key(o): o.split("=", 1)[1] for o in overrides
            if "=" in o and "." not in override_key(o) and not o.startswith("~")}
