"""Config helpers shared by the entry points: resolvers, validation, device, run records.

Validation runs on the composed config before any data is read or any file is written, and
raises ``AdvrwError`` with one line naming the bad value and what is allowed.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from advrw.attacks.pgd import check_budget
from advrw.errors import AdvrwError
from advrw.hardware import validate_runtime

log = logging.getLogger(__name__)


def register_resolvers() -> None:
    """``${mul:a,b}``: budgets written relative to eps (PGD-20 step = eps/10)."""
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: float(a) * float(b))


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


def _positive(name, value, allow_zero=False):
    ok = value is not None and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise AdvrwError(f"{name}={value} is invalid: must be {'>= 0' if allow_zero else '> 0'}")


def validate_eval(cfg: DictConfig) -> None:
    """The evaluation suite's inputs: attack names, budgets, alpha_test, rho, n_eval."""
    from advrw.suite import ATTACK_KINDS  # local: suite imports this module

    ev = cfg.eval
    _positive("eval.eps", ev.eps)
    _positive("eval.batch_size", ev.batch_size)
    if ev.n_eval is not None:
        _positive("eval.n_eval", ev.n_eval)
    if ev.checkpoint not in ("last", "best"):
        raise AdvrwError(f"eval.checkpoint={ev.checkpoint!r} is unknown: choose last or best")
    for name, spec in (ev.attacks or {}).items():
        kind = spec.get("kind")
        if kind not in ATTACK_KINDS:
            raise AdvrwError(f"eval.attacks.{name}.kind={kind!r} is unknown: choose one of {', '.join(ATTACK_KINDS)}")
        if kind == "pgd":
            check_budget(ev.eps, spec.step, spec.steps, spec.get("init", "uniform"), prefix=f"eval.attacks.{name}")
    for name in as_list(ev.get("only")):
        if name not in (ev.attacks or {}):
            raise AdvrwError(f"eval.only names attack {name!r}, which eval={ev.name} does not have: "
                             f"choose from {', '.join(ev.attacks or {})}")
    for a in as_list(ev.alpha_test):
        if a is None or a < 0:
            raise AdvrwError(f"eval.alpha_test={a} is invalid: must be >= 0")
    for r in as_list(ev.rho):
        if r is None or r < 0:
            raise AdvrwError(f"eval.rho={r} is invalid: must be >= 0")
    from advrw.suite import selected_attacks

    chosen = selected_attacks(ev)
    if (as_list(ev.alpha_test) or as_list(ev.rho)) and ev.nonuniform_attack not in chosen:
        raise AdvrwError(f"eval.nonuniform_attack={ev.nonuniform_attack!r} is not one of the attacks to run "
                         f"({', '.join(chosen) or 'none'}): the non-uniform metrics need it")


def validate_train(cfg: DictConfig) -> None:
    """Everything a training run could reject, checked before any work."""
    from advrw.data import DATASET_NAMES
    from advrw.defenses import DEFENSES
    from advrw.models import MODEL_NAMES
    from advrw.weighting import COMBINES, SCHEMES

    if cfg.dataset.name not in DATASET_NAMES:
        raise AdvrwError(f"dataset.name={cfg.dataset.name!r} is unknown: choose one of {', '.join(DATASET_NAMES)}")
    if cfg.model.name not in MODEL_NAMES:
        raise AdvrwError(f"model.name={cfg.model.name!r} is unknown: choose one of {', '.join(MODEL_NAMES)}")
    if cfg.defense.name not in DEFENSES:
        raise AdvrwError(f"defense.name={cfg.defense.name!r} is unknown: choose one of {', '.join(DEFENSES)}")
    if cfg.weighting.name not in SCHEMES:
        raise AdvrwError(f"weighting.name={cfg.weighting.name!r} is unknown: choose one of {', '.join(SCHEMES)}")
    if cfg.weighting.combine not in COMBINES:
        raise AdvrwError(f"weighting.combine={cfg.weighting.combine!r} is unknown: choose one of {', '.join(COMBINES)}")
    a = cfg.attack
    check_budget(a.eps, a.step, a.steps, a.init, a.bn_mode, prefix="attack")
    losses = ("auto", "ce", "kl", "cw", "scaled_ce")
    if a.get("loss", "auto") not in losses:
        raise AdvrwError(f"attack.loss={a.loss!r} is unknown: choose one of {', '.join(losses)}")
    if a.weighted and a.get("loss", "auto") not in ("auto", "ce", "kl"):
        raise AdvrwError(f"attack.loss={a.loss} cannot be combined with attack.weighted=true: choose auto, ce or kl")
    if a.weighted and a.alpha < 0:
        raise AdvrwError(f"attack.alpha={a.alpha} is invalid: must be >= 0")
    s = cfg.schedule
    if int(s.epochs) != s.epochs or s.epochs < 1:
        raise AdvrwError(f"schedule.epochs={s.epochs} is invalid: must be an integer >= 1")
    if s.burn_in < 0 or s.burn_in >= s.epochs:
        raise AdvrwError(f"schedule.burn_in={s.burn_in} is invalid: must be >= 0 and < schedule.epochs ({s.epochs})")
    _positive("schedule.lr", s.lr)
    _positive("schedule.weight_decay", s.weight_decay, allow_zero=True)
    _positive("schedule.batch_size", s.batch_size)
    if s.optimizer != "sgd":
        raise AdvrwError(f"schedule.optimizer={s.optimizer!r} is unknown: choose sgd")
    if s.lr_schedule not in ("piecewise", "cosine"):
        raise AdvrwError(f"schedule.lr_schedule={s.lr_schedule!r} is unknown: choose piecewise or cosine")
    if cfg.logger.name not in ("wandb", "none"):
        raise AdvrwError(f"logger.name={cfg.logger.name!r} is unknown: choose wandb or none")
    if cfg.dataset.val_size is None or cfg.dataset.val_size < 0:
        raise AdvrwError(f"dataset.val_size={cfg.dataset.val_size} is invalid: must be >= 0")
    if cfg.eval.checkpoint == "best" and not cfg.dataset.val_size:
        raise AdvrwError("eval.checkpoint=best needs a validation split: set dataset.val_size > 0 (or eval.checkpoint=last)")
    validate_runtime(cfg)  # precision, channels_last, compile (advrw.hardware)
    resolve_device(cfg.device)
    validate_eval(cfg)
    # Resolving every interpolation here turns a typo'd ${...} into an error now, not at epoch 75.
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # omegaconf raises several types; one line is what matters
        raise AdvrwError(f"config does not resolve: {str(err).splitlines()[0]}") from None


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
