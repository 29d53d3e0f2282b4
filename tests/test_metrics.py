"""advrw.evaluation.metrics: hand-computed values, invariants, and the chi-square DRO solver vs brute force."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from advrw.core.errors import AdvrwError
from advrw.evaluation.metrics import (accuracy, chi2_dro, chi2_dro_curve, chi2_dro_weights, confusion_matrix,
                           correct, high_entropy_share, histogram, nonuniform_accuracy,
                           nonuniform_weights, per_class_accuracy, prediction_entropy, prob_margin,
                           weighted_accuracy)

# three examples, three classes; probabilities chosen so the margins are easy to check by hand
P3 = torch.tensor([[0.7, 0.2, 0.1],   # y=0: correct, margin 0.7 - 0.2 = 0.5
                   [0.3, 0.6, 0.1],   # y=2: wrong,   margin 0.1 - 0.6 = -0.5
                   [0.25, 0.25, 0.5]],  # y=1: wrong, margin 0.25 - 0.5 = -0.25
                  dtype=torch.float64)
L3 = P3.log()
Y3 = torch.tensor([0, 2, 1])


def test_prob_margin_hand_computed():
    assert torch.allclose(prob_margin(L3, Y3).double(), torch.tensor([0.5, -0.5, -0.25], dtype=torch.float64),
                          atol=1e-6)


def test_correct_and_accuracy():
    assert correct(L3, Y3).tolist() == [True, False, False]
    assert accuracy(L3, Y3) == pytest.approx(1 / 3)


def test_nonuniform_weights_hand_computed():
    alpha = 2.0
    s = np.exp(-alpha * np.array([0.5, -0.5, -0.25]))
    expected = s / s.sum()
    w = nonuniform_weights(L3, Y3, alpha)
    assert w.dtype == torch.float64
    assert np.allclose(w.numpy(), expected, atol=1e-6)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    # only example 0 is correct
    assert nonuniform_accuracy(L3, Y3, alpha) == pytest.approx(expected[0], abs=1e-6)


def test_nonuniform_weights_stable_for_huge_alpha():
    w = nonuniform_weights(L3, Y3, 1e4)
    assert torch.isfinite(w).all() and float(w.sum()) == pytest.approx(1.0)
    assert int(w.argmax()) == 1  # most negative margin takes all the mass


def test_alpha_zero_is_uniform_and_plain_accuracy():
    torch.manual_seed(0)
    logits, y = torch.randn(50, 7), torch.randint(0, 7, (50,))
    w = nonuniform_weights(logits, y, 0.0)
    assert torch.allclose(w, torch.full((50,), 1 / 50, dtype=torch.float64))
    assert nonuniform_accuracy(logits, y, 0.0) == pytest.approx(accuracy(logits, y), abs=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_nonuniform_accuracy_never_exceeds_accuracy(seed):
    g = torch.Generator().manual_seed(seed)
    n, c = int(torch.randint(2, 200, (1,), generator=g)), int(torch.randint(2, 12, (1,), generator=g))
    logits = 3 * torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    acc = accuracy(logits, y)
    for alpha in (0.1, 1.0, 2.0, 10.0):
        assert nonuniform_accuracy(logits, y, alpha) <= acc + 1e-12


def test_bad_alpha_and_shapes_raise():
    with pytest.raises(AdvrwError, match="alpha_test"):
        nonuniform_weights(L3, Y3, -0.1)
    with pytest.raises(AdvrwError, match="alpha_test"):
        nonuniform_accuracy(L3, Y3, float("nan"))
    with pytest.raises(AdvrwError, match="y has values"):
        prob_margin(L3, torch.tensor([0, 1, 3]))
    with pytest.raises(AdvrwError, match="shape"):
        accuracy(L3[0], Y3)


# --------------------------------------------------------------------------- chi-square DRO

def _brute_force(losses: np.ndarray, rho: float, rng) -> float:
    """Best objective SLSQP finds from several starts (plus every simplex vertex/tie face
    checked for feasibility)."""
    n = losses.size
    cons = [{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)},
            {"type": "ineq", "fun": lambda w: rho / n - 0.5 * ((w - 1.0 / n) ** 2).sum(),
             "jac": lambda w: -(w - 1.0 / n)}]
    best = float(losses.mean())
    starts = [np.full(n, 1.0 / n)] + [rng.dirichlet(np.ones(n)) for _ in range(10)]
    for w0 in starts:
        r = minimize(lambda w: -(w @ losses), w0, jac=lambda w: -losses, bounds=[(0, 1)] * n,
                     constraints=cons, method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
        w = r.x
        if abs(w.sum() - 1) < 1e-8 and (w >= -1e-10).all() and cons[1]["fun"](w) > -1e-10:
            best = max(best, float(w @ losses))
    return best


def _assert_feasible(w: torch.Tensor, rho: float):
    n = w.numel()
    assert w.dtype == torch.float64
    assert abs(float(w.sum()) - 1.0) < 1e-12
    assert float(w.min()) >= 0.0
    assert 0.5 * float(((w - 1.0 / n) ** 2).sum()) <= rho / n + 1e-9


CASES = [
    np.array([0.3, 1.2, 2.5]),
    np.array([1.0, 1.0, 0.2, 3.0]),
    np.array([2.0, 2.0, 0.5, 0.1, 1.0]),  # tie at the max
    np.array([0.7, 0.7, 0.7, 0.1, 0.1]),  # three-way tie at the max, two-way at the min
    np.array([5.0, 0.0, 0.0]),
    np.array([0.1, 0.4, 0.4, 0.9, 0.9]),
]


@pytest.mark.parametrize("losses", CASES)
@pytest.mark.parametrize("rho", [1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5])
def test_chi2_dro_matches_brute_force(losses, rho):
    rng = np.random.default_rng(0)
    w = chi2_dro_weights(torch.tensor(losses), rho)
    _assert_feasible(w, rho)
    ours = float(w.numpy() @ losses)
    brute = _brute_force(losses, rho, rng)
    assert ours >= brute - 1e-8, (ours, brute)
    # and it is not "better than optimal" by violating constraints (already checked) -> equality
    assert ours == pytest.approx(brute, abs=1e-6)


def test_chi2_dro_dense_grid_n3():
    """Independent check: a dense grid over the 3-simplex never beats the solver."""
    losses = np.array([0.2, 1.0, 1.7])
    k = 400
    i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
    mask = i + j <= k
    grid = np.stack([i[mask], j[mask], k - i[mask] - j[mask]], axis=1) / k
    for rho in (0.005, 0.05, 0.2):
        feas = 0.5 * ((grid - 1 / 3) ** 2).sum(1) <= rho / 3
        best_grid = (grid[feas] @ losses).max()
        ours = float(chi2_dro_weights(torch.tensor(losses), rho).numpy() @ losses)
        assert ours >= best_grid - 1e-12
        assert ours - best_grid < 5e-3  # the grid gets close


@pytest.mark.parametrize("seed", range(25))
def test_chi2_dro_random_cases_against_slsqp(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 6))
    losses = rng.exponential(size=n)
    if seed % 3 == 0:
        losses = np.round(losses * 2) / 2  # create ties
    rho = float(rng.choice([1e-3, 0.02, 0.1, 0.3]))
    w = chi2_dro_weights(torch.tensor(losses), rho)
    _assert_feasible(w, rho)
    assert float(w.numpy() @ losses) == pytest.approx(_brute_force(losses, rho, rng), abs=1e-6)


def test_chi2_dro_limits():
    losses = torch.tensor([0.5, 2.0, 1.0, 2.0, 0.1])
    assert torch.equal(chi2_dro_weights(losses, 0.0), torch.full((5,), 0.2, dtype=torch.float64))
    w = chi2_dro_weights(losses, 1e6)  # ball covers the simplex: all mass on the (tied) max
    assert torch.allclose(w, torch.tensor([0, 0.5, 0, 0.5, 0], dtype=torch.float64))
    w1 = chi2_dro_weights(torch.tensor([0.0, 3.0, 1.0]), 1e6)
    assert torch.equal(w1, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    # constant losses: every feasible w is optimal; the solver returns uniform
    assert torch.allclose(chi2_dro_weights(torch.ones(4), 0.3), torch.full((4,), 0.25, dtype=torch.float64))


def test_chi2_dro_large_n_feasible_and_monotone():
    torch.manual_seed(0)
    losses = torch.rand(10_000) * 3
    prev = -1.0
    for rho in (0.0, 0.01, 0.1, 1.0, 10.0):
        w = chi2_dro_weights(losses, rho)
        _assert_feasible(w, rho)
        val = float((w * losses.double()).sum())
        assert val >= prev - 1e-12  # a larger ball can only help the adversary
        prev = val


def test_chi2_dro_report_and_errors():
    losses = torch.tensor([0.1, 0.2, 3.0, 0.4])
    ok = torch.tensor([True, True, False, True])
    r0 = chi2_dro(losses, ok, 0.0)
    assert r0["loss"] == pytest.approx(float(losses.double().mean()))
    assert r0["accuracy"] == pytest.approx(0.75)
    r1 = chi2_dro(losses, ok, 0.5)
    assert r1["loss"] > r0["loss"] and r1["accuracy"] < r0["accuracy"]
    assert chi2_dro(losses, ok, 0.5, scale_by_n=True)["loss"] == pytest.approx(r1["loss"] / 4)
    assert [r["rho"] for r in chi2_dro_curve(losses, ok, [0.0, 0.1])] == [0.0, 0.1]
    with pytest.raises(AdvrwError, match="rho"):
        chi2_dro_weights(losses, -0.01)
    with pytest.raises(AdvrwError, match="losses"):
        chi2_dro_weights(torch.tensor([1.0, float("nan")]), 0.1)
    with pytest.raises(AdvrwError, match="correct_mask"):
        chi2_dro(losses, ok[:3], 0.1)


# --------------------------------------------------------------------------- per-class, entropy

def test_confusion_matrix_and_per_class_accuracy():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = torch.tensor([0, 1, 0, 1, 2, 2, 2, 0, 2])
    cm = confusion_matrix(pred, y, 4)
    expected = torch.tensor([[2, 1, 0, 0],
                             [0, 1, 1, 0],
                             [1, 0, 3, 0],
                             [0, 0, 0, 0]])
    assert cm.dtype == torch.int64 and torch.equal(cm, expected)
    acc = per_class_accuracy(pred, y, 4)
    assert torch.allclose(acc[:3], torch.tensor([2 / 3, 1 / 2, 3 / 4], dtype=torch.float64))
    assert math.isnan(float(acc[3]))
    with pytest.raises(AdvrwError, match="pred"):
        confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 1]), 4)


def test_entropy_values():
    c = 10
    uniform = torch.zeros(3, c)
    assert torch.allclose(prediction_entropy(uniform), torch.full((3,), math.log(c)), atol=1e-6)
    one_hot = torch.tensor([[1e4, 0.0, 0.0]])
    assert float(prediction_entropy(one_hot)[0]) == pytest.approx(0.0, abs=1e-6)
    p = torch.tensor([[0.5, 0.25, 0.25]])
    assert float(prediction_entropy(p.log())[0]) == pytest.approx(1.5 * math.log(2), abs=1e-6)
    # -inf logits (p = 0) must not produce NaN
    assert torch.isfinite(prediction_entropy(torch.tensor([[0.0, float("-inf"), 0.0]]))).all()


def test_high_entropy_share_constructed():
    # entropy log(10) = 2.30 > 1.5 for 3 uniform rows; ~0 for 5 confident rows
    logits = torch.cat([torch.zeros(3, 10), 50 * torch.eye(10)[:5]])
    assert high_entropy_share(logits) == pytest.approx(3 / 8)
    assert high_entropy_share(logits, threshold=2.5) == 0.0


def test_histogram_and_weighted_accuracy():
    counts, edges = histogram(torch.tensor([0.0, 0.1, 0.5, 1.0]), bins=2, range=(0.0, 1.0))
    assert counts.tolist() == [2, 2] and edges.tolist() == [0.0, 0.5, 1.0]
    counts, edges = histogram(np.array([1e-4, 1e-3, 1e-2]), bins=3, log=True)
    assert counts.tolist() == [1, 1, 1]
    assert np.allclose(edges, np.geomspace(1e-4, 1e-2, 4))
    with pytest.raises(AdvrwError, match="log"):
        histogram(np.array([0.0, 1.0]), log=True)
    assert weighted_accuracy(torch.tensor([True, False]), torch.tensor([3.0, 1.0])) == pytest.approx(0.75)
