"""The run keys and the override parser: which settings say *what* a run is, and which only how it ran.

One home for these lists (train's resume merge, the submitit requeue check, W&B's group, the
report's grouping all read them) so a new invocation key is added once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from omegaconf import OmegaConf

from advrw.core.errors import AdvrwError

# Settings of this invocation, not of the run: a resumed run takes them from its new command line.
INVOCATION_KEYS = ("resume", "ckpt_trust", "stop_after", "device", "progress", "checkpoint_every")
# Where the data files are, not which data: a run moved to another machine is the same run.
LOCATION_KEYS = ("dataset.root", "dataset.download", "dataset.cache_dir")
# How a run is logged and annotated.
RECORD_KEYS = ("logger", "run_info", "paper")
# Keys a resumed run may change by override; anything else must match the checkpoint.
RESUME_MUTABLE = INVOCATION_KEYS + LOCATION_KEYS + ("logger", "eval", "schedule.epochs")
# Keys a submitit requeue may see changed (it re-creates the job from the same config).
REQUEUE_MUTABLE = INVOCATION_KEYS + ("logger",)
# Not part of what a run *is*: left out of its W&B group and of the report's row key.
NOT_IDENTITY = ("seed", "sweep") + INVOCATION_KEYS + LOCATION_KEYS + RECORD_KEYS
# The checkpoints of a run dir an evaluation may score.
CHECKPOINT_CHOICES = ("last", "best", "both")


# Command-line flags Hydra answers itself (help, tab completion, config printing): no run, no checks.
HYDRA_ONLY_FLAGS = ("-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
                    "--version", "--resolve")


def hydra_only(argv: list[str]) -> bool:
    """Does this command line only ask Hydra something (``--help``, ``-sc query=bash`` ...)?"""
    return any(a in HYDRA_ONLY_FLAGS or a.split("=")[0] in HYDRA_ONLY_FLAGS for a in argv)


def override_key(override: str) -> str:
    """``+dataset.root@pkg=x`` -> ``dataset.root``: the key (or group) an override sets."""
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def override_value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def matches(key: str, keys: Iterable[str]) -> bool:
    """``key`` is one of ``keys`` or lies below one (``logger.mode`` below ``logger``)."""
    return any(key == k or key.startswith(k + ".") for k in keys)


def as_list(value) -> list:
    """A scalar or a list from the config (sweeps pass one value per job)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return list(value)
    return [value]


def without(config: Mapping, keys: Iterable[str] = NOT_IDENTITY) -> dict:
    """A plain copy of ``config`` with the dotted ``keys`` removed (``dataset.root`` drops one leaf)."""
    keys = tuple(keys)

    def walk(node, prefix):
        out = {}
        for k, v in node.items():
            dotted = f"{prefix}{k}"
            if dotted in keys:
                continue
            out[k] = walk(v, dotted + ".") if isinstance(v, Mapping) else v
        return out
    return walk(config, "")


def validate_checkpoint_choice(cfg) -> None:
    """Training's ``eval.checkpoint``: best / both need a validation split to choose best.pt on."""
    choice = cfg.eval.checkpoint
    if choice in ("best", "both") and not cfg.dataset.val_size:
        raise AdvrwError(f"eval.checkpoint={choice} needs a validation split: set dataset.val_size > 0 "
                         "(best.pt is chosen on it, never on the test set) or eval.checkpoint=last")
