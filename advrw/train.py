"""``python -m advrw.train``: adversarial training with per-example weights, then evaluation.

A thin entry point (lightning-hydra-template style): the precheck validates every job, Hydra
composes ``conf/train.yaml``, :func:`advrw.training.loop.run` does the work.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from advrw.config import CONF_DIR
from advrw.core.errors import AdvrwError
from advrw.core.keys import hydra_only


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    # deferred: torch and the training stack load only when a run starts, so --help and tab completion
    # (which import this module) answer in a fraction of a second
    from advrw.config.precheck import remove_stray_run_dir  # deferred: torch (see above)
    from advrw.training.lifecycle import exit_code, user_line, write_error  # deferred: torch
    from advrw.training.loop import run  # deferred: torch

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run(cfg, run_dir)
    except AdvrwError as err:  # one line for the user, nothing else (no traceback, no log echo)
        print(user_line(err), file=sys.stderr)
        if exit_code(err) == 2:  # refused input: drop the run dir Hydra made if it holds nothing else
            remove_stray_run_dir(run_dir)
        sys.exit(exit_code(err))
    except OSError as err:  # a record write failed (disk full, read-only): one line, not a traceback
        line = write_error(err)
        if line is None:
            raise
        print(user_line(line), file=sys.stderr)
        sys.exit(exit_code(line))
    except KeyboardInterrupt:  # Ctrl-C before training started (no checkpoint yet): no traceback
        print("advrw: SIGINT before training started: nothing to save", file=sys.stderr)
        sys.exit(130)
    attacks = results.get("attacks", {})
    # The value a Hydra sweeper (e.g. optuna) optimises: the first attack's robust accuracy.
    return next(iter(attacks.values()))["robust_accuracy"] if attacks else None


def main() -> None:
    if not hydra_only(sys.argv[1:]):  # --help / tab completion: Hydra answers, nothing to check
        from advrw.config.precheck import precheck  # deferred: torch (validation imports the attacks)
        from advrw.config.validation import validate_train  # deferred: torch

        precheck("train", validate_train)
    _hydra_main()


if __name__ == "__main__":
    # Call the importable module's copy: joblib/submitit launchers then pickle the task function by
    # reference (a function of ``__main__`` is pickled by value and drags unpicklable torch globals).
    from advrw.train import main as _main

    _main()
