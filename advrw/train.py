"""``python -m advrw.train``: adversarial training with per-example weights, then evaluation.

A thin entry point (lightning-hydra-template style): the precheck validates every job, Hydra
composes ``conf/train.yaml``, :func:`advrw.training.loop.run` does the work, and
:func:`advrw.core.exits.guarded` turns every deliberate stop into one line and its exit code.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from advrw.config import CONF_DIR
from advrw.config.entry import start


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    # deferred: torch and the training stack load only when a run starts, so --help and tab completion
    # (which import this module) answer in a fraction of a second
    from advrw.core.files import remove_stray_run_dir  # deferred: torch (see above)
    from advrw.core.exits import guarded  # deferred: torch
    from advrw.training.loop import run  # deferred: torch

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    results = guarded(lambda: run(cfg, run_dir), refused=lambda: remove_stray_run_dir(run_dir))
    attacks = results.get("attacks", {})
    # The value a Hydra sweeper (e.g. optuna) optimises: the first attack's robust accuracy.
    return next(iter(attacks.values()))["robust_accuracy"] if attacks else None


def _validate(cfg: DictConfig) -> None:
    from advrw.config.validation import validate_train  # deferred: torch (see _hydra_main)

    validate_train(cfg)


def main() -> None:
    start("train", _hydra_main, _validate)


if __name__ == "__main__":
    # Call the importable module's copy: joblib/submitit launchers then pickle the task function by
    # reference (a function of ``__main__`` is pickled by value and drags unpicklable torch globals).
    from advrw.train import main as _main

    _main()
