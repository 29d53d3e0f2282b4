"""AutoAttack from ``pyautoattack`` (the packaged fork of the official AutoAttack code) with the
budgets it sets for ``version='standard'``: APGD-CE (100 iterations, 1 restart), APGD-T (100
iterations, 9 target classes), FAB-T (100 iterations, 9 target classes), Square (5000 queries,
p_init 0.8). The cascade only attacks points still robust, so the final mask is the per-example
worst case over the four attacks. Shared adapter rules: ``advrw.attacks.common``.
"""

from __future__ import annotations

import logging
import re
import sys

import torch
from torch import nn

from advrw.attacks import common
from advrw.attacks.common import AutoAttackResult
from advrw.attacks.engine import model_mode
from advrw.core.errors import AdvrwError

log = logging.getLogger(__name__)


class _Capture(logging.Handler):
    """Collects every record of the 'auto-attack' logger and forwards it to ours."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        # progress lines are DEBUG in pyautoattack; keep the level so WARNINGs stay visible
        log.log(record.levelno, "auto-attack: %s", record.getMessage())


_AA_STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
_PROGRESS = re.compile(r"^(\S+) - \d+/\d+ - (\d+) out of (\d+) successfully perturbed$")

def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                   norm: str = "Linf", version: str = "standard", seed: int = 0,
                   batch_size: int = 500, device=None, attacks: list[str] | None = None,
                   apgd_restarts: int | None = None) -> AutoAttackResult:
    """AutoAttack from ``pyautoattack`` with its official budgets; worst case per example.

    ``attacks`` (e.g. ``["apgd-ce"]``) runs only those stages of the package's cascade, each with
    the budget ``version='standard'`` gives it (pyautoattack's ``version='custom'``);
    ``apgd_restarts`` overrides APGD-CE's restarts (standard: 1).

    ``per_attack`` is recomputed exactly from the cascade's per-batch success counts (logged at
    DEBUG by pyautoattack). With fewer than 10 classes the 9 target classes of APGD-T / FAB-T
    are impossible; they are capped at ``C - 1`` and the cap is recorded in ``protocol`` (the
    official numbers assume ``C >= 10``).
    """
    if norm not in ("Linf", "L2", "L1"):
        raise AdvrwError(f"norm={norm!r} is invalid: AutoAttack supports 'Linf', 'L2', 'L1'")
    if version not in ("standard", "plus", "rand"):
        raise AdvrwError(f"version={version!r} is invalid: must be 'standard', 'plus' or 'rand'")
    if attacks is not None and (not attacks or any(a not in _AA_STAGES for a in attacks)):
        raise AdvrwError(f"attacks={attacks!r} is invalid: choose from {', '.join(_AA_STAGES)}")
    if apgd_restarts is not None:
        common.check_positive("apgd_restarts", apgd_restarts, integer=True)
    common.check_positive("seed", seed, integer=True, allow_zero=True)
    x, y = common.prepare(x, y, eps, batch_size, device)
    if x.shape[0] == 0:
        return common.empty(AutoAttackResult, x, {"attack": "autoattack", "library": "pyautoattack",
                                            "library_version": common.lib_version("pyautoattack"),
                                            "version": version, "eps": float(eps), "norm": norm,
                                            "seed": int(seed), "batch_size": int(batch_size)},
                      per_attack={}, warnings=[])
    from pyautoattack import AutoAttack
    from pyautoattack import checks as aa_checks

    aa_logger = logging.getLogger("auto-attack")
    handler = _Capture()
    saved_logger = (aa_logger.level, aa_logger.propagate)
    saved_trace = sys.gettrace()  # check_dynamic calls sys.settrace(None): keep coverage/debuggers
    with model_mode(model, False), common.seeded(seed, x.device), common.quiet_stdout("pyautoattack"):
        with torch.no_grad():
            logits0 = model(x[:1])
        n_classes = int(logits0.shape[1])
        if n_classes < 4 and (attacks is None or any(a in ("apgd-t", "fab-t") for a in attacks)):
            raise AdvrwError(f"model has {n_classes} classes: AutoAttack '{version}' (targeted DLR) "
                             "needs at least 4")
        _check_labels_in_range(y, n_classes)
        clean_pred = common.predict_labels(model, x, batch_size)
        # check_dynamic's call counter is a module global never reset: one dynamic model would
        # otherwise make every later run warn
        for key in aa_checks.funcs:
            aa_checks.funcs[key] = 0
        aa_logger.addHandler(handler)
        aa_logger.setLevel(logging.DEBUG)
        aa_logger.propagate = False  # our handler re-logs under advrw's logger instead
        try:
            adversary = AutoAttack(model, eps=float(eps), norm=norm, seed=int(seed),
                                   version=version, device=x.device)
            n_targets = min(9, n_classes - 1)
            capped = adversary.apgd_targeted.n_target_classes > n_targets or adversary.fab.n_target_classes > n_targets
            adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, n_targets)
            adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, n_targets)
            if attacks is not None:  # the standard budgets, then only the chosen stages
                adversary.attacks_to_run = list(attacks)
                adversary.version = "custom"
            if apgd_restarts is not None:
                adversary.apgd.n_restarts = int(apgd_restarts)
            attacks = list(adversary.attacks_to_run)
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=int(batch_size))
        finally:
            aa_logger.removeHandler(handler)
            aa_logger.setLevel(saved_logger[0])
            aa_logger.propagate = saved_logger[1]
            sys.settrace(saved_trace)
        x_adv, robust, n_bad, notes = common.finalize(model, x, y, x_adv, eps=float(eps), norm=norm,
                                                batch_size=int(batch_size), clean_pred=clean_pred,
                                                tag="AutoAttack")

    n = x.shape[0]
    clean_acc = float((clean_pred == y).double().mean())
    per_attack = _per_attack(handler.records, attacks, n, int((clean_pred == y).sum()), clean_acc)
    warnings = [r.getMessage() for r in handler.records if r.levelno >= logging.WARNING] + notes
    robust_acc = float(robust.double().mean())
    if n_bad and attacks:  # breaks the cascade counted at invalid points are not breaks: no stage may end below
        per_attack = {k: (v if k == "clean" else max(v, robust_acc)) for k, v in per_attack.items()}
        per_attack[attacks[-1]] = robust_acc
    protocol = {
        "attack": "autoattack",
        "library": "pyautoattack",
        "library_version": common.lib_version("pyautoattack"),
        "version": version,
        "attacks": attacks,
        "n_iter": int(adversary.apgd.n_iter),
        "restarts": {"apgd-ce": int(adversary.apgd.n_restarts),
                     "apgd-t": int(adversary.apgd_targeted.n_restarts),
                     "fab-t": int(adversary.fab.n_restarts),
                     "square": int(adversary.square.n_restarts)},
        "target_classes": {"apgd-t": int(adversary.apgd_targeted.n_target_classes),
                           "fab-t": int(adversary.fab.n_target_classes)},
        "target_classes_capped": bool(capped),
        "square_queries": int(adversary.square.n_queries),
        "square_p_init": float(adversary.square.p_init),
        "fab_n_iter": int(adversary.fab.n_iter),
        "eps": float(eps),
        "norm": norm,
        "seed": int(seed),
        "n": n,
        "batch_size": int(batch_size),
        "n_invalid": n_bad,
    }
    return AutoAttackResult(x_adv=x_adv, robust=robust, robust_accuracy=robust_acc,
                            clean_accuracy=clean_acc, protocol=protocol, per_attack=per_attack,
                            warnings=warnings)


def _check_labels_in_range(y: torch.Tensor, n_classes: int) -> None:
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise AdvrwError(f"y has values in [{int(y.min())}, {int(y.max())}]: the model has "
                         f"{n_classes} classes, so labels must lie in [0, {n_classes - 1}]")


def _per_attack(records, attacks: list[str], n: int, n_clean: int, clean_acc: float) -> dict:
    """Robust accuracy after each cascade stage from the exact per-batch success counts."""
    fooled = {a: 0 for a in attacks}
    for r in records:
        m = _PROGRESS.match(r.getMessage())
        if m and m.group(1) in fooled:
            fooled[m.group(1)] += int(m.group(2))
    out = {"clean": clean_acc}
    remaining = n_clean
    for a in attacks:  # a stage skipped because nothing was left keeps the previous value
        remaining -= fooled[a]
        out[a] = max(remaining, 0) / n
    return out
