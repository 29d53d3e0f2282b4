"""Both CLIs' ``main``: tab completion and ``--help`` go straight to Hydra (nothing heavy imported);
everything else is prechecked first, then launched under the shared exit handling."""

from __future__ import annotations

import sys
from typing import Callable

from advrw.core.keys import hydra_only


def start(config_name: str, hydra_main: Callable[[], object], validate: Callable) -> None:
    if hydra_only(sys.argv[1:]):  # --help / tab completion: Hydra answers, nothing to check
        hydra_main()
        return
    from advrw.config.precheck import precheck  # deferred: torch (validation imports the attacks)
    from advrw.core.exits import launch  # deferred: torch

    precheck(config_name, validate)
    launch(hydra_main)
