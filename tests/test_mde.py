"""MDE (Ma et al. 2023) on a model built to have imbalanced gradients, and APGD-CE as its own attack."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advrw.attacks import pgd
from advrw.attacks.mde import md_attack, md_plan, md_step_sizes, run_mde
from advrw.core.errors import AdvrwError
from advrw.evaluation.suite import black_box, white_box

EPS = 0.1
D2 = torch.tensor([1.0, -1.0, 1.0, -1.0])


class Imbalanced(nn.Module):
    """Four classes on 1x2x2 inputs (flattened to u in [0,1]^4).

    z_0 = 1.5 + 0.2 sin(1e4 sum(u)): tiny range [1.3, 1.7] but a gradient of up to 2000 along
    (1,1,1,1) whose sign flips every few 1e-4; z_1 = 5 d2.u with d2 = (1,-1,1,-1), gradient 5;
    z_2 = z_3 = -10. With d2.x = 0 every input is class 0, and class 1 wins once d2.(x' - x) > 0.34
    (z_1 can reach 5 * 4 * eps = 2 > 1.7). CE's gradient -dz_0/du + p_1 dz_1/du has the sign of its
    huge, erratic z_0 part in every coordinate, so sign-PGD only wanders along (1,1,1,1); MD's
    first stage ascends z_1 alone and walks straight along d2.
    """

    def forward(self, x):
        u = x.flatten(1)
        z0 = 1.5 + 0.2 * torch.sin(1e4 * u.sum(1))
        z1 = 5.0 * (u @ D2.to(u))
        rest = torch.full_like(z0, -10.0)
        return torch.stack([z0, z1, rest, rest], dim=1)


def imbalanced_data(n=8):
    g = torch.Generator().manual_seed(0)
    a, b = 0.2 + 0.6 * torch.rand(n, generator=g), 0.2 + 0.6 * torch.rand(n, generator=g)
    x = torch.stack([a, a, b, b], dim=1).view(n, 1, 2, 2)  # d2.x = 0: class 0, margin 1.3 or more
    return x, torch.zeros(n, dtype=torch.long)


def test_step_schedule_and_plan_follow_the_authors():
    sizes = md_step_sizes(50, 20, EPS)
    assert sizes[1] == pytest.approx(2 * EPS) and sizes[21] == pytest.approx(2 * EPS)
    assert sizes[20] == pytest.approx(EPS * (1 + math.cos(math.pi * 19 / 30)))
    assert sizes[49] == pytest.approx(EPS * (1 + math.cos(math.pi * 28 / 30)))
    names = [n for n, _ in md_plan(50, 20, EPS, "max_other_logit", "cw")]
    assert names[0] == "true_logit" and set(names[1:20]) == {"max_other_logit"} and set(names[20:]) == {"cw"}


def test_md_breaks_the_imbalanced_model_where_ce_pgd_does_not():
    model, (x, y) = Imbalanced(), imbalanced_data()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()
    g = torch.Generator().manual_seed(0)
    pgd100 = pgd(model, x, y, eps=EPS, step=EPS / 8, steps=100, generator=g, final_logits=True)
    assert (pgd100.logits.argmax(1) == y).all()  # CE-PGD-100 is fooled by the imbalance
    adv = md_attack(model, x, y, eps=EPS, generator=g)
    assert (adv - x).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (model(adv).argmax(1) != y).all()


def test_mde_at_least_as_strong_as_pgd_and_reports_stages():
    model, (x, y) = Imbalanced(), imbalanced_data()
    pgd20 = {"kind": "pgd", "objective": "ce", "steps": 20, "step": EPS / 10, "restarts": 1, "init": "uniform"}
    p = white_box(model, x, y, pgd20, EPS, batch_size=8, seed=0, progress=False)
    every = torch.ones(len(y), dtype=torch.bool)
    m = black_box(model, x, y, {"kind": "mde"}, EPS, batch_size=8, seed=0, only=every, desc="mde", progress=False)
    assert p.robust.float().mean() == 1.0 and m.robust.float().mean() == 0.0
    assert (m.robust <= p.robust).all()
    # APGD-CE comes first in the ensemble and fails here too; MD breaks everything that is left
    assert m.extra["per_attack"]["apgd-ce"] == 1.0 and m.extra["per_attack"]["md"] == 0.0
    assert m.protocol["attack"] == "mde" and m.protocol["md_steps"] == 50 and m.protocol["change_point"] == 20


def test_mde_bad_values():
    model, (x, y) = Imbalanced(), imbalanced_data(2)
    with pytest.raises(AdvrwError, match="change_point=50"):
        run_mde(model, x, y, eps=EPS, steps=50, change_point=50)
    with pytest.raises(AdvrwError, match="stages"):
        run_mde(model, x, y, eps=EPS, stages=["md", "pgd"])
