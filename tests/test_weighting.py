"""Tests for advrw.methods.weighting: every scheme against values worked out by hand from SPEC section 3.

The expected numbers are computed here with ``math`` straight from the formulas (never by calling
the library), on 3 x 3 logits with simple values.
"""

from __future__ import annotations

import math

import pytest
import torch

from advrw.core.errors import AdvrwError
from advrw.methods.weighting import (
    batch_normalize,
    compute_weights,
    ewat,
    gairat,
    mail,
    margin_exp,
    needs_natural,
    none,
    probabilistic_margin,
    vir,
)




# ----------------------------------------------------------------------------- hand arithmetic


def softmax(row):
    e = [math.exp(v) for v in row]
    s = sum(e)
    return [v / s for v in e]


def p_true(row, y):
    return softmax(row)[y]


def margin(row, y):
    """``p_y - max_{k != y} p_k``."""
    p = softmax(row)
    return p[y] - max(p[k] for k in range(len(p)) if k != y)


def kl(row_nat, row_adv):
    p, q = softmax(row_nat), softmax(row_adv)
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def entropy(row, tau=1.0):
    p = softmax([v / tau for v in row])
    return -sum(pi * math.log(pi) for pi in p)


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def normalize(ws):
    s = sum(ws)
    return [w * len(ws) / s for w in ws]


# softmax([2, 0, 0]) = (e^2, 1, 1) / (e^2 + 2) = (0.78699, 0.10650, 0.10650)
E2 = math.exp(2.0)
P_BIG = E2 / (E2 + 2.0)
P_SMALL = 1.0 / (E2 + 2.0)

# Adversarial logits: example 0 correct and confident, example 1 wrong, example 2 uniform.
Z_ADV = [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]
# Natural logits: all three correct, with decreasing confidence.
Z_NAT = [[3.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.5]]
Y = [0, 0, 2]


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def ty(labels):
    return torch.tensor(labels, dtype=torch.long)


def close(actual, expected, rtol=1e-5, atol=1e-6):
    exp = torch.tensor(expected, dtype=torch.float32)
    assert actual.shape == exp.shape, (actual.shape, exp.shape)
    torch.testing.assert_close(actual.float(), exp, rtol=rtol, atol=atol)


def test_public_imports():
    from advrw.methods.weighting import ewat as _e, gairat as _g, mail as _m, margin_exp as _z, vir as _v  # noqa: F401

    for fn in (_e, _g, _m, _z, _v):
        assert callable(fn)


def test_hand_softmax_constants():
    # Sanity of the hand arithmetic itself: the values the comments quote.
    assert abs(P_BIG - 0.786986) < 1e-6
    assert abs(P_SMALL - 0.106507) < 1e-6
    assert abs(margin(Z_ADV[0], 0) - (P_BIG - P_SMALL)) < 1e-12
    assert abs(margin(Z_ADV[1], 0) - (P_SMALL - P_BIG)) < 1e-12
    assert margin(Z_ADV[2], 2) == 0.0


# ----------------------------------------------------------------------------- none


def test_none_is_ones():
    w = none(t(Z_NAT), t(Z_ADV), ty(Y))
    assert torch.equal(w, torch.ones(3))


# ----------------------------------------------------------------------------- GAIRAT


def gairat_hand(kappas, K, lam):
    return [(1.0 + math.tanh(lam + 5.0 * (1.0 - 2.0 * k / K))) / 2.0 for k in kappas]


def test_gairat_raw_values():
    kappa = torch.tensor([0, 5, 10])
    w = gairat(None, t(Z_ADV), ty(Y), kappa, lam=-1.0, steps=10, normalize=False)
    # kappa 0: (1 + tanh(4)) / 2; kappa 5: (1 + tanh(-1)) / 2; kappa 10: (1 + tanh(-6)) / 2
    expected = [(1 + math.tanh(4.0)) / 2, (1 + math.tanh(-1.0)) / 2, (1 + math.tanh(-6.0)) / 2]
    assert expected == pytest.approx(gairat_hand([0, 5, 10], 10, -1.0))
    assert abs(expected[0] - 0.999665) < 1e-6 and abs(expected[1] - 0.119203) < 1e-6
    close(w, expected)
    # Examples that stay correct longer (larger kappa) get smaller weights.
    assert w[0] > w[1] > w[2]


def test_gairat_normalized_mean_one():
    kappa = torch.tensor([0, 5, 10])
    w = gairat(None, t(Z_ADV), ty(Y), kappa, lam=-1.0, steps=10)
    expected = normalize(gairat_hand([0, 5, 10], 10, -1.0))
    close(w, expected)
    assert abs(w.mean().item() - 1.0) < 1e-6
    # Default arguments are lam = -1, K = 10, normalised.
    close(gairat(None, t(Z_ADV), ty(Y), kappa), expected)


