"""Attacks: the shared PGD engine and its objectives, the registry of evaluation attacks
(``registry``), and one module per library adapter (``autoattack``, ``blackbox``, ``fmn``; shared
rules in ``common``)."""

from advrw.attacks.objectives import OBJECTIVES, get_objective, prob_margin
from advrw.attacks.engine import PGDResult, check_budget, fgsm, model_mode, pgd, random_start

__all__ = ["OBJECTIVES", "PGDResult", "check_budget", "fgsm", "get_objective", "model_mode", "pgd",
           "prob_margin", "random_start"]
