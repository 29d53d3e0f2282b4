"""Weight averaging: an exponential moving average (EMA) of the trained model's parameters (``ema=standard``).

After every optimiser step ``ema = decay_t * ema + (1 - decay_t) * live`` over the *parameters*, with

    decay_t = 0                                   while t < warm-up steps (a plain copy of the live weights)
            = min(decay, (1 + d) / (10 + d))      after it, d = t - warm-up  (``ramp: true``, the anchors')
            = decay                               after it, with ``ramp: false``

``t`` = optimiser steps done (1 after the first). This is DM-Improves-AT's ``ema_update`` (Gowal et al.'s
recipe: ``tau`` 0.995, warm-up 2.5% of all steps). **Buffers** (BN running statistics, the Normalize
constants) are not averaged: they are copied from the live model at each epoch end (``buffers: epoch``,
as DM-AT's ``update_bn`` does before it evaluates) or after every step (``buffers: step``); evaluation,
``best.pt`` and checkpoints only ever see the EMA at an epoch end or a saved position, so both give
the same numbers there whenever the epoch-end copy has run.

Why not ``torch.optim.swa_utils.AveragedModel``: its ``update_parameters`` tests its ``n_averaged``
counter on the host every call (a device sync per step on CUDA), and its EMA function takes one fixed
decay, while the ramp depends on the step. Here the step counter and the decay stay on the device and an
update is one ``_foreach_lerp_`` over the parameter list: no host sync, and (measured in
``scripts/bench.py``) a small fraction of a PGD-10 training step.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from advrw.core.errors import AdvrwError

EVALUATE = ("ema", "raw", "both")  # which weights validation, best.pt and the final evaluation score
BUFFERS = ("epoch", "step")
WARMUP_IN = ("fraction", "steps")


def decay_at(t: int, *, decay: float, warmup_steps: float, ramp: bool = True) -> float:
    """The decay used by the update after optimiser step ``t`` (1-indexed); 0 = copy the live weights."""
    if t < warmup_steps:
        return 0.0
    if not ramp:
        return float(decay)
    d = t - warmup_steps
    return min(float(decay), (1.0 + d) / (10.0 + d))


def warmup_steps(ema_cfg, total_steps: int) -> float:
    """``ema.warmup`` in optimiser steps: a fraction of the run's steps (the anchors' 0.025) or a count."""
    w = float(ema_cfg.get("warmup", 0.0))
    return w * total_steps if ema_cfg.get("warmup_in", "fraction") == "fraction" else w


class ModelEMA:
    """The averaged copy of ``model`` (``.module``, always in eval mode, no gradients), on its device."""

    def __init__(self, model: nn.Module, *, decay: float, warmup_steps: float = 0.0, ramp: bool = True,
                 buffers: str = "epoch"):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.ramp, self.buffers = float(decay), float(warmup_steps), bool(ramp), buffers
        device = next(model.parameters()).device
        self.t = torch.zeros((), dtype=torch.long, device=device)  # optimiser steps averaged so far
        self._ema = list(self.module.parameters())
        self._live = list(model.parameters())
        self._ema_buf = list(self.module.buffers())
        self._live_buf = list(model.buffers())

    def _decay(self) -> torch.Tensor:
        t = self.t.double()
        d = t - self.warmup
        ramped = torch.clamp((1.0 + d) / (10.0 + d), max=self.decay) if self.ramp else torch.full_like(t, self.decay)
        return torch.where(t < self.warmup, torch.zeros_like(t), ramped)

    @torch.no_grad()
    def update(self) -> None:
        """After an optimiser step: average the parameters (and copy buffers with ``buffers: step``)."""
        self.t += 1
        weight = (1.0 - self._decay()).float()  # lerp at weight 1 is exactly the live value (the copy)
        torch._foreach_lerp_(self._ema, self._live, weight)
        if self.buffers == "step":
            self.copy_buffers()

    @torch.no_grad()
    def copy_buffers(self) -> None:
        if self._ema_buf:
            torch._foreach_copy_(self._ema_buf, self._live_buf)

    def end_epoch(self) -> None:
        """Before validation and the epoch's checkpoint: BN statistics from the live model."""
        self.copy_buffers()

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "t": self.t.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.t.copy_(state["t"])


def build(cfg, model: nn.Module, total_steps: int) -> ModelEMA | None:
    """The run's EMA from ``cfg.ema`` (None for ``ema=none``)."""
    e = cfg.ema
    if e.name == "none":
        return None
    return ModelEMA(model, decay=float(e.decay), warmup_steps=warmup_steps(e, total_steps), ramp=bool(e.ramp),
                    buffers=str(e.buffers))


def scored(cfg) -> list[str]:
    """The weights the final evaluation scores; the last one scored is the top of results.json (and its figures)."""
    e = cfg.get("ema")
    if e is None or e.name == "none":
        return ["raw"]
    return {"ema": ["ema"], "raw": ["raw"], "both": ["raw", "ema"]}[str(e.evaluate)]


def selects_on_ema(cfg) -> bool:
    """Validation (and so best.pt) uses the EMA unless ``ema.evaluate=raw``."""
    return scored(cfg)[-1] == "ema"


def weights_of(state: dict, which: str) -> dict:
    """The state_dict of a checkpoint's ``raw`` (trained) or ``ema`` (averaged) model."""
    if which == "raw":
        return state["model"]
    if "ema" not in state:
        raise AdvrwError("ema.evaluate needs the checkpoint's EMA weights, but it has none (trained with ema=none): "
                         "use ema.evaluate=raw")
    return state["ema"]["model"]


def merge(per_weights: dict[str, dict]) -> dict:
    """One results dict: the last scored weights' numbers on top, each under ``weights`` when two were scored."""
    last = list(per_weights)[-1]
    top = dict(per_weights[last])
    if len(per_weights) > 1:
        top["protocol"] = {**top["protocol"], "top_level_weights": last}
        top["weights"] = dict(per_weights)
    return top


def validate_ema(cfg) -> None:
    """ema.*: one line naming the key, the value and what is allowed."""
    e = cfg.get("ema")
    if e is None:
        return
    if e.name not in ("none", "standard"):
        raise AdvrwError(f"ema={e.name} is unknown: choose one of none, standard")
    if e.name == "none":
        return
    decay, warm = e.get("decay"), e.get("warmup")
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise AdvrwError(f"ema.decay={decay} is invalid: must be a number in [0, 1)")
    for key, allowed in (("evaluate", EVALUATE), ("buffers", BUFFERS), ("warmup_in", WARMUP_IN)):
        if e.get(key) not in allowed:
            raise AdvrwError(f"ema.{key}={e.get(key)} is invalid: choose one of {', '.join(allowed)}")
    if isinstance(warm, bool) or not isinstance(warm, (int, float)) or not math.isfinite(warm) or warm < 0 or \
            (e.warmup_in == "fraction" and warm >= 1):
        allowed = "a fraction in [0, 1) of all steps" if e.warmup_in == "fraction" else "a step count >= 0"
        raise AdvrwError(f"ema.warmup={warm} is invalid with ema.warmup_in={e.warmup_in}: must be {allowed}")
    if not isinstance(e.get("ramp"), bool):
        raise AdvrwError(f"ema.ramp={e.get('ramp')} is invalid: must be true or false")
