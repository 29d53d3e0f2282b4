"""The gradient-masking audit (``eval=audit`` or ``eval.audit=true``): is this robustness real?

The indicators of attack failure of Pintor et al. (NeurIPS 2022) and AutoAttack's own checks,
each a number with its threshold (``eval.audit_settings``, documented in conf/eval/quick.yaml and
the README's "Is it robust?"), a pass/flag and what a flag means; the verdict is ``reliable``
when every check passes, else ``flagged`` with the failed checks as reasons. The audit attacks
the first ``audit_settings.n`` evaluated examples (robust accuracy is over those examples),
with the suite's own PGD and Square, so each check is one more column's worth of work.

GAIRAT's lesson (its authors' later note): PGD-CE accuracy that vanishes under CW or AutoAttack
is the signature of masked gradients, so the loss-choice and black-box checks matter most for
instance-reweighted training.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from advrw.attacks.blackbox import run_spsa, run_square
from advrw.core.errors import AdvrwError

log = logging.getLogger(__name__)

MEANINGS = {
    "unbounded": "PGD-CE with a huge eps leaves accuracy above the threshold: gradients do not lead out of "
                 "the class even without a budget (masked or obfuscated gradients)",
    "convergence": "accuracy still falls between the last two PGD budgets: the attack has not converged, "
                   "more steps would lower the number",
    "black_box": "a black-box attack (no gradients) beats the best gradient attack: gradients are unreliable",
    "loss_choice": "PGD's accuracy depends on the loss (CE vs CW margin vs logit-scaled CE): a saturated "
                   "softmax hides gradients from one loss (GAIRAT's failure mode)",
    "eps_sweep": "accuracy rises with eps, or stays high at a large eps: the attack, not the model, is failing",
    "randomness": "two forwards of the same input differ: a randomised model needs EoT "
                  "(eval.audit_settings.eot and eot on the PGD attacks) and AutoAttack's version=rand",
    "autoattack_checks": "AutoAttack's own sanity checks warned (randomness, zero gradients, output range, ...)",
}


# eval.audit_settings.<key>: (kind, lower bound); kind "int", "number", "prob" (in [0, 1]), "bool", "ints".
RULES = {"n": ("int", 1), "steps": ("ints", 1), "max_convergence_drop": ("prob", 0), "unbounded_eps": ("number", 0),
         "max_unbounded_accuracy": ("prob", 0), "losses_steps": ("int", 1), "max_loss_gap": ("prob", 0),
         "square_queries": ("int", 1), "spsa": ("bool", None), "max_black_box_gain": ("prob", 0),
         "eps_factors": ("numbers", 0), "max_eps_increase": ("prob", 0), "max_large_eps_accuracy": ("prob", 0),
         "randomness_tol": ("number", -1), "eot": ("int", 1)}


def validate(ev) -> None:
    """One line for a bad ``eval.audit`` / ``eval.audit_settings.*`` value, before any work."""
    on = ev.get("audit", False)
    if not isinstance(on, bool):
        raise AdvrwError(f"eval.audit={on!r} is invalid: must be true or false")
    settings = ev.get("audit_settings") or {}
    for key in settings:
        if key not in RULES:
            raise AdvrwError(f"eval.audit_settings.{key} is unknown: choose from {', '.join(RULES)}")
    for key, (kind, low) in RULES.items():
        v = settings.get(key)
        if v is None and not on:
            continue
        values = list(v) if kind in ("ints", "numbers") and not isinstance(v, (str, int, float)) else [v]
        number = lambda u: isinstance(u, (int, float)) and not isinstance(u, bool)  # noqa: E731
        ok = {"bool": lambda u: isinstance(u, bool),
              "int": lambda u: isinstance(u, int) and not isinstance(u, bool) and u >= low,
              "ints": lambda u: isinstance(u, int) and not isinstance(u, bool) and u >= low,
              "number": lambda u: number(u) and u > low,
              "numbers": lambda u: number(u) and u > low,
              "prob": lambda u: number(u) and 0 <= u <= 1}[kind]
        if not values or not all(ok(u) for u in values) or (kind == "ints" and len(values) < 2 and on):
            allowed = {"bool": "true or false", "int": f"an integer >= {low}", "ints": f"a list of 2+ integers >= {low}",
                       "number": f"a number > {low}", "numbers": f"a list of numbers > {low}",
                       "prob": "a number in [0, 1]"}[kind]
            raise AdvrwError(f"eval.audit_settings.{key}={v!r} is invalid: must be {allowed}")


def _check(value, threshold, passed: bool, name: str, **extra) -> dict:
    return {"value": value, "threshold": threshold, "pass": bool(passed), "meaning": MEANINGS[name], **extra}


def _pgd(steps: int, eps: float, objective: str = "ce", eot: int = 1, **kw) -> dict:
    # step 2.5 eps / k (Madry et al.): enough to cross the ball within every budget
    return {"kind": "pgd", "objective": objective, "steps": int(steps), "step": 2.5 * eps / int(steps),
            "restarts": 1, "init": "uniform", "eot": int(eot), **kw}


@torch.no_grad()
def randomness(model, x, tol: float) -> dict:
    a, b = model(x).float(), model(x).float()
    diff = float((a - b).abs().max()) if len(x) else 0.0
    return _check(diff, tol, diff <= tol, "randomness")


def autoattack_checks(model, x, y, suite_attacks: dict) -> dict:
    """AutoAttack's warnings from the suite's autoattack column when it ran, else its checks run here."""
    ran = [e for e in suite_attacks.values() if e.get("protocol", {}).get("attack") == "autoattack"]
    if ran:
        warnings = [w for e in ran for w in e.get("warnings", [])]
        source = "the autoattack column"
    else:
        from pyautoattack import checks as aa_checks  # deferred: the library, only for the audit

        class Collect(logging.Handler):
            def __init__(self):
                super().__init__()
                self.messages = []

            def emit(self, record):
                self.messages.append(record.getMessage())

        handler, logger = Collect(), logging.getLogger("advrw.audit.autoattack")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            aa_checks.check_randomized(model, x, y, logger=logger)
            aa_checks.check_range_output(model, x, logger=logger)
            xg = x.clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(xg), y)
            aa_checks.check_zero_gradients(torch.autograd.grad(loss, xg)[0], logger=logger)
        finally:
            logger.removeHandler(handler)
        warnings, source = handler.messages, "pyautoattack.checks on the audit examples"
    return _check(len(warnings), 0, not warnings, "autoattack_checks", warnings=warnings, source=source)


def run_audit(model, x, y, eps: float, settings: dict, attack: Callable[[dict, float], torch.Tensor],
              suite_attacks: dict, *, seed: int, batch_size: int) -> dict:
    """The audit block of results.json for ``(x, y)`` (the audit's examples). ``attack(spec, eps) ->
    robust bool [n]`` runs one white-box attack of the registry on them (the suite's batched engine)."""
    s, n = settings, len(x)
    eot = int(s.get("eot", 1))
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    acc = lambda robust: float((robust & correct).float().mean()) if n else float("nan")  # noqa: E731
    checks, curves = {}, {}

    steps = [int(k) for k in s["steps"]]
    conv = {k: acc(attack(_pgd(k, eps, eot=eot), eps)) for k in steps}
    curves["pgd_ce_steps"] = {str(k): v for k, v in conv.items()}
    drop = conv[steps[-2]] - conv[steps[-1]] if len(steps) > 1 else 0.0
    checks["convergence"] = _check(drop, float(s["max_convergence_drop"]), drop <= float(s["max_convergence_drop"]),
                                   "convergence", accuracy=curves["pgd_ce_steps"])

    big = float(s["unbounded_eps"])
    unb = acc(attack(_pgd(100, big, eot=eot), big))
    checks["unbounded"] = _check(unb, float(s["max_unbounded_accuracy"]), unb <= float(s["max_unbounded_accuracy"]),
                                 "unbounded", eps=big, steps=100)

    k = int(s["losses_steps"])
    losses = {"ce": conv[k] if k in conv else acc(attack(_pgd(k, eps, eot=eot), eps)),
              "cw": acc(attack(_pgd(k, eps, "cw", eot=eot), eps)),
              "scaled_ce": acc(attack(_pgd(k, eps, "scaled_ce", eot=eot, scale=10.0), eps))}
    gap = max(losses.values()) - min(losses.values())
    checks["loss_choice"] = _check(gap, float(s["max_loss_gap"]), gap <= float(s["max_loss_gap"]), "loss_choice",
                                   accuracy=losses, steps=k)

    white = min(list(conv.values()) + list(losses.values()))
    idx = correct.nonzero().squeeze(1)
    black = {}
    if idx.numel():
        sq = run_square(model, x[idx], y[idx], eps=eps, n_queries=int(s["square_queries"]), seed=seed,
                        batch_size=batch_size)
        black["square"] = float(sq.robust.float().sum()) / n
        if s.get("spsa"):
            sp = run_spsa(model, x[idx], y[idx], eps=eps, nb_iter=50, seed=seed)
            black["spsa"] = float(sp.robust.float().sum()) / n
    else:
        black = {"square": 0.0}
    gain = white - min(black.values())
    checks["black_box"] = _check(gain, float(s["max_black_box_gain"]), gain <= float(s["max_black_box_gain"]),
                                 "black_box", accuracy={**black, "best_gradient_attack": white},
                                 square_queries=int(s["square_queries"]))

    factors = [float(f) for f in s["eps_factors"]]
    sweep = {}
    for f in factors:
        e = f * eps
        sweep[f"{f:g}"] = conv[20] if f == 1.0 and 20 in conv else acc(attack(_pgd(20, e, eot=eot), e))
    vals = list(sweep.values())
    rise = max([b - a for a, b in zip(vals, vals[1:])] + [0.0])
    ok = rise <= float(s["max_eps_increase"]) and vals[-1] <= float(s["max_large_eps_accuracy"])
    checks["eps_sweep"] = _check({"largest_rise": rise, "at_largest_eps": vals[-1]},
                                 {"max_rise": float(s["max_eps_increase"]),
                                  "max_at_largest_eps": float(s["max_large_eps_accuracy"])}, ok, "eps_sweep",
                                 accuracy=sweep, steps=20)

    checks["randomness"] = randomness(model, x, float(s["randomness_tol"]))
    checks["autoattack_checks"] = autoattack_checks(model, x, y, suite_attacks)

    reasons = [name for name, c in checks.items() if not c["pass"]]
    verdict = "reliable" if not reasons else "flagged"
    log.info("audit: %s%s", verdict, f" ({', '.join(reasons)})" if reasons else "")
    return {"verdict": verdict, "reasons": reasons, "n": n, "eps": eps, "seed": seed, "eot": eot,
            "checks": checks}