def test_gairat_other_lambda_and_K():
    kappa = torch.tensor([0, 1, 3])
    w = gairat(None, None, ty(Y), kappa, lam=0.5, steps=3, normalize=False)
    close(w, gairat_hand([0, 1, 3], 3, 0.5))


def test_gairat_needs_kappa():
    with pytest.raises(AdvrwError, match="kappa"):
        gairat(None, t(Z_ADV), ty(Y), None)


# ----------------------------------------------------------------------------- MAIL


def test_probabilistic_margin_modes():
    z_nat, z_adv, y = t(Z_NAT), t(Z_ADV), ty(Y)
    close(probabilistic_margin(z_nat, z_adv, y, "adv"), [margin(r, c) for r, c in zip(Z_ADV, Y)])
    close(probabilistic_margin(z_nat, z_adv, y, "nat"), [margin(r, c) for r, c in zip(Z_NAT, Y)])
    close(probabilistic_margin(z_nat, z_adv, y, "dif"),
          [p_true(a, c) - p_true(b, c) for a, b, c in zip(Z_NAT, Z_ADV, Y)])


@pytest.mark.parametrize("pm", ["adv", "nat", "dif"])
@pytest.mark.parametrize("gamma,beta", [(10.0, -0.5), (2.0, 0.0)])
def test_mail_raw(pm, gamma, beta):
    if pm == "adv":
        pms = [margin(r, c) for r, c in zip(Z_ADV, Y)]
    elif pm == "nat":
        pms = [margin(r, c) for r, c in zip(Z_NAT, Y)]
    else:
        pms = [p_true(a, c) - p_true(b, c) for a, b, c in zip(Z_NAT, Z_ADV, Y)]
    raw = [sigmoid(-gamma * (v - beta)) for v in pms]
    args = (t(Z_NAT), t(Z_ADV), ty(Y))
    close(mail(*args, gamma=gamma, beta=beta, pm=pm, normalize="none"), raw)
    close(mail(*args, gamma=gamma, beta=beta, pm=pm, normalize="scale"), [3 * v for v in raw])
    close(mail(*args, gamma=gamma, beta=beta, pm=pm, normalize="scale", scale=2.5), [2.5 * v for v in raw])
    wb = mail(*args, gamma=gamma, beta=beta, pm=pm, normalize="batch")
    close(wb, normalize(raw))
    assert abs(wb.mean().item() - 1.0) < 1e-6


def test_mail_defaults_are_mail_at_batch():
    # gamma 10, beta -0.5, pm adv, batch normalised.
    raw = [sigmoid(-10.0 * (margin(r, c) + 0.5)) for r, c in zip(Z_ADV, Y)]
    close(mail(None, t(Z_ADV), ty(Y)), normalize(raw))
    # The wrong example (1) gets a larger weight than the confident correct one (0).
    w = mail(None, t(Z_ADV), ty(Y))
    assert w[1] > w[2] > w[0]


def test_mail_pm_adv_does_not_need_natural():
    raw = [sigmoid(-2.0 * margin(r, c)) for r, c in zip(Z_ADV, Y)]
    close(mail(None, t(Z_ADV), ty(Y), gamma=2.0, beta=0.0, normalize="none"), raw)


@pytest.mark.parametrize("pm", ["nat", "dif"])
def test_mail_natural_pm_needs_natural_logits(pm):
    with pytest.raises(AdvrwError):
        mail(None, t(Z_ADV), ty(Y), pm=pm)


# ----------------------------------------------------------------------------- VIR


def vir_parts(alpha, gamma):
    sv = [alpha * math.exp(-gamma * p_true(r, c)) for r, c in zip(Z_NAT, Y)]
    sd = [kl(a, b) for a, b in zip(Z_NAT, Z_ADV)]
    return sv, sd


@pytest.mark.parametrize("alpha,gamma,beta", [(7.0, 10.0, 0.007), (8.0, 3.0, 1.6)])
def test_vir_factors(alpha, gamma, beta):
    sv, sd = vir_parts(alpha, gamma)
    args = (t(Z_NAT), t(Z_ADV), ty(Y))
    close(vir(*args, alpha=alpha, gamma=gamma, beta=beta), [a * b + beta for a, b in zip(sv, sd)])
    close(vir(*args, alpha=alpha, gamma=gamma, beta=beta, factors="both"), [a * b + beta for a, b in zip(sv, sd)])
    close(vir(*args, alpha=alpha, gamma=gamma, beta=beta, factors="sv"), sv)
    close(vir(*args, alpha=alpha, gamma=gamma, beta=beta, factors="sd"), sd)


def test_vir_defaults_are_vir_at():
    sv, sd = vir_parts(7.0, 10.0)
    close(vir(t(Z_NAT), t(Z_ADV), ty(Y)), [a * b + 0.007 for a, b in zip(sv, sd)])


