"""The OmegaConf resolvers ``conf/`` uses; :func:`register` runs when :mod:`advrw.config` is imported.

``${advrw_uid:}`` (``conf/hydra/default.yaml``) is a per-process unique suffix so runs started in
the same second never share a dir. It is registered with ``use_cache=True`` like Hydra's ``now``:
the value is cached in the config, so a sweep's jobs (and a submitit job re-created from its
pickled config on requeue) see the dir of the process that launched them.
"""

from __future__ import annotations

import functools
import secrets
from pathlib import Path

from omegaconf import OmegaConf


@functools.lru_cache(maxsize=1)
def process_uid() -> str:
    """Six random hex digits, fixed for this process (not derived from the clock)."""
    return secrets.token_hex(3)


def eval_root(ckpt) -> str:
    """Where ``advrw.eval`` writes: ``<run dir>/eval`` for an advrw run dir or a checkpoint inside one
    (beside what it scores, never among training runs), else ``outputs/eval``."""
    p = Path(str(ckpt)).expanduser()
    run = p if p.is_dir() else p.parent
    return str(run / "eval") if (run / ".hydra").is_dir() or (run / "run_info.json").is_file() else "outputs/eval"


def register() -> None:
    if not OmegaConf.has_resolver("mul"):  # budgets written relative to eps (PGD-20 step = eps/10)
        OmegaConf.register_new_resolver("mul", lambda a, b: float(a) * float(b))
    if not OmegaConf.has_resolver("advrw_uid"):
        OmegaConf.register_new_resolver("advrw_uid", process_uid, use_cache=True)
    if not OmegaConf.has_resolver("advrw_eval_root"):  # conf/eval.yaml's hydra.run.dir
        OmegaConf.register_new_resolver("advrw_eval_root", eval_root)
    if not OmegaConf.has_resolver("advrw_cap"):  # debug=fast: at most `cap` of a split, null for an empty one
        OmegaConf.register_new_resolver("advrw_cap", lambda n, cap: min(int(n), int(cap)) if n else None)
    if not OmegaConf.has_resolver("advrw_min"):  # debug=fast: burn-in min(paper's, 1)
        OmegaConf.register_new_resolver("advrw_min", lambda *xs: min(xs))
    if not OmegaConf.has_resolver("advrw_max"):  # debug=fast: a training subset of at least one batch
        OmegaConf.register_new_resolver("advrw_max", lambda *xs: max(xs))
