"""MD, MDMT and their ensemble MDE (Ma et al. 2023, "Imbalanced gradients: a subtle cause of
overestimated adversarial robustness", Machine Learning), built on the shared PGD engine.

No maintained library ships these attacks (the authors' repository, HanxunH/MDAttack, is research
code), so they are staged runs of ``advrw.attacks.engine`` with a per-step ``plan``:

* **MD** (margin decomposition): two runs from a uniform start (not clipped to [0, 1]). Step 0
  ascends ``z_y`` (as the public code does); steps ``1 .. change_point - 1`` ascend one term of the
  margin alone -- ``-z_y`` in run 0, ``max_{k!=y} z_k`` in run 1 -- so a term whose gradient is tiny
  next to the other's still gets attacked; the remaining steps ascend the full margin
  ``max_{k!=y} z_k - z_y``. Step sizes follow the authors' cosine schedule from ``2 eps``, restarted
  at the change point. Any *valid* iterate the model misclassifies counts (the code keeps it): the
  unclipped start may lie outside [0, 1], and on saturated pixels it can fool the model there;
  such a point is never kept, the run goes on and its later (clipped) iterates can count.
* **MDMT**: MD with the other term replaced by a target logit ``z_t`` (and ``z_t - z_y`` in the
  second stage), for each of the ``n_target_classes`` classes ranked highest at the clean input
  other than ``y``. The code loops over all 10 CIFAR classes, one of which is ``y`` itself (a run
  whose loss is zero); here that run is skipped.
* **MDE**: APGD-CE (100 iterations) -> MD -> MDMT -> FAB-T (100 iterations, 9 targets), each on
  the examples all earlier attacks failed on; the worst case per example. APGD-CE and FAB-T come
  from ``pyautoattack`` with AutoAttack's standard budgets (FAB-T with 1 restart, as the code).

Published budget (the code's ``Attacker``): 50 steps, change point 20, 1 random start.
"""

from __future__ import annotations

import math

import torch

from advrw.attacks import common
from advrw.attacks.autoattack import run_autoattack
from advrw.attacks.common import AutoAttackResult
from advrw.attacks.engine import model_mode, pgd
from advrw.core.errors import AdvrwError

STAGES = ("apgd-ce", "md", "mdmt", "fab-t")
# The authors' ``Attacker`` budget: 50 steps, change point 20, 9 target classes, every stage.
DEFAULTS = {"steps": 50, "change_point": 20, "n_target_classes": 9, "stages": list(STAGES)}


def md_step_sizes(steps: int, change_point: int, eps: float) -> list[float]:
    """The authors' schedule: ``eps (1 + cos(pi (i - 1) / (N - cp)))`` up to the change point,
    then ``eps (1 + cos(pi (i - cp - 1) / (N - cp)))`` (``2 eps`` peak, annealed to ~0)."""
    span = steps - change_point
    return [eps * (1 + math.cos(math.pi * ((i - 1) if i <= change_point else (i - change_point - 1)) / span))
            for i in range(steps)]


def md_plan(steps: int, change_point: int, eps: float, first: str, second: str) -> list[tuple[str, float]]:
    """Per-step (objective, step size): ``z_y`` once, ``first`` until the change point, then ``second``."""
    sizes = md_step_sizes(steps, change_point, eps)
    names = ["true_logit"] + [first] * (change_point - 1) + [second] * (steps - change_point)
    return list(zip(names, sizes))


def check_md_budget(steps: int, change_point: int) -> None:
    if int(steps) != steps or steps < 2:
        raise AdvrwError(f"mde steps={steps} is invalid: must be an integer >= 2")
    if int(change_point) != change_point or not 1 <= change_point < steps:
        raise AdvrwError(f"mde change_point={change_point} is invalid: must be an integer in [1, steps)")


def _broken(model, x_adv, x, y, eps):
    """Misclassified at a valid point (inside the eps-ball and [0, 1])."""
    with torch.no_grad():
        return (model(x_adv).argmax(dim=1) != y) & common.valid_points(x_adv, x, eps)


