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


class Saturated(nn.Module):
    """Four classes on 1x2x2 images whose pixels sit at 0 and 1 (as real images' do).

    Any coordinate outside [0, 1] adds 1000 per unit to z_1, so MD's unclipped uniform start fools
    the model at an invalid point; inside the box z_1 = 10 (u_0 + u_1) beats z_0 = 1.5 once
    u_0 + u_1 > 0.15, which a valid point reaches (eps 0.1 gives up to 0.2) and the clean input
    (0, 0, 1, 1) does not.
    """

    def forward(self, x):
        u = x.flatten(1)
        zero = torch.zeros_like(u)  # strict: no gradient pulling a point on the box's face outwards
        outside = (torch.where(u < 0, -u, zero) + torch.where(u > 1, u - 1, zero)).sum(1)
        z1 = 1000 * outside + 10 * (u[:, 0] + u[:, 1])
        z0 = torch.full_like(z1, 1.5)
        return torch.stack([z0, z1, z0 - 20, z0 - 20], dim=1)


def saturated_data(n=6):
    return torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(n, 1).view(n, 1, 2, 2), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("stages", [["md"], ["mdmt"], ["apgd-ce", "md", "mdmt", "fab-t"]])
def test_saturated_inputs_broken_at_a_valid_point(stages):
    """The unclipped start fools the model outside [0, 1]: it must not be kept (it used to be, then
    rejected, and the example counted robust); the later valid break counts, and ``per_attack``
    agrees with ``robust_accuracy``."""
    model, (x, y) = Saturated(), saturated_data()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()
        noise = x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * EPS
        assert (model(noise).argmax(1) != y).all()  # an unclipped start fools it (outside [0, 1])
    adv = md_attack(model, x, y, eps=EPS, generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (model(adv).argmax(1) != y).all()
    res = run_mde(model, x, y, eps=EPS, stages=stages)
    assert res.robust_accuracy == 0.0 and not res.robust.any() and res.protocol["n_invalid"] == 0
    assert res.per_attack[stages[-1]] == res.robust_accuracy
    assert (res.x_adv - x).abs().max() <= EPS + 1e-6 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    every = torch.ones(len(y), dtype=torch.bool)
    m = black_box(model, x, y, {"kind": "mde", "stages": stages}, EPS, batch_size=4, seed=0, only=every,
                  desc="mde", progress=False)
    assert m.extra["per_attack"][stages[-1]] == m.robust.float().mean().item() == 0.0


def test_keep_fooled_never_returns_an_invalid_point():
    """PGD's keep_fooled (MD's mode) from an unclipped start: the point it returns is in the ball and
    [0, 1], and it fools the model wherever a valid break was reached."""
    model, (x, y) = Saturated(), saturated_data()
    res = pgd(model, x, y, eps=EPS, step=EPS / 4, steps=10, objective="cw", clamp_start=False, keep_fooled=True,
              generator=torch.Generator().manual_seed(0))
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1 and (res.x_adv - x).abs().max() <= EPS + 1e-6
    with torch.no_grad():
        assert (model(res.x_adv).argmax(1) != y).all()
