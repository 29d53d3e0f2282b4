"""One adversarial training step: attack -> forwards -> weights -> weighted defense loss.

The step takes a plain ``StepSpec`` (built once from the config) so it knows nothing of Hydra.
It returns device tensors only -- no ``.item()`` -- so the loop decides when to sync.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import torch

from advrw.methods import awp
from advrw.attacks import model_mode, pgd
from advrw.attacks.fat import tau_at_epoch
from advrw.attacks.engine import autocast
from advrw.methods.defenses import NEEDS_NATURAL as DEFENSE_NEEDS_NATURAL
from advrw.methods.defenses import defense_loss
from advrw.methods.weighting import compute_weights, needs_of


@dataclass(frozen=True)
class StepSpec:
    defense: str = "at"
    defense_kwargs: dict = field(default_factory=dict)  # beta_trades, lambda_mart, detach_nat
    scheme: str = "none"
    scheme_hparams: dict = field(default_factory=dict)
    detach: bool = True
    combine: str = "multiply"
    eps: float = 8 / 255
    step: float = 2 / 255
    steps: int = 10
    init: str = "uniform"
    bn_mode: str = "eval"
    attack_loss: str = "auto"
    weighted_attack: bool = False
    attack_alpha: float = 1.0
    amp_dtype: torch.dtype | None = None
    minimizer: str = "sgd"  # sgd | awp (advrw/methods/awp.py)
    awp_gamma: float = 0.0
    awp_warmup: int = 0
    clamp_start: bool = True
    tau: int | None = None  # FAT's early stop (None = plain PGD); the value at epoch 1
    tau_milestones: tuple = ()  # FAT's dynamic tau: +1 after each of these (1-indexed) epochs
    omega: float = 0.0  # FAT's per-step noise
    epoch: int = 0  # 0-indexed; only the tau schedule reads it
    clip_grad_norm: float | None = None  # schedule.clip_grad_norm: cap the gradient's global L2 norm
    first_bn_momentum: float | None = None  # model.first_bn_momentum: BN momentum of the run's first step only

    def at_epoch(self, epoch: int) -> "StepSpec":
        """The spec for a 0-indexed training epoch (only FAT's tau schedule depends on it)."""
        return self if self.tau is None or not self.tau_milestones else replace(self, epoch=epoch)

    @property
    def current_tau(self) -> int | None:
        return None if self.tau is None else tau_at_epoch(self.epoch + 1, self.tau, self.tau_milestones)

    @property
    def objective(self) -> str:
        """By default TRADES ascends the KL to the natural prediction, AT and MART CE (SPEC 1)."""
        base = self.attack_loss
        if base == "auto":
            base = "kl" if self.defense == "trades" else "ce"
        return f"weighted_{base}" if self.weighted_attack else base


@contextlib.contextmanager
def frozen_bn_stats(model):
    """Batch statistics for the forward, but running stats untouched (momentum 0, counter kept)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


@contextlib.contextmanager
def bn_momentum(model, momentum: float):
    """Every BN layer at ``momentum`` for the block, its own value after."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = momentum
    try:
        yield
    finally:
        for m, value in zip(bns, saved):
            m.momentum = value


def _forward(model, x, amp_dtype):
    with autocast(x.device.type, amp_dtype):
        return model(x)


def adversarial_examples(model, x, y, spec: StepSpec, generator=None):
    """The training attack; returns ``(x_adv, kappa)`` (kappa only for schemes that read it).

    ``bn_mode``: ``eval`` (running statistics), ``train`` (batch statistics, and the attack's forwards
    update the running ones, as Zeng's code) or ``train_frozen`` (batch statistics, running ones
    untouched: DM-Improves-AT's ``track_bn_stats(model, False)``)."""
    train_bn = spec.bn_mode in ("train", "train_frozen")
    frozen = frozen_bn_stats(model) if spec.bn_mode == "train_frozen" else contextlib.nullcontext()
    ref = None
    with frozen:
        if spec.objective.endswith("kl"):  # the KL attack needs the natural prediction
            with torch.no_grad(), model_mode(model, train_bn):
                ref = _forward(model, x, spec.amp_dtype).float()
        res = pgd(model, x, y, eps=spec.eps, step=spec.step, steps=spec.steps, init=spec.init,
                  objective=spec.objective, ref_logits=ref, alpha=spec.attack_alpha,
                  bn_mode="train" if train_bn else "eval", track_kappa=needs_of(spec.scheme).kappa,
                  generator=generator, amp_dtype=spec.amp_dtype, clamp_start=spec.clamp_start,
                  tau=spec.current_tau, omega=spec.omega)
    return res.x_adv, res.kappa


def train_step(model, optimizer, x, y, spec: StepSpec, *, burn_in: bool = False, generator=None,
               epoch: int | None = None, first: bool = False) -> dict:
    """One optimiser step. Returns detached device tensors: loss, weights, per-batch corrects.

    ``epoch`` (0-indexed) only matters for AWP's warm-up; None = past it. ``first``: the run's very
    first step, where ``spec.first_bn_momentum`` (DeepMind's 1.0: running stats = that batch's) applies.
    """
    if first and spec.first_bn_momentum is not None:
        with bn_momentum(model, spec.first_bn_momentum):
            return train_step(model, optimizer, x, y, spec, burn_in=burn_in, generator=generator, epoch=epoch)
    x_adv, kappa = adversarial_examples(model, x, y, spec, generator)
    model.train()
    pert = None
    if awp.active(spec.minimizer, epoch, spec.awp_warmup):
        with frozen_bn_stats(model):  # AWP's ascent forward must not move BN's running statistics
            ascent = _weighted_loss(model, x, x_adv, y, kappa, spec, burn_in)[0]
        pert = awp.perturb(model, ascent, spec.awp_gamma)
    loss, parts, w, z_nat, z_adv = _weighted_loss(model, x, x_adv, y, kappa, spec, burn_in)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if pert is not None:  # the gradient was taken at w + v; step from the exactly restored w
        awp.restore(pert, optimizer)
    if spec.clip_grad_norm is not None:  # on the device: no host sync
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], spec.clip_grad_norm)
    optimizer.step()
    out = {"loss": loss.detach(), "w": w.detach().float(),
           "correct_adv": (z_adv.argmax(1) == y).sum()}
    if z_nat is not None:
        out["correct_nat"] = (z_nat.argmax(1) == y).sum()
    out.update({f"loss_{k}": v for k, v in parts.items()})
    return out


