"""``python -m advrw.eval ckpt=...``: the evaluation suite on any checkpoint.

An advrw checkpoint carries its resolved config: its ``dataset`` and ``model`` are used unless
the command line selects or changes them (``model=``, ``dataset.root=`` ...). A plain
``state_dict`` (a released model) is evaluated with the ``model=`` and ``dataset=`` given.
Results, figures and W&B records go to this evaluation's own run dir.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from advrw.config import CONF_DIR
from advrw.core.errors import AdvrwError
from advrw.config.entry import start
from advrw.core.keys import override_key

log = logging.getLogger("advrw.eval")


def effective_config(cfg: DictConfig, saved: dict | None) -> DictConfig:
    """Dataset/model from the checkpoint's config; ``dataset.*``/``model.*`` overrides apply on top.

    A group selection (``dataset=svhn``) replaces the checkpoint's choice; a key override
    (``dataset.root=<moved archive>``) only changes that key of the checkpoint's dataset.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    if not (saved and "config" in saved):
        return cfg
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    for group in ("dataset", "model"):
        if group not in saved["config"] or any(override_key(o) == group for o in overrides):
            continue
        merged = OmegaConf.create(saved["config"][group])
        for o in overrides:
            key = override_key(o)
            if key.startswith(group + "."):
                OmegaConf.update(merged, key[len(group) + 1:], OmegaConf.select(cfg, key), force_add=True)
        cfg[group] = merged
    _whole_test_split(cfg, saved["config"], overrides)
    trained = bool(saved["config"].get("dataset", {}).get("normalize", False))
    now = bool(cfg.dataset.get("normalize", False))
    if trained != now:
        raise AdvrwError(f"the checkpoint was trained with dataset.normalize={str(trained).lower()} (a mean/std layer "
                         f"{'inside' if trained else 'not in'} the model) but this evaluation sets "
                         f"dataset.normalize={str(now).lower()}: drop the override or set "
                         f"dataset.normalize={str(trained).lower()}")
    return cfg


def _whole_test_split(cfg: DictConfig, trained: dict, overrides: list[str]) -> None:
    """Score the whole test split unless told otherwise: a training run's ``dataset.n_test`` subset (a
    quick check's 200 images) is not inherited silently, and the choice is said either way."""
    n_test = (trained.get("dataset") or {}).get("n_test")
    if any(override_key(o) in ("dataset", "dataset.n_test") for o in overrides) or n_test is None:
        return
    if cfg.dataset.get("name") == "synthetic":  # its n_test is the size of the generated test split itself
        return
    cfg.dataset.n_test = None
    log.info("scoring the whole test split (the run trained with dataset.n_test=%s; set dataset.n_test=%s "
             "to score that subset instead)", n_test, n_test)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Read the checkpoint, merge its config with the command line, validate, then the shared runner."""
    # deferred: torch and the evaluation stack, so --help and tab completion answer at once
    from advrw.config.validation import validate_eval  # deferred: torch (see above)
    from advrw.evaluation import runner  # deferred: torch

    path, obj = runner.cli_checkpoint(cfg)
    cfg = effective_config(cfg, obj if runner.is_advrw(obj) else None)
    validate_eval(cfg)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    return runner.eval_checkpoint(cfg, path, obj, run_dir, overrides)


def _validate_cli(cfg: DictConfig) -> None:
    from advrw.config.validation import validate_eval  # deferred: torch (tab completion imports this module)

    if OmegaConf.is_missing(cfg, "ckpt"):
        raise AdvrwError("ckpt is required: ckpt=<run dir or .pt file>")
    validate_eval(cfg)


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    from advrw.core.files import remove_stray_run_dir  # deferred: torch (see run)
    from advrw.core.exits import guarded  # deferred: torch

    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def refused() -> None:  # drop the run dir Hydra made, and <run>/eval/ if it was made for this one alone
        remove_stray_run_dir(run_dir)
        if run_dir.parent.name == "eval" and not run_dir.exists():
            try:
                run_dir.parent.rmdir()
            except OSError:  # other evaluations live there
                pass
    results = guarded(lambda: run(cfg, run_dir), refused=refused)
    return results.get("worst_case", {}).get("robust_accuracy")


def main() -> None:
    start("eval", _hydra_main, _validate_cli)


if __name__ == "__main__":
    # Call the importable module's copy: joblib/submitit launchers then pickle the task function by
    # reference (a function of ``__main__`` is pickled by value and drags unpicklable torch globals).
    from advrw.eval import main as _main

    _main()
