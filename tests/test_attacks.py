"""Tests for advrw.attacks (objectives + the PGD engine), SPEC section 2 and the evaluation attacks.

Models are tiny and defined here: a conv net with BatchNorm for the engine's bookkeeping
(eps-ball, modes, BN statistics, restarts) and linear / constant models where the expected
trajectory (kappa, FGSM) can be worked out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrw.attacks import OBJECTIVES, check_budget, fgsm, get_objective, model_mode, pgd, prob_margin, random_start
from advrw.attacks.objectives import ce, cw, kl, scaled_ce, weighted_ce, weighted_kl
from advrw.core.errors import AdvrwError



C = 4  # classes of the conv net


class BNNet(nn.Module):
    """conv(3->4)-BN-ReLU-conv(4->6, s2)-BN-ReLU-flatten-linear(6*3*3 -> C), input 3x6x6."""

    def __init__(self, num_classes=C):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        )
        self.head = nn.Linear(6 * 3 * 3, num_classes)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


def make_net(seed=0):
    torch.manual_seed(seed)
    net = BNNet()
    # Give BN non-trivial running statistics so eval and train modes really differ.
    with torch.no_grad():
        net.train()
        for _ in range(3):
            net(torch.rand(16, 3, 6, 6))
    net.eval()
    return net


def make_data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 6, 6, generator=g)
    x[0, 0, 0, :] = 0.0  # pixels on the box boundary
    x[1, 1, 1, :] = 1.0
    y = torch.randint(0, C, (n,), generator=g)
    return x, y


def gen(seed=123):
    return torch.Generator().manual_seed(seed)


def ref_logits_for(net, x):
    with torch.no_grad(), model_mode(net, False):
        return net(x)


# ----------------------------------------------------------------------------- objectives on hand values


def lse(row):
    return math.log(sum(math.exp(v) for v in row))


def softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


Z = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.5, -1.0], [2.0, 2.0, 0.0]])
YZ = torch.tensor([0, 1, 2])


def test_objectives_registry():
    assert set(OBJECTIVES) == {"ce", "kl", "cw", "weighted_ce", "weighted_kl", "scaled_ce", "true_logit",
                               "neg_true_logit", "max_other_logit", "target_logit", "targeted_margin"}
    with pytest.raises(AdvrwError, match="nope_obj"):
        get_objective("nope_obj")


def test_cw_hand():
    # max_{k != y} z_k - z_y: [3 - 1, 0 - 0.5, 2 - 0]
    torch.testing.assert_close(cw(Z, YZ), torch.tensor([2.0, -0.5, 2.0]))
    torch.testing.assert_close(cw(Z, torch.tensor([1, 0, 0])), torch.tensor([-1.0, 0.5, 0.0]))


def test_ce_hand():
    rows = Z.tolist()
    expected = [lse(r) - r[c] for r, c in zip(rows, YZ.tolist())]
    torch.testing.assert_close(ce(Z, YZ), torch.tensor(expected))


def test_scaled_ce_hand_and_scale_one():
    torch.testing.assert_close(scaled_ce(Z, YZ, scale=1.0), ce(Z, YZ))
    rows = (10 * Z).tolist()
    expected = [lse(r) - r[c] for r, c in zip(rows, YZ.tolist())]
    torch.testing.assert_close(scaled_ce(Z, YZ, scale=10.0), torch.tensor(expected))
    torch.testing.assert_close(scaled_ce(Z, YZ), torch.tensor(expected))  # default a = 10


def test_prob_margin_hand():
    out = []
    for r, c in zip(Z.tolist(), YZ.tolist()):
        p = softmax(r)
        out.append(p[c] - max(p[k] for k in range(3) if k != c))
    torch.testing.assert_close(prob_margin(Z, YZ), torch.tensor(out))


def test_weighted_ce_alpha_zero_and_hand():
    torch.testing.assert_close(weighted_ce(Z, YZ, alpha=0.0), ce(Z, YZ))
    s = torch.exp(-2.0 * prob_margin(Z, YZ))
    torch.testing.assert_close(weighted_ce(Z, YZ, alpha=2.0), s * ce(Z, YZ))


def test_kl_objective_and_weighted_kl():
    ref = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    exp = []
    for a, b in zip(ref.tolist(), Z.tolist()):
        p, q = softmax(a), softmax(b)
        exp.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    torch.testing.assert_close(kl(Z, YZ, ref), torch.tensor(exp))
    torch.testing.assert_close(weighted_kl(Z, YZ, ref, alpha=0.0), torch.tensor(exp))
    torch.testing.assert_close(weighted_kl(Z, YZ, ref, alpha=1.5),
                               torch.exp(-1.5 * prob_margin(Z, YZ)) * torch.tensor(exp))
    with pytest.raises(AdvrwError, match="ref_logits"):
        kl(Z, YZ, None)


# ----------------------------------------------------------------------------- the eps-ball and the box


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("init", ["uniform", "normal", "none"])
def test_pgd_stays_in_ball_and_box(init, objective):
    net = make_net()
    x, y = make_data()
    eps = 0.05
    ref = ref_logits_for(net, x) if "kl" in objective else None
    target = (y + 1) % C if "target" in objective else None
    res = pgd(net, x, y, eps=eps, step=0.02, steps=3, init=init, objective=objective, ref_logits=ref,
              generator=gen(), target=target)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert (res.x_adv - x).abs().max().item() <= eps + 1e-6
    assert res.x_adv.min().item() >= 0.0 and res.x_adv.max().item() <= 1.0
    assert not res.x_adv.requires_grad
    # Something moved (3 steps of 0.02 with a non-zero gradient).
    assert (res.x_adv - x).abs().max().item() > 0.01


def test_pgd_with_restarts_stays_in_ball():
    net = make_net()
    x, y = make_data()
    res = pgd(net, x, y, eps=0.03, step=0.01, steps=3, restarts=3, generator=gen())
    assert (res.x_adv - x).abs().max().item() <= 0.03 + 1e-6
    assert res.x_adv.min().item() >= 0.0 and res.x_adv.max().item() <= 1.0


def test_pgd_increases_ce():
    net = make_net()
    x, y = make_data(n=16)
    with torch.no_grad():
        clean = F.cross_entropy(net(x), y, reduction="none")
    res = pgd(net, x, y, eps=0.1, step=0.025, steps=8, init="none", generator=gen())
    with torch.no_grad():
        adv = F.cross_entropy(net(res.x_adv), y, reduction="none")
    assert adv.mean() > clean.mean() + 0.05, (clean.mean(), adv.mean())
    # On the large majority of examples the loss went up.
    assert (adv > clean).float().mean() >= 0.75


def test_pgd_does_not_modify_input():
    net = make_net()
    x, y = make_data()
    x0 = x.clone()
    pgd(net, x, y, eps=0.05, step=0.02, steps=2, generator=gen())
    assert torch.equal(x, x0)


# ----------------------------------------------------------------------------- model mode and BN


class ModeRecorder:
    def __init__(self, net):
        self.modes = []
        net.register_forward_pre_hook(lambda m, inp: self.modes.append(m.training))


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
@pytest.mark.parametrize("before", [True, False])
def test_mode_restored(bn_mode, before):
    net = make_net()
    net.train(before)
    rec = ModeRecorder(net)
    x, y = make_data()
    pgd(net, x, y, eps=0.03, step=0.01, steps=2, bn_mode=bn_mode, generator=gen())
    assert rec.modes and all(m == (bn_mode == "train") for m in rec.modes)
    assert all(m.training == before for m in net.modules())


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_submodule_mode_kept(bn_mode):
    net = make_net()
    net.train()
    net.body[1].eval()  # a BN left in eval inside a training model
    net.head.eval()
    x, y = make_data()
    pgd(net, x, y, eps=0.03, step=0.01, steps=2, bn_mode=bn_mode, restarts=2, generator=gen())
    assert net.training is True
    assert net.body[1].training is False and net.head.training is False
    assert net.body[4].training is True and net.body.training is True


def test_model_mode_context_manager_restores_on_error():
    net = make_net()
    net.train()
    net.body[4].eval()
    with pytest.raises(RuntimeError):
        with model_mode(net, False):
            assert all(not m.training for m in net.modules())
            raise RuntimeError("boom")
    assert net.training and net.body[1].training and not net.body[4].training


def bn_state(net):
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


def test_bn_eval_keeps_running_stats():
    net = make_net()
    net.train()
    before = bn_state(net)
    x, y = make_data()
    pgd(net, x, y, eps=0.03, step=0.01, steps=3, bn_mode="eval", generator=gen())
    after = bn_state(net)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bn_train_changes_running_stats():
    net = make_net()
    net.eval()
    before = bn_state(net)
    x, y = make_data()
    pgd(net, x, y, eps=0.03, step=0.01, steps=3, bn_mode="train", generator=gen())
    after = bn_state(net)
    assert not torch.equal(before["body.1.running_mean"], after["body.1.running_mean"])
    assert after["body.1.num_batches_tracked"].item() == before["body.1.num_batches_tracked"].item() + 3


# ----------------------------------------------------------------------------- kappa


class Constant(nn.Module):
    """Logits ``bias + 0 * x``: prediction is always class ``argmax(bias)``; gradient zero."""

    def __init__(self, bias):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(bias))

    def forward(self, x):
        return self.bias + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_kappa_always_correct_and_always_wrong():
    x = torch.rand(5, 2)
    net = Constant([3.0, 0.0, -1.0])
    ok = pgd(net, x, torch.zeros(5, dtype=torch.long), eps=0.1, step=0.02, steps=7, track_kappa=True,
             generator=gen())
    assert ok.kappa.dtype == torch.long and torch.equal(ok.kappa, torch.full((5,), 7))
    bad = pgd(net, x, torch.full((5,), 2), eps=0.1, step=0.02, steps=7, track_kappa=True, generator=gen())
    assert torch.equal(bad.kappa, torch.zeros(5, dtype=torch.long))
    # Without track_kappa there is none.
    assert pgd(net, x, torch.zeros(5, dtype=torch.long), eps=0.1, step=0.02, steps=2).kappa is None


def threshold_model(c=0.535, slope=10.0):
    """Two classes on a scalar input: z = (0, slope (x - c)); class 0 iff x < c."""
    lin = nn.Linear(1, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0], [slope]]))
        lin.bias.copy_(torch.tensor([0.0, -slope * c]))
    return lin


def test_kappa_linear_flip_count():
    # y = 0 everywhere, so CE ascent pushes x up by `step` each iterate (dCE/dx = slope * p_1 > 0).
    # Iterates x_t = x + 0.01 t (t = 0..9, capped at x + eps); correct iff x_t < 0.535:
    #   x = 0.50: t = 0..3 correct (0.50, 0.51, 0.52, 0.53)       -> kappa 4
    #   x = 0.52: t = 0, 1 correct (0.52, 0.53)                   -> kappa 2
    #   x = 0.40: x_t <= 0.49 for all t (eps 0.1 never reached)  -> kappa 10 = steps
    #   x = 0.60: wrong from the start                            -> kappa 0
    #   x = 0.4455: correct at t = 0..8 (0.4455 + 0.08 = 0.5255) -> kappa 9
    x = torch.tensor([[0.50], [0.52], [0.40], [0.60], [0.4455]])
    y = torch.zeros(5, dtype=torch.long)
    res = pgd(threshold_model(), x, y, eps=0.1, step=0.01, steps=10, init="none", track_kappa=True)
    assert res.kappa.tolist() == [4, 2, 10, 0, 9]
    # Final iterate: x + min(steps * step, eps) = x + 0.1, clipped to [0, 1].
    torch.testing.assert_close(res.x_adv, (x + 0.1).clamp(0, 1), atol=1e-6, rtol=0)


def test_kappa_counts_start_not_final():
    # Threshold c = 0.53, x = 0.525, one step of 0.01: the start 0.525 is correct, the final
    # iterate 0.535 is wrong. Only the start is counted -> kappa 1.
    x = torch.tensor([[0.525]])
    res = pgd(threshold_model(c=0.53), x, torch.zeros(1, dtype=torch.long), eps=0.05, step=0.01, steps=1,
              init="none", track_kappa=True)
    assert res.kappa.tolist() == [1]
    with torch.no_grad():
        assert threshold_model(c=0.53)(res.x_adv).argmax(1).item() == 1


# ----------------------------------------------------------------------------- restarts


def test_restarts_robust_set_is_subset():
    net = make_net(seed=1)
    with torch.no_grad():
        net.head.weight.mul_(5)  # varied clean predictions (a random net with small head favours one class)
    x, _ = make_data(n=32, seed=5)
    with torch.no_grad():
        y = net(x).argmax(1)  # every example clean-correct
    assert len(y.unique()) >= 2
    kw = dict(eps=0.03, step=0.01, steps=3, init="uniform")
    r1 = pgd(net, x, y, restarts=1, generator=gen(7), **kw)
    r3 = pgd(net, x, y, restarts=3, generator=gen(7), **kw)
    with torch.no_grad():
        rob1 = net(r1.x_adv).argmax(1) == y
        rob3 = net(r3.x_adv).argmax(1) == y
    # The attack is neither trivial nor total on this batch, so the statement has content.
    assert 0 < rob1.sum().item() < len(y)
    # restarts = 3 starts with the same generator state, so it can only remove robust examples.
    assert not (rob3 & ~rob1).any()
    assert rob3.sum() <= rob1.sum()
    # Examples already fooled by the first restart keep their first-restart point.
    assert torch.equal(r3.x_adv[~rob1], r1.x_adv[~rob1])
    # ...while the later restarts did replace some point of an example the first one left robust.
    assert not torch.equal(r3.x_adv[rob1], r1.x_adv[rob1])
    # The logits returned with restarts > 1 are those of x_adv.
    assert r3.logits is not None
    torch.testing.assert_close(r3.logits, net(r3.x_adv).detach(), atol=1e-5, rtol=1e-5)


def test_final_logits():
    net = make_net()
    x, y = make_data()
    res = pgd(net, x, y, eps=0.03, step=0.01, steps=2, final_logits=True, generator=gen())
    assert res.logits is not None
    with torch.no_grad():
        torch.testing.assert_close(res.logits, net(res.x_adv), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- determinism / equivalences


@pytest.mark.parametrize("init", ["uniform", "normal"])
def test_same_seed_same_x_adv(init):
    net = make_net()
    x, y = make_data()
    a = pgd(net, x, y, eps=0.05, step=0.01, steps=3, init=init, generator=gen(11)).x_adv
    b = pgd(net, x, y, eps=0.05, step=0.01, steps=3, init=init, generator=gen(11)).x_adv
    c = pgd(net, x, y, eps=0.05, step=0.01, steps=3, init=init, generator=gen(12)).x_adv
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("objective, params", [("scaled_ce", {"scale": 1.0}), ("weighted_ce", {"alpha": 0.0})])
def test_neutral_objective_parameters_same_as_ce(objective, params):
    """scaled_ce with scale 1 and weighted_ce with alpha 0 are plain CE: same x_adv for the same seed."""
    net = make_net()
    x, y = make_data()
    kw = dict(eps=0.05, step=0.01, steps=4, init="uniform")
    a = pgd(net, x, y, objective="ce", generator=gen(5), **kw).x_adv
    b = pgd(net, x, y, objective=objective, generator=gen(5), **params, **kw).x_adv
    assert torch.equal(a, b)


def test_kl_objective_needs_ref_logits():
    net = make_net()
    x, y = make_data()
    with pytest.raises(AdvrwError):
        pgd(net, x, y, eps=0.05, step=0.01, steps=1, objective="kl")


# ----------------------------------------------------------------------------- FGSM


def test_fgsm_is_one_signed_step():
    net = make_net()
    x, y = make_data()
    eps = 0.04
    xr = x.clone().requires_grad_(True)
    net.eval()
    loss = F.cross_entropy(net(xr), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xr)
    expected = (x + eps * g.sign()).clamp(0.0, 1.0)
    res = fgsm(net, x, y, eps=eps)
    torch.testing.assert_close(res.x_adv, expected, atol=1e-7, rtol=0)
    # Interior pixels with a non-zero gradient moved by exactly eps.
    interior = (x > eps) & (x < 1 - eps) & (g != 0)
    assert interior.any()
    torch.testing.assert_close((res.x_adv - x).abs()[interior], torch.full_like(x[interior], eps))


def test_fgsm_linear_hand():
    # threshold model, y = 0: dCE/dx > 0, so FGSM moves x up by eps (clipped at 1).
    x = torch.tensor([[0.2], [0.98]])
    res = fgsm(threshold_model(), x, torch.zeros(2, dtype=torch.long), eps=0.05)
    torch.testing.assert_close(res.x_adv, torch.tensor([[0.25], [1.0]]))


# ----------------------------------------------------------------------------- budget checks


@pytest.mark.parametrize("kwargs,bad", [
    (dict(eps=0.0, step=0.01, steps=10), "eps=0.0"),
    (dict(eps=-0.1, step=0.01, steps=10), "eps=-0.1"),
    (dict(eps=0.03, step=0.05, steps=10), "step=0.05"),
    (dict(eps=0.03, step=0.01, steps=0), "steps=0"),
    (dict(eps=0.03, step=0.01, steps=10, init="gaussian_noise"), "gaussian_noise"),
    (dict(eps=0.03, step=0.01, steps=10, bn_mode="frozen_bn"), "frozen_bn"),
])
def test_check_budget_errors(kwargs, bad):
    with pytest.raises(AdvrwError, match=bad):
        check_budget(**kwargs)
    net = make_net()
    x, y = make_data(n=2)
    with pytest.raises(AdvrwError, match=bad):
        pgd(net, x, y, **kwargs)


def test_check_budget_accepts_valid():
    check_budget(8 / 255, 2 / 255, 10, "uniform", "eval")
    check_budget(0.3, 0.3, 1, "none", "train")  # FGSM-like: step == eps


def test_restarts_zero_rejected():
    net = make_net()
    x, y = make_data(n=2)
    with pytest.raises(AdvrwError, match="restarts=0"):
        pgd(net, x, y, eps=0.03, step=0.01, steps=1, restarts=0)


def test_margin_decomposition_objectives_hand():
    # Z rows: [1, 3, 2] y=0; [0, 0.5, -1] y=1; [2, 2, 0] y=2
    from advrw.attacks.objectives import max_other_logit, neg_true_logit, target_logit, targeted_margin, true_logit

    torch.testing.assert_close(true_logit(Z, YZ), torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(neg_true_logit(Z, YZ), torch.tensor([-1.0, -0.5, 0.0]))
    torch.testing.assert_close(max_other_logit(Z, YZ), torch.tensor([3.0, 0.0, 2.0]))
    t = torch.tensor([2, 0, 1])
    torch.testing.assert_close(target_logit(Z, YZ, target=t), torch.tensor([2.0, 0.0, 2.0]))
    torch.testing.assert_close(targeted_margin(Z, YZ, target=t), torch.tensor([1.0, -0.5, 2.0]))
    # the two terms add up to the CW margin
    torch.testing.assert_close(max_other_logit(Z, YZ) + neg_true_logit(Z, YZ), cw(Z, YZ))
    with pytest.raises(AdvrwError, match="target"):
        target_logit(Z, YZ)


# ----------------------------------------------------------------------------- start clamp


def test_clamp_start_knob():
    x = torch.zeros(4, 3, 5, 5)
    x[:, 1] = 1.0
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    free = random_start(x, 0.1, "uniform", g(), clamp=False)
    clipped = random_start(x, 0.1, "uniform", g())
    assert free.min() < 0 and free.max() > 1 and (free - x).abs().max() <= 0.1
    assert torch.equal(clipped, free.clamp(0, 1))
    assert torch.equal(random_start(x, 0.1, "normal", g(), clamp=False),
                       x + 0.001 * torch.randn(x.shape, generator=g()))
    # after one step the projection puts both back in the box
    res = pgd(make_net(), *make_data(n=4), eps=0.1, step=0.01, steps=1,
              clamp_start=False, generator=g())
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
