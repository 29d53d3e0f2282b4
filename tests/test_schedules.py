"""The modern recipe's optimiser pieces (advrw/training/build.py, the step's clipping): warm-up + cosine and
one-cycle schedules per epoch or per iteration, lr scaling, weight-decay groups, gradient clipping."""

from __future__ import annotations

import math

import pytest
import torch

from advrw.core.errors import AdvrwError
from advrw.models import build_model
from advrw.training.build import optimizer_and_scheduler, param_groups, step_spec
from advrw.training.step import train_step


def lrs(opt, sched, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_per_iteration_equals_the_formula(cfg_train):
    cfg = cfg_train("experiment=smoke", "schedule.lr_schedule=warmup_cosine", "schedule.step_per=iteration",
                    "schedule.warmup=1", "schedule.epochs=4", "schedule.lr=0.4")
    model = torch.nn.Linear(2, 2)
    opt, sched = optimizer_and_scheduler(model, cfg.schedule, steps_per_epoch=5)
    got = lrs(opt, sched, 20)
    total, warm = 20, 5  # 4 epochs x 5 iterations, 1 epoch of warm-up
    for i in (0, 2, 4, 5, 9, 13, 19):
        want = 0.4 * ((i + 1) / warm if i < warm else 0.5 * (1 + math.cos(math.pi * (i - warm) / (total - warm))))
        assert got[i] == pytest.approx(want, rel=1e-9), i
    assert got[4] == pytest.approx(0.4) and got[5] == pytest.approx(0.4)  # the peak, then the cosine starts
    cfg = cfg_train("experiment=smoke", "schedule.lr_schedule=warmup_cosine", "schedule.warmup=0.25",
                    "schedule.warmup_in=fraction", "schedule.epochs=8", "schedule.lr=0.1")
    opt, sched = optimizer_and_scheduler(torch.nn.Linear(2, 2), cfg.schedule, steps_per_epoch=5)
    got = lrs(opt, sched, 8)  # per epoch: W = 0.25 * 8 = 2 epochs
    assert got[:3] == pytest.approx([0.05, 0.1, 0.1]) and got[7] == pytest.approx(0.05 * (1 + math.cos(math.pi * 5 / 6)))


def test_one_cycle_per_epoch_is_dm_ats_cosinew_with_momentum_cycling(cfg_train):
    """DM-AT's ``cosinew``: OneCycleLR(pct_start=0.025) stepped once per epoch, momentum 0.95 -> 0.85 -> 0.95."""
    cfg = cfg_train("experiment=smoke", "schedule.lr_schedule=one_cycle", "schedule.one_cycle.pct_start=0.025",
                    "schedule.epochs=400", "schedule.lr=0.2", "schedule.nesterov=true")
    opt, sched = optimizer_and_scheduler(torch.nn.Linear(2, 2), cfg.schedule, steps_per_epoch=97)
    lr, mom = [], []
    for _ in range(400):
        lr.append(opt.param_groups[0]["lr"])
        mom.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    peak = lr.index(max(lr))
    assert lr[0] == pytest.approx(0.2 / 25) and max(lr) == pytest.approx(0.2) and peak == 9  # 0.025 * 400 - 1
    assert mom[0] == pytest.approx(0.95) and mom[peak] == pytest.approx(0.85) and mom[-1] == pytest.approx(0.95, abs=1e-4)
    assert lr[-1] < 1e-4 and opt.param_groups[0]["nesterov"]


def test_linear_lr_scaling_is_opt_in(cfg_train):
    for scaling, want in (("none", 0.1), ("linear", 0.1 * 512 / 256)):
        cfg = cfg_train("experiment=smoke", f"schedule.lr_scaling={scaling}", "schedule.batch_size=512")
        opt, _ = optimizer_and_scheduler(torch.nn.Linear(2, 2), cfg.schedule)
        assert opt.param_groups[0]["lr"] == pytest.approx(want)


@pytest.mark.parametrize("name", ["preact_resnet18", "wrn28_10_silu"])
def test_weight_decay_groups_hold_exactly_the_bn_and_bias_tensors(name):
    model = build_model(name, 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    bias = {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    groups = param_groups(model, ["bn", "bias"])
    assert [g.get("weight_decay") for g in groups] == [None, 0.0]
    assert {id(p) for p in groups[1]["params"]} == bn | bias
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters()} - bn - bias
    only_bn = param_groups(model, ["bn"])  # = DM-AT's rule (names containing 'batchnorm') on its WRN
    assert {id(p) for p in only_bn[1]["params"]} == bn and len(param_groups(model, [])) == 1
    if name.endswith("silu"):
        assert {id(p) for n, p in model.named_parameters() if "batchnorm" in n} == bn


def test_wd_exclude_reaches_the_optimizer_and_is_validated(cfg_train):
    from advrw.config.validation import validate_train

    cfg = cfg_train("experiment=smoke", "schedule.wd_exclude=[bn,bias]", "schedule.weight_decay=0.01")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt, _ = optimizer_and_scheduler(model, cfg.schedule)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0] and len(opt.param_groups[1]["params"]) == 3
    with pytest.raises(AdvrwError, match=r"schedule.wd_exclude=\['norm'\] is invalid: must list some of bn, bias"):
        validate_train(cfg_train("experiment=smoke", "schedule.wd_exclude=[norm]"))
    with pytest.raises(AdvrwError, match="schedule.clip_grad_norm=0 is invalid"):
        validate_train(cfg_train("experiment=smoke", "schedule.clip_grad_norm=0"))
    with pytest.raises(AdvrwError, match="schedule.warmup=1.5 is invalid with schedule.warmup_in=fraction"):
        validate_train(cfg_train("experiment=smoke", "schedule.warmup=1.5", "schedule.warmup_in=fraction"))


def test_clipping_caps_the_gradient_norm(cfg_train):
    def grad_norm(clip):
        cfg = cfg_train("experiment=smoke", "model=tiny", f"schedule.clip_grad_norm={clip}")
        torch.manual_seed(0)
        model = build_model("tiny", 10, image_size=16)
        opt, _ = optimizer_and_scheduler(model, cfg.schedule)
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
        train_step(model, opt, x, y, step_spec(cfg), generator=g)
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()

    free = grad_norm("null")
    assert free > 0.05
    assert grad_norm(0.01) == pytest.approx(0.01, rel=1e-4)
