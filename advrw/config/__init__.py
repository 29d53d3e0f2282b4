"""The config tree and everything that checks it before a run starts.

``conf/`` is composed by Hydra; this package owns its resolvers (registered on import, so any
``compose`` of ``conf/`` works), the rules every value must satisfy (:mod:`.validation`, composing
the rules each feature declares next to its code) and the command-line precheck (:mod:`.precheck`)
that validates every job of a sweep before Hydra makes a run dir.
"""

from __future__ import annotations

from pathlib import Path

from advrw.config import resolvers

CONF_DIR = str(Path(__file__).resolve().parent.parent.parent / "conf")

resolvers.register()
