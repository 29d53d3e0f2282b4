"""AT, TRADES and MART losses with a per-example weight on the robust term (SPEC sections 1, 3).

``defense_loss(name, z_nat, z_adv, y, w, ...)`` returns ``(loss, parts)``. The weight multiplies
the robust term -- AT: CE on x'; TRADES: the KL term; MART: the BCE term -- as ``w`` with
``combine='multiply'`` or as EWAT's additive form with ``combine='add'``: ``(1 + w)`` on CE/BCE
and ``(beta_trades + w)`` on TRADES' KL. ``w = 1`` with ``multiply`` is the unweighted defense.

``label_smoothing`` (``defense.label_smoothing``, 0 = off) smooths every cross-entropy term: AT's CE on
x' (still multiplied by the weight), TRADES' natural CE (the only place DM-Improves-AT's ``--ls`` acts)
and the CE part of MART's BCE (its ``-log(1.0001 - max_{k!=y} p_k)`` margin term is not a CE).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from advrw.core.errors import AdvrwError
from advrw.methods.functional import kl_per_example, true_prob
from advrw.core.rules import boolean, check, choice, number, suggest

DEFENSES = ("at", "trades", "mart")
# Which defenses need the natural logits in their loss (so the trainer runs a clean forward).
NEEDS_NATURAL = {"at": False, "trades": True, "mart": True}


def ce(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-example CE in float32; smoothed: ``(1 - s) CE + s * mean_k(-log p_k)``."""
    return F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=float(label_smoothing))


def mart_bce(z_adv: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """MART's boosted CE: ``CE(f(x'), y) - log(1.0001 - max_{k != y} p_k(x'))`` per example."""
    p_adv = F.softmax(z_adv.float(), dim=1)
    p_other = p_adv.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return ce(z_adv, y, label_smoothing) - torch.log(1.0001 - p_other + 1e-12)


def _coef(w: torch.Tensor, base: float, combine: str) -> torch.Tensor:
    if combine == "multiply":
        return base * w
    if combine == "add":  # EWAT: unweighted coefficient plus the weight
        return base + w
    raise AdvrwError(f"weighting.combine={combine!r} is unknown: choose one of multiply, add")


def at_loss(z_nat, z_adv, y, w, *, combine: str = "multiply", label_smoothing: float = 0.0, **_):
    """Madry AT: ``mean_i w_i CE(f(x'_i), y_i)``."""
    robust = ce(z_adv, y, label_smoothing)
    loss = (_coef(w, 1.0, combine) * robust).mean()
    return loss, {"robust": robust.mean().detach()}


def trades_loss(z_nat, z_adv, y, w, *, beta_trades: float = 6.0, combine: str = "multiply",
                detach_nat: bool = False, label_smoothing: float = 0.0, **_):
    """TRADES: ``mean CE(f(x), y) + beta * mean_i w_i KL(p(x_i) || p(x'_i))``."""
    natural = ce(z_nat, y, label_smoothing).mean()
    robust = kl_per_example(z_nat, z_adv, detach_nat)
    loss = natural + (_coef(w, beta_trades, combine) * robust).mean()
    return loss, {"natural": natural.detach(), "robust": robust.mean().detach()}


def mart_loss(z_nat, z_adv, y, w, *, lambda_mart: float = 5.0, combine: str = "multiply",
              detach_nat: bool = False, label_smoothing: float = 0.0, **_):
    """MART: ``mean_i w_i BCE_i + lambda * mean_i KL(p(x_i) || p(x'_i)) (1 - p_y(x_i))``."""
    bce = mart_bce(z_adv, y, label_smoothing)
    p_true = true_prob(z_nat, y)
    kl = kl_per_example(z_nat, z_adv, detach_nat, eps=1e-12) * (1.0000001 - p_true)
    loss = (_coef(w, 1.0, combine) * bce).mean() + lambda_mart * kl.mean()
    return loss, {"robust": bce.mean().detach(), "kl": kl.mean().detach()}


_LOSSES = {"at": at_loss, "trades": trades_loss, "mart": mart_loss}


def defense_loss(name: str, z_nat, z_adv, y, w, **kwargs):
    try:
        fn = _LOSSES[name]
    except KeyError:
        raise AdvrwError(f"defense={name!r} is unknown: choose one of {', '.join(DEFENSES)}") from None
    if NEEDS_NATURAL[name] and z_nat is None:
        raise AdvrwError(f"defense={name} needs the natural logits, got None")
    return fn(z_nat, z_adv, y, w, **kwargs)


# ----------------------------------------------------------------------------------- config rules
_LS = ("label_smoothing", number(ge=0, lt=1))
DEFENSE_RULES = {
    "at": [_LS],
    "trades": [("beta_trades", number(ge=0)), ("detach_nat", boolean()), _LS],
    "mart": [("lambda_mart", number(ge=0)), ("detach_nat", boolean()), _LS],
}


def validate_defense(cfg) -> None:
    check(cfg, [("defense.name", choice(*DEFENSES))])
    # the loss takes **_ (shared call site): a misspelled +defense.key would be silently ignored
    fn = _LOSSES.get(str(cfg.defense.name))
    if fn is not None:
        params = [n for n, p in inspect.signature(fn).parameters.items()
                  if p.kind is p.KEYWORD_ONLY and n != "combine"]
        for key in cfg.defense:
            if key != "name" and not str(key).startswith("attack_") and key not in params:
                raise AdvrwError(f"defense.{key} is not a setting of defense={cfg.defense.name}: it has "
                                 f"{', '.join(params) or 'none'}{suggest(key, params)}")
    check(cfg.defense, DEFENSE_RULES.get(str(cfg.defense.name), []), prefix="defense.")
