"""Build what a training run needs from its config: the model, optimiser and schedule, the step spec."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from advrw.attacks.fat import fat_spec_kwargs
from advrw.core import hardware
from advrw.core.hardware import resolve_device
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
        **fat_spec_kwargs(cfg.attack), **awp_spec_fields(cfg))


def build_model_for(cfg: DictConfig, data, device, channels_last=None):
    norm = (data.mean, data.std) if cfg.dataset.get("normalize") else (None, None)
    model = build_model(cfg.model.name, data.num_classes, in_channels=data.channels, image_size=data.image_size,
                        mean=norm[0], std=norm[1]).to(device)
    if channels_last is None:  # callers without a resolved runtime (tests, notebooks)
        channels_last = hardware.resolve_runtime(cfg, device, warn=False).channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def optimizer_and_scheduler(model, s):
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                          nesterov=bool(s.nesterov))
    if s.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(s.epochs))
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(s.milestones), gamma=s.lr_gamma)
    return opt, sched