def test_vir_identical_inputs_give_beta():
    # S_d = KL(p || p) = 0 -> w = beta exactly (up to float rounding).
    w = vir(t(Z_NAT), t(Z_NAT), ty(Y), alpha=7.0, gamma=10.0, beta=0.25)
    close(w, [0.25, 0.25, 0.25])


def test_vir_needs_natural_logits():
    with pytest.raises(AdvrwError):
        vir(None, t(Z_ADV), ty(Y))


# ----------------------------------------------------------------------------- EWAT


def test_ewat_uniform_entropy_is_log_c():
    # Uniform logits: every entropy is log C, so the batch-mean-normalised weights are all 1.
    z = torch.zeros(4, 5)
    w = ewat(None, z, ty([0, 1, 2, 3]))
    close(w, [1.0] * 4)


def test_ewat_hand_values():
    ents = [entropy(r) for r in Z_ADV]
    assert abs(ents[2] - math.log(3)) < 1e-12
    mean = sum(ents) / 3
    w = ewat(t(Z_NAT), t(Z_ADV), ty(Y))
    close(w, [e / mean for e in ents])
    assert abs(w.mean().item() - 1.0) < 1e-6
    # The uniform (most uncertain) example has the largest weight, log 3 / mean.
    assert w.argmax().item() == 2


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_ewat_temperature(tau):
    ents = [entropy(r, tau) for r in Z_ADV]
    mean = sum(ents) / 3
    close(ewat(None, t(Z_ADV), ty(Y), tau=tau), [e / mean for e in ents])


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_ewat_bad_tau(tau):
    with pytest.raises(AdvrwError, match=str(tau)):
        ewat(None, t(Z_ADV), ty(Y), tau=tau)


# ----------------------------------------------------------------------------- margin_exp


def test_margin_exp_alpha_zero_is_ones():
    w = margin_exp(None, t(Z_ADV), ty(Y), alpha=0.0)
    assert torch.equal(w, torch.ones(3))


@pytest.mark.parametrize("alpha", [0.1, 1.0, 2.0])
def test_margin_exp_hand_values(alpha):
    expected = [math.exp(-alpha * margin(r, c)) for r, c in zip(Z_ADV, Y)]
    w = margin_exp(None, t(Z_ADV), ty(Y), alpha=alpha)
    close(w, expected)
    assert w[0] < 1.0  # correct example
    assert w[1] > 1.0  # misclassified example
    assert abs(w[2].item() - 1.0) < 1e-6  # margin exactly 0
    # Not normalised: exp(-a * (P_BIG - P_SMALL)) * exp(a * (P_BIG - P_SMALL)) = 1.
    assert abs((w[0] * w[1]).item() - 1.0) < 1e-5


# ----------------------------------------------------------------------------- batch_normalize


