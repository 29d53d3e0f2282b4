"""Adversarial weight perturbation (AWP, Wu et al. 2020): the ``minimizer=awp`` option.

Before the descent step, each perturbed layer's weight ``w_l`` moves to ``w_l + v_l`` with
``v_l = gamma * ||w_l|| * g_l / ||g_l||`` where ``g_l`` is the gradient of the training loss
(the same weighted defense loss the step minimises) at the current weights: one normalised
ascent step per layer. The descent gradient is taken at ``w + v``; then the weights are copied
back (bitwise, not ``(w + v) - v``) and the optimiser steps from ``w``.

How this matches the authors' public code (csdongxian/AWP, ``utils_awp.py``): they load the
weights into a proxy model, take one plain-SGD step on ``-loss`` with it (no momentum, so the
proxy optimiser keeps no state), and normalise ``proxy - model`` per layer; the proxy's learning
rate cancels in that normalisation, so the direction is ``g_l`` itself and no proxy model or
proxy optimiser state is needed here (nothing extra goes into the checkpoint). They perturb
every parameter whose name contains ``weight`` and has more than one dimension (conv and linear
weights; not biases or BN), as here. Their optimiser steps at ``w + v``, so weight decay acts on
``w + v``; adding ``wd * v`` to the gradient before stepping from ``w`` gives the same update.
The ascent forward runs in train mode (batch statistics), like their ``proxy.train()``, without
touching the model's BN running statistics (the proxy's were thrown away).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from advrw.core.errors import AdvrwError

MINIMIZERS = ("sgd", "awp")
# The authors' defaults (AT gamma 0.01 / warmup 0, TRADES 0.005 / 9) live in conf/minimizer/awp.yaml
# and conf/minimizer_combo/awp_trades.yaml.
EPS = 1e-20  # the authors' guard against a zero gradient norm


def perturbed_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters AWP moves: names containing ``weight`` with more than one dimension."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1 and "weight" in n]


@dataclass
class Perturbation:
    """What :func:`restore` needs: the perturbed parameters, their original values and ``v``."""

    params: list[torch.nn.Parameter]
    originals: list[torch.Tensor]
    diffs: list[torch.Tensor]


def perturb(model: torch.nn.Module, ascent_loss: torch.Tensor, gamma: float) -> Perturbation:
    """Move each perturbed layer by ``gamma * ||w_l||`` along the normalised gradient of ``ascent_loss``."""
    named = perturbed_parameters(model)
    params = [p for _, p in named]
    grads = torch.autograd.grad(ascent_loss, params, allow_unused=True)
    originals, diffs = [], []
    with torch.no_grad():
        for p, g in zip(params, grads):
            originals.append(p.detach().clone())
            if g is None:  # a layer the loss does not reach is not perturbed
                v = torch.zeros_like(p)
            else:
                g = g.float()
                v = (gamma * p.float().norm() / (g.norm() + EPS) * g).to(p.dtype)
            diffs.append(v)
            p.add_(v)
    return Perturbation(params, originals, diffs)


def restore(pert: Perturbation, optimizer: torch.optim.Optimizer) -> None:
    """Copy the original weights back (exact) and move weight decay's term to ``w + v``.

    Call after ``loss.backward()`` at the perturbed weights and before ``optimizer.step()``.
    """
    decay = {id(p): float(g.get("weight_decay", 0.0)) for g in optimizer.param_groups for p in g["params"]}
    with torch.no_grad():
        for p, w, v in zip(pert.params, pert.originals, pert.diffs):
            p.copy_(w)
            wd = decay.get(id(p), 0.0)
            if wd and p.grad is not None:
                p.grad.add_(v, alpha=wd)


def active(minimizer: str, epoch: int | None, warmup: int) -> bool:
    """AWP perturbs from epoch ``warmup`` (0-indexed) on; ``epoch=None`` means past any warm-up."""
    return minimizer == "awp" and (epoch is None or epoch >= warmup)


def validate_minimizer(cfg) -> None:
    """``minimizer.*``: a known name, gamma >= 0, warmup an integer >= 0."""
    m = cfg.get("minimizer")
    if m is None:
        return
    if m.name not in MINIMIZERS:
        raise AdvrwError(f"minimizer.name={m.name!r} is unknown: choose one of {', '.join(MINIMIZERS)}")
    if m.name != "awp":
        return
    gamma, warmup = m.get("gamma"), m.get("warmup")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
        raise AdvrwError(f"minimizer.gamma={gamma} is invalid: must be a number >= 0 (AWP's relative weight step)")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise AdvrwError(f"minimizer.warmup={warmup} is invalid: must be an integer >= 0 (epochs without AWP)")
    epochs = cfg.get("schedule", {}).get("epochs")
    if isinstance(epochs, int) and warmup >= epochs:
        raise AdvrwError(f"minimizer.warmup={warmup} is invalid: must be in 0..{epochs - 1} (< schedule.epochs="
                         f"{epochs}), else AWP never runs")


def spec_fields(cfg) -> dict:
    """StepSpec's minimizer fields from the config (plain SGD when the group is absent)."""
    m = cfg.get("minimizer")
    if m is None or m.name == "sgd":
        return {"minimizer": "sgd"}
    return {"minimizer": "awp", "awp_gamma": float(m.gamma), "awp_warmup": int(m.warmup)}