def _weighted_loss(model, x, x_adv, y, kappa, spec: StepSpec, burn_in: bool):
    """Forwards -> weights -> weighted defense loss: ``(loss, parts, w, z_nat, z_adv)``."""
    z_nat = None
    needs = needs_of(spec.scheme)
    if DEFENSE_NEEDS_NATURAL[spec.defense]:
        z_nat = _forward(model, x, spec.amp_dtype)
    elif needs.natural(spec.scheme_hparams) and not burn_in:
        # A scheme reads p(x) that the AT loss does not need: same train-mode forward as the
        # loss's, but without gradient and without letting clean data into BN's running stats.
        with torch.no_grad(), frozen_bn_stats(model):
            z_nat = _forward(model, x, spec.amp_dtype)
    z_adv = _forward(model, x_adv, spec.amp_dtype)
    hparams = spec.scheme_hparams
    if needs.steps:  # e.g. GAIRAT: kappa counts this attack's iterates, K is its step count
        hparams = {**hparams, "steps": spec.steps}
    w = compute_weights(spec.scheme, z_nat, z_adv, y, kappa, detach=spec.detach, burn_in=burn_in, **hparams)
    # During burn-in every scheme trains the plain defense (w = 1, multiplied).
    combine = "multiply" if burn_in else spec.combine
    loss, parts = defense_loss(spec.defense, z_nat, z_adv, y, w, combine=combine, **spec.defense_kwargs)
    return loss, parts, w, z_nat, z_adv
