"""``eval.checkpoint``: which checkpoint(s) of a run the evaluation scores -- last, best, or both.

``both`` scores ``best.pt`` and ``last.pt`` in one evaluation (EWAT Table 2's Best and Last
columns). ``best.pt`` is the epoch with the highest PGD accuracy on the *validation* split
(``dataset.val_size`` held-out training images), never on the test set, so ``best`` and
``both`` need ``dataset.val_size > 0``. In results.json, ``checkpoints.best`` and
``checkpoints.last`` each hold the full results (every attack with its protocol, the epoch in
``protocol.checkpoint``); the top-level numbers are last's, so readers of a single-checkpoint
results.json keep working (``protocol.top_level_checkpoint`` says so).
"""

from __future__ import annotations

import logging
from pathlib import Path

from advrw.core.errors import AdvrwError

log = logging.getLogger(__name__)

def kinds(choice: str) -> list[str]:
    """The checkpoints to score, in order (last last: its model stays loaded)."""
    return ["best", "last"] if choice == "both" else [choice]


def protocol(kind: str, path: Path, state: dict) -> dict:
    """``protocol.checkpoint`` of one scored checkpoint; best's says how it was chosen."""
    out = {"path": str(Path(path).resolve()), "kind": kind, "epoch": state.get("epoch")}
    if kind == "best" and "config" in state:
        ds = state["config"].get("dataset", {})
        out["selected_on"] = {"split": "validation", "metric": "val_robust (PGD, see config.validation)",
                              "val_robust": state.get("best_robust"), "val_size": ds.get("val_size")}
    return out


def score(checkpoints: list[tuple[str, Path]], load, run, protocol_of) -> tuple[dict, dict]:
    """Score each ``(kind, path)``: ``load(path) -> state`` puts it in the model, ``run(kind, state)
    -> (results, arrays)`` evaluates it, ``protocol_of(kind, path, state)`` adds to its protocol.
    Returns the merged results and the arrays of the last one scored (for the figures)."""
    scored, arrays = {}, None
    for kind, path in checkpoints:
        state = load(path)
        results, arrays = run(kind, state)
        results["protocol"].update(protocol_of(kind, path, state))
        scored[kind] = results
    return merge(scored), arrays


def merge(per_kind: dict[str, dict]) -> dict:
    """One results dict: last's numbers at the top, every scored checkpoint under ``checkpoints``."""
    if set(per_kind) != {"best", "last"}:
        return next(iter(per_kind.values()))
    for kind in ("best", "last"):
        r = per_kind[kind]
        log.info("%s (epoch %s): clean %.2f%%, %s", kind, r["protocol"]["checkpoint"].get("epoch"),
                 100 * r["clean"]["accuracy"],
                 ", ".join(f"{n} {100 * e['robust_accuracy']:.2f}%" for n, e in r.get("attacks", {}).items()))
    top = dict(per_kind["last"])
    top["protocol"] = {**top["protocol"], "top_level_checkpoint": "last"}
    top["checkpoints"] = {"best": per_kind["best"], "last": per_kind["last"]}
    return top


def run_dir_for_both(ckpt: str) -> Path:
    """``advrw.eval ckpt=... eval.checkpoint=both``: a run dir holding best.pt and last.pt."""
    p = Path(str(ckpt)).expanduser()
    if not p.is_dir():
        raise AdvrwError(f"eval.checkpoint=both needs ckpt= to be a run dir with best.pt and last.pt, got {ckpt}")
    if not (p / "best.pt").is_file():
        raise AdvrwError(f"eval.checkpoint=both: {p} has no best.pt (it is chosen on the validation split: "
                         "train with dataset.val_size > 0), or use eval.checkpoint=last")
    return p