def md_attack(model, x, y, *, eps: float, steps: int = 50, change_point: int = 20, target=None,
              generator=None):
    """MD (``target=None``) or one MDMT target: both decomposition runs, the first that fools wins.
    Returns ``x_adv`` (the clean input's perturbation that fooled, else run 1's last iterate)."""
    check_md_budget(steps, change_point)
    other, full = ("max_other_logit", "cw") if target is None else ("target_logit", "targeted_margin")
    best = x.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for first in ("neg_true_logit", other):
        idx = (~fooled).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        t = None if target is None else target[idx]
        res = pgd(model, x[idx], y[idx], eps=eps, step=eps, steps=steps, init="uniform", objective=full,
                  plan=md_plan(steps, change_point, eps, first, full), target=t, keep_fooled=True,
                  clamp_start=False, generator=generator)
        best[idx] = res.x_adv
        fooled[idx] = _broken(model, res.x_adv, x[idx], y[idx], eps)
    return best


def mdmt_attack(model, x, y, *, eps: float, steps: int = 50, change_point: int = 20, n_target_classes: int = 9,
                generator=None):
    """MDMT: ``md_attack`` towards each of the top ``n_target_classes`` non-true classes in turn."""
    with torch.no_grad():
        z = model(x).float()
    k = min(int(n_target_classes), z.shape[1] - 1)
    ranked = z.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)[:, :k]
    best = x.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for j in range(k):
        idx = (~fooled).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        cand = md_attack(model, x[idx], y[idx], eps=eps, steps=steps, change_point=change_point,
                         target=ranked[idx, j], generator=generator)
        best[idx] = cand
        fooled[idx] = _broken(model, cand, x[idx], y[idx], eps)
    return best


def run_mde(model, x, y, *, eps: float, steps: int = 50, change_point: int = 20, n_target_classes: int = 9,
            stages=STAGES, seed: int = 0, batch_size: int = 500):
    """The MDE ensemble on ``(x, y)``; an ``AutoAttackResult`` (``per_attack``: robust
    accuracy after each stage, over these examples)."""
    stages = list(stages)
    if not stages or any(s not in STAGES for s in stages):
        raise AdvrwError(f"mde stages={stages} is invalid: choose from {', '.join(STAGES)}")
    check_md_budget(steps, change_point)
    x, y = common.prepare(x, y, eps, batch_size)
    protocol = {"attack": "mde", "stages": stages, "md_steps": int(steps), "change_point": int(change_point),
                "md_start": "uniform, not clipped", "md_step_schedule": "cosine from 2 eps, restarted at change_point",
                "mdmt_target_classes": int(n_target_classes), "apgd_n_iter": 100, "fab_n_iter": 100,
                "eps": float(eps), "norm": "Linf", "seed": int(seed), "n": int(len(x)),
                "library": "advrw PGD engine + pyautoattack", "library_version": common.lib_version("pyautoattack")}
    if len(x) == 0:
        return common.empty(AutoAttackResult, x, protocol, per_attack={}, warnings=[])
    gen = torch.Generator(device=x.device)
    gen.manual_seed(int(seed))
    with model_mode(model, False):
        clean_pred = common.predict_labels(model, x, batch_size)
        robust = clean_pred == y
        x_adv = x.clone()
        per_attack = {"clean": float(robust.double().mean())}
        for stage in stages:
            idx = robust.nonzero().squeeze(1)
            if idx.numel():
                if stage in ("apgd-ce", "fab-t"):
                    res = run_autoattack(model, x[idx], y[idx], eps=eps, seed=seed, batch_size=batch_size,
                                                  attacks=[stage])
                    cand = res.x_adv
                else:
                    fn = md_attack if stage == "md" else mdmt_attack
                    kw = {} if stage == "md" else {"n_target_classes": n_target_classes}
                    cand = torch.cat([fn(model, x[idx][i:i + batch_size], y[idx][i:i + batch_size], eps=eps,
                                         steps=steps, change_point=change_point, generator=gen, **kw)
                                      for i in range(0, len(idx), batch_size)])
                broke = _broken(model, cand, x[idx], y[idx], eps)
                x_adv[idx[broke]] = cand[broke]
                robust[idx[broke]] = False
            per_attack[stage] = float(robust.double().mean())
        x_adv, robust, n_bad, notes = common.finalize(model, x, y, x_adv, eps=float(eps), norm="Linf",
                                                         batch_size=batch_size, clean_pred=clean_pred, tag="MDE")
    protocol["n_invalid"] = n_bad
    return AutoAttackResult(x_adv=x_adv, robust=robust, robust_accuracy=float(robust.double().mean()),
                                     clean_accuracy=float((clean_pred == y).double().mean()), protocol=protocol,
                                     per_attack=per_attack, warnings=notes)
