"""What every library adapter shares: result types, the fixed-seed and quiet-stdout contexts,
input checks, and the re-check of returned points (``finalize``).

Every adapter evaluates the model in eval mode and restores each submodule's previous mode, keeps
inputs in [0, 1] and fp32 on ``x``'s device, seeds torch's RNG with a fixed seed inside a forked
RNG state (the caller's global RNG is untouched), sends nothing to stdout, and re-checks the
returned points itself: ``robust[i]`` is True only if no valid point (inside the eps-ball around
``x[i]`` and [0, 1]) that the model misclassifies was found. A returned point outside the ball is
replaced by ``x[i]`` (the attack gets no credit for it) and reported.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from advrw.core.errors import AdvrwError

log = logging.getLogger(__name__)


# Slack for float32 rounding in ``x + clamp(delta, -eps, eps)``; far below one 8-bit grey level.
EPS_TOL = 1e-6


@dataclass
class AttackResult:
    """Outcome of one library attack on ``N`` examples (all tensors on ``x``'s device).

    ``x_adv``: ``[N, ...]`` adversarial inputs (the clean input where the attack failed);
    ``robust``: BoolTensor ``[N]``, correct on a valid ``x_adv``; ``robust_accuracy``:
    ``robust.float().mean()``; ``clean_accuracy``: accuracy on ``x``; ``protocol``: every
    setting needed to report the number (attack, budgets, eps, norm, seed, n, library version).
    """

    x_adv: torch.Tensor
    robust: torch.Tensor
    robust_accuracy: float
    clean_accuracy: float
    protocol: dict = field(default_factory=dict)


@dataclass
class AutoAttackResult(AttackResult):
    """``AttackResult`` plus ``per_attack`` (attack name -> robust accuracy after that stage of
    the cascade; ``'clean'`` is the starting accuracy) and ``warnings`` (every message
    AutoAttack's sanity checks logged, plus ours, e.g. invalid perturbations)."""

    per_attack: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)



@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fixed-seed RNG for the call; the caller's CPU (and CUDA) RNG state is restored after."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def quiet_stdout(tag: str) -> Iterator[None]:
    """Libraries that ``print`` (torchattacks' device notice, verbose branches) go to our log."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    text = buf.getvalue().strip()
    if text:
        log.debug("%s printed: %s", tag, text)


def check_positive(name: str, value, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok_type = (isinstance(value, int) and not isinstance(value, bool)) if integer else (
        isinstance(value, (int, float)) and not isinstance(value, bool))
    kind = "integer" if integer else "number"
    bound = ">= 0" if allow_zero else "> 0"
    if not ok_type or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise AdvrwError(f"{name}={value!r} is invalid: must be a finite {kind} {bound}")


def prepare(x: torch.Tensor, y: torch.Tensor, eps: float, batch_size: int,
             device=None) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise AdvrwError(f"x has shape {shape}: must be an image batch [N, C, H, W]")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise AdvrwError(f"y has shape {shape}: must be 1-D with N={x.shape[0]} labels")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise AdvrwError(f"y has dtype {y.dtype}: must be integer class indices")
    check_positive("eps", eps)
    check_positive("batch_size", batch_size, integer=True)
    dev = torch.device(device) if device is not None else x.device
    x = x.detach().to(dev, torch.float32)
    y = y.detach().to(dev, torch.long)
    if x.shape[0] == 0:
        return x, y  # callers attacking "the still-robust subset" may pass none: see empty
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise AdvrwError(f"x has values in [{lo:.4g}, {hi:.4g}]: inputs must lie in [0, 1] "
                         "(normalisation belongs inside the model)")
    return x, y


@torch.no_grad()
def predict_labels(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)])


def lp_dist(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    d = (x_adv - x).flatten(1)
    if norm == "Linf":
        return d.abs().amax(dim=1)
    if norm == "L2":
        return d.norm(p=2, dim=1)
    return d.abs().sum(dim=1)  # L1


def valid_points(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "Linf") -> torch.Tensor:
    """bool [N]: ``x_adv[i]`` is finite, in [0, 1] and inside the ``norm`` eps-ball around ``x[i]``
    (with float32 rounding slack) -- the only points at which an attack may count a break."""
    flat = x_adv.detach().flatten(1)
    tol = EPS_TOL * (1.0 if norm == "Linf" else max(1.0, float(flat.shape[1])))
    return (torch.isfinite(flat).all(dim=1) & (flat.amin(dim=1) >= 0.0) & (flat.amax(dim=1) <= 1.0)
            & (lp_dist(x_adv.detach(), x, norm) <= eps + tol))


def finalize(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, *,
              eps: float, norm: str, batch_size: int, clean_pred: torch.Tensor,
              tag: str) -> tuple[torch.Tensor, torch.Tensor, float, list[str]]:
    """Validate the returned points, then decide robustness from OUR forward pass on them."""
    x_adv = x_adv.detach().to(x.device, torch.float32)
    if x_adv.shape != x.shape:
        raise AdvrwError(f"{tag} returned x_adv of shape {tuple(x_adv.shape)}: expected {tuple(x.shape)}")
    valid = valid_points(x_adv, x, eps, norm)
    notes = []
    n_bad = int((~valid).sum())
    if n_bad:
        msg = (f"{tag}: {n_bad} returned point(s) outside the {norm} eps={eps:.6g} ball or [0, 1]; "
               "they were replaced by the clean input and count as not broken")
        log.warning(msg)
        notes.append(msg)
        x_adv = torch.where(valid.view(-1, *[1] * (x.dim() - 1)), x_adv, x)
    robust = predict_labels(model, x_adv, batch_size) == y
    # A point the model already misclassifies is not robust, whatever the attack returned.
    robust &= clean_pred == y
    return x_adv, robust, n_bad, notes


def empty(cls, x: torch.Tensor, protocol: dict, **extra) -> AttackResult:
    """N = 0: nothing to attack; accuracies are NaN (undefined), never a fake 0 or 1."""
    log.info("%s: no examples to attack", protocol.get("attack"))
    return cls(x_adv=x.clone(), robust=torch.zeros(0, dtype=torch.bool, device=x.device),
               robust_accuracy=float("nan"), clean_accuracy=float("nan"),
               protocol=dict(protocol, n=0), **extra)


def lib_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
