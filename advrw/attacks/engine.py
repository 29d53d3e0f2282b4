"""The one L_inf PGD engine that training and evaluation share (SPEC section 2).

FGSM, PGD-k with restarts, CW-inf, logit scaling, TRADES' KL attack and Zeng's weighted PGD are
all this loop with a different objective, start and budget. GAIRAT's kappa is counted from the
same forwards the gradient uses, so it costs nothing extra. Two modes reuse the same loop:
FAT's early-stopped PGD (``tau``: per-example masks stop an example ``tau`` misclassified steps
after it is first misclassified) and staged attacks (``plan``: one objective and step size per
iteration, e.g. the margin-decomposition attacks in ``advrw.attacks.mde``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from advrw.attacks.common import valid_points
from advrw.attacks.objectives import get_objective
from advrw.core.errors import AdvrwError

INITS = ("uniform", "normal", "none")
BN_MODES = ("eval", "train", "train_frozen")  # train_frozen: the training step freezes running stats


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
    steps_taken: torch.Tensor | None = None  # per example: gradient steps applied (early-stop mode only)


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


def random_start(x: torch.Tensor, eps: float, init: str, generator=None, clamp: bool = True) -> torch.Tensor:
    """``x + noise`` inside the eps-ball; ``clamp`` also clips it to [0, 1] (GAIRAT's code,
    torchattacks, Madry); TRADES', MART's, MAIL's and Zeng's code leave that to the first step."""
    if init == "uniform":  # Madry, GAIRAT
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * (2 * eps) - eps
    elif init == "normal":  # TRADES, MART, MAIL, VIR, Zeng: 0.001 * N(0, I)
        noise = 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    elif init == "none":
        return x.clone()
    else:
        raise AdvrwError(f"attack.init={init!r} is unknown: choose one of {', '.join(INITS)}")
    # Keep the start inside the ball (matters only for tiny eps); [0, 1] only if asked.
    start = torch.min(torch.max(x + noise, x - eps), x + eps)
    return start.clamp_(0.0, 1.0) if clamp else start


def _ascend(model, x, y, objective, ref_logits, params, eps, step, steps, init, track_kappa,
            generator, amp_dtype, clamp_start=True, tau=None, omega=0.0, plan=None, keep_fooled=False, eot=1):
    """The PGD loop. Returns ``(x_adv, kappa, steps_taken)``.

    ``tau`` (FAT, Zhang et al. 2020, Alg. 1 and the public ``earlystop``): an iterate that is
    misclassified with no budget left stops its example there; a misclassified iterate with budget
    left spends one unit and steps on. Masks, not per-example Python, so a stopped example only
    stops moving (the batch keeps its size: no host sync). ``omega``: FAT's Gaussian noise added
    to every step. ``plan``: per-iteration ``(objective, step)`` overriding both. ``keep_fooled``:
    return the first *valid* iterate (in the eps-ball and [0, 1]) the model misclassified (else the
    final one), as the MD attacks do: an unclipped start outside [0, 1] never counts, so it
    cannot hide a later valid break. ``eot``: gradients summed over that many forwards per step
    (Expectation over Transformation, for a randomised model).
    """
    x_adv = random_start(x, eps, init, generator, clamp=clamp_start)
    n = len(x)
    kappa = torch.zeros(n, dtype=torch.long, device=x.device) if track_kappa else None
    lower, upper = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
    shape = (-1,) + (1,) * (x.dim() - 1)
    early = tau is not None
    if early:
        budget = torch.full((n,), int(tau), dtype=torch.long, device=x.device)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        taken = torch.zeros(n, dtype=torch.long, device=x.device)
    if keep_fooled:
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        first = x_adv.clone()
    for t in range(steps):
        obj, size = (objective, step) if plan is None else plan[t]
        x_adv.requires_grad_(True)
        with autocast(x.device.type, amp_dtype):
            logits = model(x_adv)
        predicted_right = logits.argmax(dim=1) == y
        correct = predicted_right
        if early:
            wrong = ~correct & active
            active = active & ~(wrong & (budget == 0))
            budget -= (wrong & active).long()
            correct = correct & active  # a stopped example is no longer an iterate of the attack
        if kappa is not None:
            kappa += correct
        if keep_fooled:
            newly = ~predicted_right & ~found & valid_points(x_adv, x, eps)
            first = torch.where(newly.view(shape), x_adv.detach(), first)
            found |= newly
        loss = obj(logits, y, ref_logits, **params).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        for _ in range(eot - 1):
            with autocast(x.device.type, amp_dtype):
                resampled = model(x_adv)
            grad = grad + torch.autograd.grad(obj(resampled, y, ref_logits, **params).sum(), x_adv)[0]
        moved = x_adv.detach() + size * grad.sign()
        if omega:
            moved = moved + omega * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        moved = torch.min(torch.max(moved, lower), upper)
        if early:
            x_adv = torch.where(active.view(shape), moved, x_adv.detach())
            taken += active
        else:
            x_adv = moved
    x_adv = x_adv.detach()
    if keep_fooled:
        x_adv = torch.where(found.view(shape), first, x_adv)
    return x_adv, kappa, (taken if early else None)


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float,
        steps: int, init: str = "uniform", objective: str = "ce", ref_logits: torch.Tensor | None = None,
        alpha: float = 1.0, scale: float = 10.0, bn_mode: str = "eval", restarts: int = 1,
        track_kappa: bool = False, generator: torch.Generator | None = None,
        amp_dtype: torch.dtype | None = None, final_logits: bool = False, clamp_start: bool = True,
        tau: int | None = None, omega: float = 0.0, plan: list | None = None, keep_fooled: bool = False,
        target: torch.Tensor | None = None, eot: int = 1) -> PGDResult:
    """L_inf PGD: ``x'_{t+1} = clip_[0,1](Proj_B(x,eps)(x'_t + step * sign(grad L)))``.

    ``objective`` is a name from ``advrw.attacks.objectives`` (``ce``, ``kl``, ``cw``,
    ``weighted_ce`` with ``alpha``, ``scaled_ce`` with ``scale``). The model runs in ``bn_mode``
    during the attack and every module's mode is restored afterwards. With ``restarts > 1`` each
    new restart attacks only the examples no earlier restart has fooled (AutoAttack's cascade),
    and per example the final point of the first restart that fools it is kept (else the
    restart whose final point has the highest loss).

    ``clamp_start`` clips the random start to [0, 1]. ``tau`` (an int >= 0) turns on FAT's early
    stop and ``omega`` its per-step noise; ``steps_taken`` then reports each example's steps.
    ``plan`` (``steps`` pairs of objective name and step size) runs a staged attack whose final
    objective is ``objective``; ``target`` (class per example) feeds the targeted objectives;
    ``keep_fooled`` keeps the first misclassified iterate.
    """
    check_budget(eps, step, steps, init, bn_mode)
    if restarts < 1:
        raise AdvrwError(f"attack.restarts={restarts} is invalid: must be >= 1")
    if tau is not None and (int(tau) != tau or tau < 0):
        raise AdvrwError(f"attack.tau={tau} is invalid: must be an integer >= 0")
    if not omega >= 0:
        raise AdvrwError(f"attack.omega={omega} is invalid: must be >= 0")
    if plan is not None:
        if len(plan) != steps:
            raise AdvrwError(f"attack plan has {len(plan)} stages for steps={steps}: one per step")
        plan = [(get_objective(name), float(size)) for name, size in plan]
    obj = get_objective(objective)
    params = {"alpha": alpha, "scale": scale, "target": target}
    if int(eot) != eot or eot < 1:
        raise AdvrwError(f"attack.eot={eot} is invalid: must be an integer >= 1")
    mode = {"clamp_start": clamp_start, "tau": tau, "omega": omega, "plan": plan, "keep_fooled": keep_fooled,
            "eot": int(eot)}
    with model_mode(model, bn_mode == "train"):
        x_adv, kappa, taken = _ascend(model, x, y, obj, ref_logits, params, eps, step, steps, init,
                                      track_kappa, generator, amp_dtype, **mode)
        if restarts == 1 and not final_logits:
            return PGDResult(x_adv, kappa, steps_taken=taken)
        with torch.no_grad():
            logits = model(x_adv).float()
            best_loss = obj(logits, y, ref_logits, **params)
        fooled = logits.argmax(dim=1) != y
        for _ in range(restarts - 1):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            ref = None if ref_logits is None else ref_logits[idx]
            sub = {k: (v[idx] if torch.is_tensor(v) else v) for k, v in params.items()}
            cand, _, _ = _ascend(model, x[idx], y[idx], obj, ref, sub, eps, step, steps, init,
                                 False, generator, amp_dtype, **mode)
            with torch.no_grad():
                cand_logits = model(cand).float()
                cand_loss = obj(cand_logits, y[idx], ref, **sub)
            better = (cand_logits.argmax(dim=1) != y[idx]) | (cand_loss > best_loss[idx])
            take = idx[better]
            x_adv[take], logits[take], best_loss[take] = cand[better], cand_logits[better], cand_loss[better]
            fooled[take] = cand_logits[better].argmax(dim=1) != y[take]
    return PGDResult(x_adv, kappa, logits, taken)


def fgsm(model, x, y, *, eps: float, **kwargs) -> PGDResult:
    """FGSM = one PGD step of size eps from the clean point."""
    return pgd(model, x, y, eps=eps, step=eps, steps=1, init="none", **kwargs)
