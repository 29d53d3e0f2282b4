"""The one L_inf PGD engine that training and evaluation share (SPEC section 2).

FGSM, PGD-k with restarts, CW-inf, logit scaling, TRADES' KL attack and Zeng's weighted PGD are
all this loop with a different objective, start and budget. GAIRAT's kappa is counted from the
same forwards the gradient uses, so it costs nothing extra.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from advrw.attacks.objectives import get_objective
from advrw.errors import AdvrwError

INITS = ("uniform", "normal", "none")
BN_MODES = ("eval", "train")


@contextlib.contextmanager
def model_mode(model: torch.nn.Module, train: bool):
    """Put ``model`` in train/eval mode and restore every submodule's own flag afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


def autocast(device_type: str, amp_dtype: torch.dtype | None):
    """The training step's mixed precision (``None`` = fp32, autocast off)."""
    return torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)


@dataclass
class PGDResult:
    x_adv: torch.Tensor
    kappa: torch.Tensor | None = None  # per example: iterates (start counted, final not) still correct
    logits: torch.Tensor | None = None  # logits of x_adv in attack mode, when asked for or restarts > 1


def check_budget(eps: float, step: float, steps: int, init: str = "uniform", bn_mode: str = "eval",
                 prefix: str = "attack") -> None:
    """One-line errors for an impossible budget, raised before any work."""
    if not eps > 0:
        raise AdvrwError(f"{prefix}.eps={eps} is invalid: must be > 0")
    if not step > 0:
        raise AdvrwError(f"{prefix}.step={step} is invalid: must be > 0")
    if step > eps:
        raise AdvrwError(f"{prefix}.step={step} is invalid: must be <= eps ({eps})")
    if int(steps) != steps or steps < 1:
        raise AdvrwError(f"{prefix}.steps={steps} is invalid: must be an integer >= 1")
    if init not in INITS:
        raise AdvrwError(f"{prefix}.init={init!r} is unknown: choose one of {', '.join(INITS)}")
    if bn_mode not in BN_MODES:
        raise AdvrwError(f"{prefix}.bn_mode={bn_mode!r} is unknown: choose one of {', '.join(BN_MODES)}")


def random_start(x: torch.Tensor, eps: float, init: str, generator=None) -> torch.Tensor:
    if init == "uniform":  # Madry, GAIRAT
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * (2 * eps) - eps
    elif init == "normal":  # TRADES, MART, MAIL, VIR, Zeng: 0.001 * N(0, I)
        noise = 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    elif init == "none":
        return x.clone()
    else:
        raise AdvrwError(f"attack.init={init!r} is unknown: choose one of {', '.join(INITS)}")
    # Keep the start a valid image inside the ball (matters only for tiny eps).
    return torch.min(torch.max(x + noise, x - eps), x + eps).clamp_(0.0, 1.0)


def _ascend(model, x, y, objective, ref_logits, params, eps, step, steps, init, track_kappa,
            generator, amp_dtype):
    x_adv = random_start(x, eps, init, generator)
    kappa = torch.zeros(len(x), dtype=torch.long, device=x.device) if track_kappa else None
    lower, upper = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with autocast(x.device.type, amp_dtype):
            logits = model(x_adv)
        if kappa is not None:
            kappa += logits.argmax(dim=1) == y
        loss = objective(logits, y, ref_logits, **params).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step * grad.sign(), lower), upper)
    return x_adv.detach(), kappa


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float,
        steps: int, init: str = "uniform", objective: str = "ce", ref_logits: torch.Tensor | None = None,
        alpha: float = 1.0, scale: float = 10.0, bn_mode: str = "eval", restarts: int = 1,
        track_kappa: bool = False, generator: torch.Generator | None = None,
        amp_dtype: torch.dtype | None = None, final_logits: bool = False) -> PGDResult:
    """L_inf PGD: ``x'_{t+1} = clip_[0,1](Proj_B(x,eps)(x'_t + step * sign(grad L)))``.

    ``objective`` is a name from ``advrw.attacks.objectives`` (``ce``, ``kl``, ``cw``,
    ``weighted_ce`` with ``alpha``, ``scaled_ce`` with ``scale``). The model runs in ``bn_mode``
    during the attack and every module's mode is restored afterwards. With ``restarts > 1`` each
    new restart attacks only the examples no earlier restart has fooled (AutoAttack's cascade),
    and per example the final point of the first restart that fools it is kept (else the
    restart whose final point has the highest loss).
    """
    check_budget(eps, step, steps, init, bn_mode)
    if restarts < 1:
        raise AdvrwError(f"attack.restarts={restarts} is invalid: must be >= 1")
    obj = get_objective(objective)
    params = {"alpha": alpha, "scale": scale}
    with model_mode(model, bn_mode == "train"):
        x_adv, kappa = _ascend(model, x, y, obj, ref_logits, params, eps, step, steps, init,
                               track_kappa, generator, amp_dtype)
        if restarts == 1 and not final_logits:
            return PGDResult(x_adv, kappa)
        with torch.no_grad():
            logits = model(x_adv).float()
            best_loss = obj(logits, y, ref_logits, **params)
        fooled = logits.argmax(dim=1) != y
        for _ in range(restarts - 1):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            ref = None if ref_logits is None else ref_logits[idx]
            cand, _ = _ascend(model, x[idx], y[idx], obj, ref, params, eps, step, steps, init,
                              False, generator, amp_dtype)
            with torch.no_grad():
                cand_logits = model(cand).float()
                cand_loss = obj(cand_logits, y[idx], ref, **params)
            better = (cand_logits.argmax(dim=1) != y[idx]) | (cand_loss > best_loss[idx])
            take = idx[better]
            x_adv[take], logits[take], best_loss[take] = cand[better], cand_logits[better], cand_loss[better]
            fooled[take] = cand_logits[better].argmax(dim=1) != y[take]
    return PGDResult(x_adv, kappa, logits)


def fgsm(model, x, y, *, eps: float, **kwargs) -> PGDResult:
    """FGSM = one PGD step of size eps from the clean point."""
    return pgd(model, x, y, eps=eps, step=eps, steps=1, init="none", **kwargs)
