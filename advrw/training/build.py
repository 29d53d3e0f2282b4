"""Build what a training run needs from its config: the model, optimiser and schedule, the step spec."""

from __future__ import annotations

import functools
import math

import torch
from omegaconf import DictConfig, OmegaConf

from advrw.attacks.fat import fat_spec_kwargs
from advrw.core import hardware
from advrw.core.hardware import resolve_device
from advrw.core.keys import as_list
from advrw.methods.awp import spec_fields as awp_spec_fields
from advrw.methods.weighting import scheme_hparams
from advrw.models import build_model
from advrw.training.step import StepSpec


def step_spec(cfg: DictConfig, runtime=None) -> StepSpec:
    d = OmegaConf.to_container(cfg.defense, resolve=True)
    w = OmegaConf.to_container(cfg.weighting, resolve=True)
    hp = scheme_hparams(w)
    hp.pop("burn_in", None)
    return StepSpec(
        defense=d.pop("name"), defense_kwargs={k: v for k, v in d.items() if not k.startswith("attack_")},
        scheme=w["name"], scheme_hparams=hp, detach=bool(w["detach"]), combine=w["combine"],
        eps=float(cfg.attack.eps), step=float(cfg.attack.step), steps=int(cfg.attack.steps), init=cfg.attack.init,
        bn_mode=cfg.attack.bn_mode, attack_loss=cfg.attack.get("loss", "auto"), weighted_attack=bool(cfg.attack.weighted), attack_alpha=float(cfg.attack.alpha),
        amp_dtype=(runtime or hardware.resolve_runtime(cfg, resolve_device(cfg.device), warn=False)).amp_dtype,
        clip_grad_norm=None if cfg.schedule.get("clip_grad_norm") is None else float(cfg.schedule.clip_grad_norm),
        first_bn_momentum=None if cfg.model.get("first_bn_momentum") is None else float(cfg.model.first_bn_momentum),
        **fat_spec_kwargs(cfg.attack), **awp_spec_fields(cfg))


def build_model_for(cfg: DictConfig, data, device, channels_last=None):
    norm = (data.mean, data.std) if cfg.dataset.get("normalize") else (None, None)
    model = build_model(cfg.model.name, data.num_classes, in_channels=data.channels, image_size=data.image_size,
                        mean=norm[0], std=norm[1], activation=cfg.model.get("activation"),
                        bn_momentum=cfg.model.get("bn_momentum")).to(device)
    if channels_last is None:  # callers without a resolved runtime (tests, notebooks)
        channels_last = hardware.resolve_runtime(cfg, device, warn=False).channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def lr_scale(s) -> float:
    """``schedule.lr_scaling``: ``linear`` multiplies ``schedule.lr`` by batch_size / 256 (Goyal et al.)."""
    return int(s.batch_size) / 256 if s.get("lr_scaling", "none") == "linear" else 1.0


def param_groups(model, exclude) -> list[dict]:
    """SGD groups: weight decay on every parameter except ``exclude``'s kinds (``bn``: weights and biases
    of BatchNorm layers; ``bias``: every bias), which get ``weight_decay=0``; one group when nothing is excluded."""
    exclude = set(as_list(exclude))
    if not exclude:
        return [{"params": list(model.parameters())}]
    norm = {id(p) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = ("bn" in exclude and id(p) in norm) or ("bias" in exclude and name.rsplit(".", 1)[-1] == "bias")
        (no_decay if skip else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def schedule_units(s, steps_per_epoch: int) -> tuple[int, float]:
    """``(T, W)``: the schedule's length and warm-up in its own steps (epochs, or iterations with
    ``schedule.step_per=iteration``); ``schedule.warmup`` counts epochs or, with ``warmup_in: fraction``,
    a share of the run."""
    per = steps_per_epoch if s.get("step_per", "epoch") == "iteration" else 1
    total = int(s.epochs) * per
    w = float(s.get("warmup", 0) or 0)
    return total, (w * total if s.get("warmup_in", "epochs") == "fraction" else w * per)


def warmup_cosine(i: int, total: int, warmup: float) -> float:
    """The lr factor at schedule step ``i`` (0-indexed): ``(i + 1) / W`` for ``i < W``, then
    ``(1 + cos(pi (i - W) / (T - W))) / 2`` down to 0 at ``i = T``."""
    if i < warmup:
        return min(1.0, (i + 1) / warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (i - warmup) / max(total - warmup, 1e-12))))


def optimizer_and_scheduler(model, s, steps_per_epoch: int = 1):
    """SGD (param groups for ``schedule.wd_exclude``) and the lr schedule; ``steps_per_epoch`` only
    matters with ``schedule.step_per=iteration`` (the loop steps the scheduler after every batch)."""
    lr = float(s.lr) * lr_scale(s)
    opt = torch.optim.SGD(param_groups(model, s.get("wd_exclude")), lr=lr, momentum=s.momentum,
                          weight_decay=s.weight_decay, nesterov=bool(s.nesterov))
    total, warm = schedule_units(s, steps_per_epoch)
    kind = s.lr_schedule
    if kind == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    elif kind == "warmup_cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(warmup_cosine, total=total, warmup=warm))
    elif kind == "one_cycle":  # torch's OneCycleLR, also cycling SGD's momentum (max -> base -> max)
        oc = s.one_cycle
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total, pct_start=float(oc.pct_start), div_factor=float(oc.div_factor),
            final_div_factor=float(oc.final_div_factor), cycle_momentum=bool(oc.cycle_momentum),
            base_momentum=float(oc.base_momentum), max_momentum=float(oc.max_momentum))
    else:
        milestones = [int(m) * (total // int(s.epochs)) for m in s.milestones]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=s.lr_gamma)
    return opt, sched


def per_iteration(s) -> bool:
    """Whether the loop steps the scheduler after every batch (else after every epoch)."""
    return s.get("step_per", "epoch") == "iteration"