def test_batch_normalize():
    w = batch_normalize(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    close(w, [1 / 3, 2 / 3, 1.0, 2.0])


# ----------------------------------------------------------------------------- compute_weights

ALL = ["none", "gairat", "mail", "vir", "ewat", "margin_exp"]


@pytest.mark.parametrize("name", ALL)
def test_compute_weights_burn_in_is_exactly_ones(name):
    w = compute_weights(name, t(Z_NAT), t(Z_ADV), ty(Y), torch.tensor([0, 5, 10]), burn_in=True)
    assert torch.equal(w, torch.ones(3))
    # Burn-in does not even need the inputs a scheme would read.
    w = compute_weights(name, None, t(Z_ADV), ty(Y), None, burn_in=True)
    assert torch.equal(w, torch.ones(3))


@pytest.mark.parametrize("name", ALL)
def test_compute_weights_detach(name):
    z_nat = t(Z_NAT).requires_grad_(True)
    z_adv = t(Z_ADV).requires_grad_(True)
    w = compute_weights(name, z_nat, z_adv, ty(Y), torch.tensor([0, 5, 10]), detach=True)
    assert not w.requires_grad
    assert w.grad_fn is None


def test_compute_weights_matches_scheme():
    kappa = torch.tensor([0, 5, 10])
    w = compute_weights("gairat", None, t(Z_ADV), ty(Y), kappa, lam=-1.0, steps=10)
    close(w, normalize(gairat_hand([0, 5, 10], 10, -1.0)))
    w = compute_weights("mail", t(Z_NAT), t(Z_ADV), ty(Y), gamma=2.0, beta=0.0, pm="nat", normalize="none")
    close(w, [sigmoid(-2.0 * margin(r, c)) for r, c in zip(Z_NAT, Y)])


def test_compute_weights_margin_exp_keeps_gradient():
    alpha = 1.0
    z_adv = t(Z_ADV).requires_grad_(True)
    w = compute_weights("margin_exp", None, z_adv, ty(Y), detach=False, alpha=alpha)
    assert w.requires_grad
    w.sum().backward()
    g = z_adv.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # Hand gradient for example 1 (y = 0, logits [0, 2, 0]; the most confusing class is 1, unique):
    # w = exp(-a (p0 - p1)), dw/dz_j = -a w (dp0/dz_j - dp1/dz_j), dp_i/dz_j = p_i (1[i=j] - p_j).
    p = softmax(Z_ADV[1])
    dp = [[p[i] * ((1.0 if i == j else 0.0) - p[j]) for j in range(3)] for i in range(3)]
    dm = [dp[0][j] - dp[1][j] for j in range(3)]
    s = math.exp(-alpha * margin(Z_ADV[1], 0))
    close(g[1], [-alpha * s * v for v in dm], rtol=1e-4, atol=1e-6)
    # The uniform example 2 (all p = 1/3) has a non-zero gradient too: the weight is not a constant.
    assert g[2].abs().sum() > 0


def test_compute_weights_detach_false_then_detach_true_same_values():
    z_adv = t(Z_ADV).requires_grad_(True)
    a = compute_weights("margin_exp", None, z_adv, ty(Y), detach=False, alpha=0.5)
    b = compute_weights("margin_exp", None, z_adv, ty(Y), detach=True, alpha=0.5)
    torch.testing.assert_close(a.detach(), b)


# ----------------------------------------------------------------------------- errors


def test_unknown_scheme_names_the_value():
    with pytest.raises(AdvrwError, match="bogus_scheme"):
        compute_weights("bogus_scheme", t(Z_NAT), t(Z_ADV), ty(Y))


@pytest.mark.parametrize("kwargs,bad", [
    ({"pm": "weird_pm"}, "weird_pm"),
    ({"normalize": "weird_norm"}, "weird_norm"),
])
def test_mail_bad_options(kwargs, bad):
    with pytest.raises(AdvrwError, match=bad):
        compute_weights("mail", t(Z_NAT), t(Z_ADV), ty(Y), **kwargs)


def test_vir_bad_factors():
    with pytest.raises(AdvrwError, match="weird_factor"):
        compute_weights("vir", t(Z_NAT), t(Z_ADV), ty(Y), factors="weird_factor")


def test_advrw_error_is_value_error():
    assert issubclass(AdvrwError, ValueError)


# ----------------------------------------------------------------------------- needs_natural


def test_needs_natural():
    assert needs_natural("vir", {}) is True
    assert needs_natural("mail", {}) is False
    assert needs_natural("mail", {"pm": "adv"}) is False
    assert needs_natural("mail", {"pm": "nat"}) is True
    assert needs_natural("mail", {"pm": "dif"}) is True
    for name in ("none", "gairat", "ewat", "margin_exp"):
        assert needs_natural(name, {}) is False


def test_every_scheme_declares_its_needs():
    from advrw.methods.weighting import NEEDS, SCHEMES, needs_of

    assert set(NEEDS) == set(SCHEMES)
    assert needs_of("gairat").kappa and needs_of("gairat").steps
    assert [n for n in SCHEMES if needs_of(n).kappa or needs_of(n).steps] == ["gairat"]
    with pytest.raises(AdvrwError, match="weighting='nope' is unknown"):
        needs_of("nope")


# ----------------------------------------------------------------------------- GAIRAT int(K/2)


def test_gairat_half_steps_paper_vs_code():
    kappa = torch.tensor([0, 2, 3, 5])
    paper = gairat(None, None, torch.zeros(4, dtype=torch.long), kappa, steps=5, normalize=False)
    code = gairat(None, None, torch.zeros(4, dtype=torch.long), kappa, steps=5, normalize=False, half_steps="code")
    # paper: tanh(-1 + 5 (1 - 2 kappa / 5)); code: h = int(5/2) = 2, tanh(-1 + 5 (2 - kappa) / 2)
    hand_p = [(1 + math.tanh(-1 + 5 * (1 - 2 * k / 5))) / 2 for k in (0, 2, 3, 5)]
    hand_c = [(1 + math.tanh(-1 + 5 * (2 - k) / 2)) / 2 for k in (0, 2, 3, 5)]
    torch.testing.assert_close(paper, torch.tensor(hand_p))
    torch.testing.assert_close(code, torch.tensor(hand_c))
    assert abs(hand_p[1] - hand_c[1]) > 0.1  # odd K: they really differ
    even = dict(steps=10, normalize=False)
    torch.testing.assert_close(gairat(None, None, kappa, kappa, **even),
                               gairat(None, None, kappa, kappa, half_steps="code", **even))
    with pytest.raises(AdvrwError, match="half_steps='int'"):
        gairat(None, None, kappa, kappa, half_steps="int")
