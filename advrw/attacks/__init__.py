"""Attacks: the shared PGD engine and its objectives; library adapters live in ``external``."""

from advrw.attacks.objectives import OBJECTIVES, get_objective, prob_margin
from advrw.attacks.engine import PGDResult, check_budget, fgsm, model_mode, pgd, random_start

__all__ = ["OBJECTIVES", "PGDResult", "check_budget", "fgsm", "get_objective", "model_mode", "pgd",
           "prob_margin", "random_start"]
