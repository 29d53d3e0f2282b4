"""Tests for advrw.methods.defenses: AT / TRADES / MART with a weight on the robust term (SPEC sections 1, 3).

Expected values are worked out with ``math`` from the formulas, and the unweighted losses are also
checked against their textbook / public-code PyTorch forms.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrw.methods.defenses import at_loss, defense_loss, kl_per_example, mart_bce, mart_loss, trades_loss
from advrw.core.errors import AdvrwError



# ----------------------------------------------------------------------------- hand arithmetic

Z_NAT = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 1.0]]
Z_ADV = [[1.0, 0.5, 0.0], [1.0, 0.0, 2.0], [-1.0, 2.0, 0.5]]
Y = [0, 1, 2]
W = [0.5, 1.5, 2.0]  # non-uniform weights


def softmax(row):
    e = [math.exp(v) for v in row]
    s = sum(e)
    return [v / s for v in e]


def ce(row, y):
    return math.log(sum(math.exp(v) for v in row)) - row[y]


def kl(row_nat, row_adv, eps=0.0):
    p, q = softmax(row_nat), softmax(row_adv)
    return sum(pi * (math.log(pi) - math.log(qi + eps)) for pi, qi in zip(p, q))


def bce(row, y):
    p = softmax(row)
    other = max(p[k] for k in range(len(p)) if k != y)
    return ce(row, y) - math.log(1.0001 - other + 1e-12)


def mean(xs):
    return sum(xs) / len(xs)


def t(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float32, requires_grad=grad)


def ty(labels):
    return torch.tensor(labels, dtype=torch.long)


def scalar_close(actual, expected, rtol=1e-5):
    assert actual.dim() == 0
    assert abs(actual.item() - expected) <= rtol * max(1.0, abs(expected)), (actual.item(), expected)


# ----------------------------------------------------------------------------- per-example pieces


def test_kl_per_example_hand():
    got = kl_per_example(t(Z_NAT), t(Z_ADV))
    torch.testing.assert_close(got, torch.tensor([kl(a, b) for a, b in zip(Z_NAT, Z_ADV)]))
    got = kl_per_example(t(Z_NAT), t(Z_ADV), eps=1e-12)
    torch.testing.assert_close(got, torch.tensor([kl(a, b, 1e-12) for a, b in zip(Z_NAT, Z_ADV)]))
    assert torch.allclose(kl_per_example(t(Z_NAT), t(Z_NAT)), torch.zeros(3), atol=1e-6)


@pytest.mark.parametrize("defense", ["trades", "mart"])
def test_a_saturated_natural_softmax_keeps_the_gradient_finite(defense):
    """A natural probability that underflows to exactly 0 (logit gap 200: seen after one lr-0.1 step of
    wang2023's one-cycle under debug=fast): the authors' kl_div(log p', softmax(z)) form has a nan
    gradient there; ours has the same loss value and a finite gradient."""
    z_nat = torch.tensor([[0.0, 200.0, -5.0], [1.0, 2.0, 3.0]], requires_grad=True)
    z_adv = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]], requires_grad=True)
    y = torch.tensor([1, 2])
    assert F.softmax(z_nat, 1)[0, 0] == 0  # the underflow this is about
    authors = F.kl_div(F.log_softmax(z_adv, 1), F.softmax(z_nat, 1), reduction="none").sum(1)
    torch.testing.assert_close(kl_per_example(z_nat, z_adv), authors)
    loss, _ = defense_loss(defense, z_nat, z_adv, y, torch.ones(2))
    loss.backward()
    assert torch.isfinite(z_nat.grad).all() and torch.isfinite(z_adv.grad).all()
    assert z_nat.grad[1].abs().sum() > 0  # the unsaturated example still trains


def test_mart_bce_hand():
    got = mart_bce(t(Z_ADV), ty(Y))
    torch.testing.assert_close(got, torch.tensor([bce(r, c) for r, c in zip(Z_ADV, Y)]))


# ----------------------------------------------------------------------------- AT


def test_at_multiply_hand():
    loss, parts = at_loss(None, t(Z_ADV), ty(Y), torch.tensor(W))
    ces = [ce(r, c) for r, c in zip(Z_ADV, Y)]
    scalar_close(loss, mean([w * c for w, c in zip(W, ces)]))
    scalar_close(parts["robust"], mean(ces))


def test_at_add_hand():
    loss, _ = at_loss(None, t(Z_ADV), ty(Y), torch.tensor(W), combine="add")
    ces = [ce(r, c) for r, c in zip(Z_ADV, Y)]
    scalar_close(loss, mean([(1 + w) * c for w, c in zip(W, ces)]))


def test_at_unweighted_is_cross_entropy_mean():
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 1, 2, 3])
    loss, _ = defense_loss("at", None, z, y, torch.ones(5))
    torch.testing.assert_close(loss, F.cross_entropy(z, y))


# ----------------------------------------------------------------------------- TRADES


@pytest.mark.parametrize("beta", [6.0, 1.0])
def test_trades_multiply_hand(beta):
    loss, parts = trades_loss(t(Z_NAT), t(Z_ADV), ty(Y), torch.tensor(W), beta_trades=beta)
    nat = mean([ce(r, c) for r, c in zip(Z_NAT, Y)])
    kls = [kl(a, b) for a, b in zip(Z_NAT, Z_ADV)]
    scalar_close(loss, nat + beta * mean([w * k for w, k in zip(W, kls)]))
    scalar_close(parts["natural"], nat)
    scalar_close(parts["robust"], mean(kls))


def test_trades_add_hand():
    beta = 5.5
    loss, _ = trades_loss(t(Z_NAT), t(Z_ADV), ty(Y), torch.tensor(W), beta_trades=beta, combine="add")
    nat = mean([ce(r, c) for r, c in zip(Z_NAT, Y)])
    kls = [kl(a, b) for a, b in zip(Z_NAT, Z_ADV)]
    scalar_close(loss, nat + mean([(beta + w) * k for w, k in zip(W, kls)]))


def test_trades_default_beta_is_6():
    loss, _ = trades_loss(t(Z_NAT), t(Z_ADV), ty(Y), torch.ones(3))
    nat = mean([ce(r, c) for r, c in zip(Z_NAT, Y)])
    kls = [kl(a, b) for a, b in zip(Z_NAT, Z_ADV)]
    scalar_close(loss, nat + 6.0 * mean(kls))


def test_trades_unweighted_is_public_formula():
    g = torch.Generator().manual_seed(1)
    z_nat, z_adv = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    beta = 6.0
    loss, _ = defense_loss("trades", z_nat, z_adv, y, torch.ones(6), beta_trades=beta)
    # TRADES public code: CE + beta * KLDivLoss(size_average=False)(log p_adv, p_nat) / batch.
    kl_sum = nn.KLDivLoss(reduction="sum")(F.log_softmax(z_adv, dim=1), F.softmax(z_nat, dim=1))
    expected = F.cross_entropy(z_nat, y) + beta * kl_sum / len(y)
    torch.testing.assert_close(loss, expected)


def test_trades_detach_nat():
    # detach_nat stops the KL's gradient into the natural logits: only the CE term remains.
    z_nat, z_adv, y = t(Z_NAT, True), t(Z_ADV), ty(Y)
    loss, _ = trades_loss(z_nat, z_adv, y, torch.ones(3), beta_trades=6.0, detach_nat=True)
    (g,) = torch.autograd.grad(loss, z_nat)
    z2 = t(Z_NAT, True)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(z2, y), z2)
    torch.testing.assert_close(g, g_ce)
    # Default (not detached, as the public code): the KL also sends gradient to p(x).
    z3 = t(Z_NAT, True)
    loss, _ = trades_loss(z3, z_adv, y, torch.ones(3), beta_trades=6.0)
    (g3,) = torch.autograd.grad(loss, z3)
    assert not torch.allclose(g3, g_ce)


# ----------------------------------------------------------------------------- MART


def mart_hand(w, lam, combine="multiply"):
    coef = [(1 + wi) if combine == "add" else wi for wi in w]
    bces = [bce(r, c) for r, c in zip(Z_ADV, Y)]
    kls = [kl(a, b, 1e-12) * (1.0000001 - softmax(a)[c]) for a, b, c in zip(Z_NAT, Z_ADV, Y)]
    return mean([c * b for c, b in zip(coef, bces)]) + lam * mean(kls), mean(bces), mean(kls)


@pytest.mark.parametrize("lam", [5.0, 6.0])
def test_mart_multiply_hand(lam):
    loss, parts = mart_loss(t(Z_NAT), t(Z_ADV), ty(Y), torch.tensor(W), lambda_mart=lam)
    expected, robust, kl_part = mart_hand(W, lam)
    scalar_close(loss, expected)
    scalar_close(parts["robust"], robust)
    scalar_close(parts["kl"], kl_part)


def test_mart_add_hand():
    loss, _ = mart_loss(t(Z_NAT), t(Z_ADV), ty(Y), torch.tensor(W), lambda_mart=5.0, combine="add")
    scalar_close(loss, mart_hand(W, 5.0, "add")[0])


def public_mart(z_nat, z_adv, y, beta):
    """The MART authors' loss (YisenWang/MART, mart_loss after the attack), verbatim in spirit."""
    batch_size = len(y)
    kl_fn = nn.KLDivLoss(reduction="none")
    adv_probs = F.softmax(z_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(z_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(z_nat, dim=1)
    true_probs = torch.gather(nat_probs, 1, y.unsqueeze(1).long()).squeeze()
    loss_robust = (1.0 / batch_size) * torch.sum(
        torch.sum(kl_fn(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    return loss_adv + float(beta) * loss_robust


def test_mart_unweighted_is_public_formula():
    g = torch.Generator().manual_seed(2)
    z_nat, z_adv = torch.randn(7, 5, generator=g), 2 * torch.randn(7, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    loss, _ = defense_loss("mart", z_nat, z_adv, y, torch.ones(7), lambda_mart=6.0)
    torch.testing.assert_close(loss, public_mart(z_nat, z_adv, y, 6.0))


# ----------------------------------------------------------------------------- w = 1 and w = 0


@pytest.mark.parametrize("name", ["at", "trades", "mart"])
def test_multiply_ones_equals_default_unweighted(name):
    z_nat, z_adv, y = t(Z_NAT), t(Z_ADV), ty(Y)
    a, _ = defense_loss(name, z_nat, z_adv, y, torch.ones(3), combine="multiply")
    b, _ = defense_loss(name, z_nat, z_adv, y, torch.ones(3))
    torch.testing.assert_close(a, b)
    # add with w = 0 is the same unweighted loss
    c, _ = defense_loss(name, z_nat, z_adv, y, torch.zeros(3), combine="add")
    torch.testing.assert_close(a, c)


def test_zero_weight_removes_robust_gradient_at():
    z_adv, y = t(Z_ADV, True), ty(Y)
    loss, _ = at_loss(None, z_adv, y, torch.tensor([0.0, 1.0, 2.0]))
    loss.backward()
    assert torch.equal(z_adv.grad[0], torch.zeros(3))
    assert z_adv.grad[1].abs().sum() > 0 and z_adv.grad[2].abs().sum() > 0


def test_zero_weight_removes_robust_gradient_trades():
    z_nat, z_adv, y = t(Z_NAT, True), t(Z_ADV, True), ty(Y)
    loss, _ = trades_loss(z_nat, z_adv, y, torch.tensor([0.0, 1.0, 2.0]), beta_trades=6.0)
    loss.backward()
    # z_adv only enters through the (weighted) KL term.
    assert torch.equal(z_adv.grad[0], torch.zeros(3))
    assert z_adv.grad[1].abs().sum() > 0
    # The natural CE still reaches example 0's natural logits, and only it: its gradient is CE's / m.
    z2 = t(Z_NAT, True)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(z2, y), z2)
    torch.testing.assert_close(z_nat.grad[0], g_ce[0])


def test_zero_weight_removes_robust_gradient_mart():
    # With w_0 = 0 the BCE term sends nothing to example 0: its adversarial-logit gradient is the
    # KL regulariser's alone.
    lam = 5.0
    w = torch.tensor([0.0, 1.0, 2.0])
    z_nat, z_adv, y = t(Z_NAT), t(Z_ADV, True), ty(Y)
    loss, _ = mart_loss(z_nat, z_adv, y, w, lambda_mart=lam)
    (g,) = torch.autograd.grad(loss, z_adv)
    z2 = t(Z_ADV, True)
    p_true = F.softmax(z_nat, dim=1).gather(1, y[:, None]).squeeze(1)
    kl_only = lam * (kl_per_example(z_nat, z2, eps=1e-12) * (1.0000001 - p_true)).mean()
    (g_kl,) = torch.autograd.grad(kl_only, z2)
    torch.testing.assert_close(g[0], g_kl[0])
    assert not torch.allclose(g[1], g_kl[1])
    # And with lambda = 0 example 0 gets no gradient at all.
    z3 = t(Z_ADV, True)
    loss, _ = mart_loss(z_nat, z3, y, w, lambda_mart=0.0)
    (g3,) = torch.autograd.grad(loss, z3)
    assert torch.equal(g3[0], torch.zeros(3))


# ----------------------------------------------------------------------------- errors


def test_unknown_defense_names_value():
    with pytest.raises(AdvrwError, match="madry_typo"):
        defense_loss("madry_typo", t(Z_NAT), t(Z_ADV), ty(Y), torch.ones(3))


@pytest.mark.parametrize("name", ["at", "trades", "mart"])
def test_bad_combine_names_value(name):
    with pytest.raises(AdvrwError, match="sumproduct"):
        defense_loss(name, t(Z_NAT), t(Z_ADV), ty(Y), torch.ones(3), combine="sumproduct")


@pytest.mark.parametrize("name", ["trades", "mart"])
def test_natural_logits_required(name):
    with pytest.raises(AdvrwError, match=name):
        defense_loss(name, None, t(Z_ADV), ty(Y), torch.ones(3))


def test_at_does_not_need_natural_logits():
    loss, _ = defense_loss("at", None, t(Z_ADV), ty(Y), torch.ones(3))
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------- label smoothing


def smoothed_ce(row, y, s):
    """``(1 - s) (-log p_y) + s * mean_k (-log p_k)``, by hand."""
    logp = [v - math.log(sum(math.exp(u) for u in row)) for v in row]
    return (1 - s) * -logp[y] + s * mean([-v for v in logp])


@pytest.mark.parametrize("s", [0.1, 0.3])
def test_label_smoothing_on_every_ce_term_hand(s):
    """AT: weights times smoothed CE; TRADES: smoothed natural CE, KL untouched; MART: smoothed CE part."""
    z_nat, z_adv, y, w = t(Z_NAT), t(Z_ADV), ty(Y), torch.tensor(W)
    loss, parts = at_loss(None, z_adv, y, w, label_smoothing=s)
    ls = [smoothed_ce(r, c, s) for r, c in zip(Z_ADV, Y)]
    scalar_close(loss, mean([wi * c for wi, c in zip(W, ls)]))
    scalar_close(parts["robust"], mean(ls))
    loss, _ = at_loss(None, z_adv, y, w, combine="add", label_smoothing=s)
    scalar_close(loss, mean([(1 + wi) * c for wi, c in zip(W, ls)]))

    loss, parts = trades_loss(z_nat, z_adv, y, w, beta_trades=5.0, label_smoothing=s)
    nat = mean([smoothed_ce(r, c, s) for r, c in zip(Z_NAT, Y)])
    kls = [kl(a, b) for a, b in zip(Z_NAT, Z_ADV)]
    scalar_close(loss, nat + mean([5.0 * wi * k for wi, k in zip(W, kls)]))
    scalar_close(parts["natural"], nat)

    loss, _ = mart_loss(z_nat, z_adv, y, w, lambda_mart=5.0, label_smoothing=s)
    margin = [bce(r, c) - ce(r, c) for r, c in zip(Z_ADV, Y)]  # the non-CE part of MART's BCE
    kl_term = [kl(a, b, 1e-12) * (1.0000001 - softmax(a)[c]) for a, b, c in zip(Z_NAT, Z_ADV, Y)]
    hand = mean([wi * (smoothed_ce(r, c, s) + m) for wi, r, c, m in zip(W, Z_ADV, Y, margin)]) + 5.0 * mean(kl_term)
    scalar_close(loss, hand)
    assert abs(smoothed_ce(Z_ADV[0], 0, s) - ce(Z_ADV[0], 0)) > 1e-3  # smoothing really changes the value


def test_label_smoothing_zero_is_plain_and_validated(cfg_train):
    from advrw.config.validation import validate_train

    z_nat, z_adv, y, w = t(Z_NAT), t(Z_ADV), ty(Y), torch.tensor(W)
    for name in ("at", "trades", "mart"):
        torch.testing.assert_close(defense_loss(name, z_nat, z_adv, y, w, label_smoothing=0.0)[0],
                                   defense_loss(name, z_nat, z_adv, y, w)[0])
    with pytest.raises(AdvrwError, match=r"defense.label_smoothing=1.0 is invalid"):
        validate_train(cfg_train("experiment=smoke", "defense=trades", "defense.label_smoothing=1.0"))
