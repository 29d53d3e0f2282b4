"""Evaluation metrics (SPEC section 6) as pure tensor functions: no Hydra, no W&B, no I/O.

Everything here takes logits / labels / per-example values already computed by the caller and
returns tensors or floats, so the evaluation loop decides which attack produced the inputs:

* ``A_rob`` is ``accuracy(logits_adv, y)`` with ``logits_adv`` from unweighted PGD on CE.
* ``A_sa``  is ``nonuniform_accuracy(logits_adv, y, alpha_test)`` with the SAME unweighted-PGD
  logits (Zeng et al., eq. 18).
* ``A_tr``  is ``nonuniform_accuracy(logits_adv, y, alpha_test)`` with logits from the weighted
  PGD attack run at ``alpha_test`` (Zeng et al., eq. 19).

Zeng's eqs. 18/19 print an extra ``1 / N_test`` in front of ``sum_i s~_i 1[...]``; with ``s~``
already normalised to sum to one that would make every accuracy ``<= 1 / N``, and their tables
(e.g. A_sa = 25.09 % next to A_rob = 49.29 %) only fit the plain ``sum_i s~_i 1[...]``, which is
what SPEC 6 and this module use.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from advrw.methods import functional
from advrw.core.errors import AdvrwError

__all__ = [
    "accuracy",
    "chi2_dro",
    "chi2_dro_curve",
    "chi2_dro_weights",
    "confusion_matrix",
    "correct",
    "high_entropy_share",
    "histogram",
    "nonuniform_accuracy",
    "nonuniform_weights",
    "per_class_accuracy",
    "prediction_entropy",
    "prob_margin",
    "weighted_accuracy",
]


# --------------------------------------------------------------------------- input checks

def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise AdvrwError(f"{name} has shape {shape}: must be a 2-D tensor [N, C]")
    if logits.shape[0] == 0:
        raise AdvrwError(f"{name} is empty (N=0): need at least one example")
    if logits.shape[1] < 2:
        raise AdvrwError(f"{name} has C={logits.shape[1]} classes: need at least 2")


def _check_labels(y: torch.Tensor, n: int, num_classes: int, name: str = "y") -> None:
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != n:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise AdvrwError(f"{name} has shape {shape}: must be a 1-D tensor of length {n}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise AdvrwError(f"{name} has dtype {y.dtype}: must be an integer tensor of class indices")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise AdvrwError(f"{name} has values in [{int(y.min())}, {int(y.max())}]: "
                         f"must lie in [0, {num_classes - 1}]")


def _check_logits_labels(logits: torch.Tensor, y: torch.Tensor) -> None:
    _check_logits(logits)
    _check_labels(y, logits.shape[0], logits.shape[1])


def _check_nonneg(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise AdvrwError(f"{name}={value!r} is invalid: must be a real number >= 0") from None
    if not math.isfinite(out) or out < 0:
        raise AdvrwError(f"{name}={value!r} is invalid: must be a finite number >= 0")
    return out


def _check_alpha(alpha_test: float) -> float:
    return _check_nonneg("alpha_test", alpha_test)


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise AdvrwError(f"num_classes={num_classes!r} is invalid: must be a positive integer")
    return int(num_classes)


# --------------------------------------------------------------------------- accuracy & margins

def prob_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p_y - max_{k != y} p_k`` with ``p = softmax(logits)``, shape ``[N]``, in ``[-1, 1]``.

    Positive iff the true class strictly beats every other class (Zeng et al., Definition 1).
    """
    _check_logits_labels(logits, y)
    return functional.prob_margin(logits, y)


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BoolTensor ``[N]``: ``argmax_k logits[i, k] == y[i]``."""
    _check_logits_labels(logits, y)
    return logits.argmax(dim=1) == y


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of examples whose argmax equals the label (uniform accuracy, e.g. ``A_rob``)."""
    return correct(logits, y).double().mean().item()


def weighted_accuracy(correct_mask: torch.Tensor, weights: torch.Tensor) -> float:
    """``sum_i w_i 1[correct_i] / sum_i w_i`` for non-negative weights."""
    if correct_mask.shape != weights.shape or correct_mask.dim() != 1:
        raise AdvrwError(f"correct_mask {tuple(correct_mask.shape)} and weights {tuple(weights.shape)} "
                         "must be 1-D tensors of the same length")
    w = weights.double()
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()) or float(w.sum()) <= 0:
        raise AdvrwError("weights are invalid: must be finite, >= 0 and not all zero")
    return float((w * correct_mask.to(w.device).double()).sum() / w.sum())


# --------------------------------------------------------------------------- Zeng: non-uniform metrics

def nonuniform_weights(logits_adv: torch.Tensor, y: torch.Tensor, alpha_test: float) -> torch.Tensor:
    """Normalised importance weights ``s~_i = exp(-alpha m_i) / sum_j exp(-alpha m_j)``, ``[N]``.

    ``m_i = prob_margin(logits_adv, y)`` at the adversarial point. Computed as a softmax of
    ``-alpha * m`` (max-subtracted, so no overflow for large alpha), in float64 so that the
    weights sum to one to machine precision over the whole evaluated set. ``alpha_test = 0``
    gives the uniform ``1 / N``.
    """
    alpha = _check_alpha(alpha_test)
    margin = prob_margin(logits_adv, y).double()
    return torch.softmax(-alpha * margin, dim=0)


def nonuniform_accuracy(logits_adv: torch.Tensor, y: torch.Tensor, alpha_test: float) -> float:
    """Zeng's non-uniform accuracy ``sum_i s~_i * 1[argmax f(x'_i) = y_i]``.

    This is ``A_sa`` when ``logits_adv`` come from unweighted PGD and ``A_tr`` when they come
    from weighted PGD at ``alpha_test``; the caller picks the attack. For ``alpha_test >= 0`` it
    never exceeds plain accuracy (correct examples have margin >= 0, so ``s <= 1``; wrong ones
    ``s >= 1``), and equals it at ``alpha_test = 0``.
    """
    s = nonuniform_weights(logits_adv, y, alpha_test)
    hit = (logits_adv.argmax(dim=1) == y).to(s.device).double()
    return float((s * hit).sum())


# --------------------------------------------------------------------------- chi-square DRO (Zeng A.4)

def chi2_dro_weights(losses: torch.Tensor, rho: float) -> torch.Tensor:
    """Exact maximiser of ``sum_i w_i l_i`` over ``{w in simplex : 0.5 ||w - 1/N||^2 <= rho / N}``.

    Returns float64 ``[N]`` on the device of ``losses``.

    KKT: if the uniform distribution over the maximal losses already lies in the ball, it is
    optimal (ball inactive; with ties it is the optimum closest to uniform). Otherwise the ball
    is active and ``w_i = (l_i - eta)_+ / sum_j (l_j - eta)_+`` for the unique threshold ``eta``
    with ``sum_i w_i^2 = 2 rho / N + 1 / N`` (since ``||w - 1/N||^2 = sum w^2 - 1/N`` on the
    simplex). ``sum w^2`` is non-decreasing in ``eta``, so we locate the support size ``s`` by
    evaluating it at the sorted breakpoints ``eta = l_(s+1)`` and then solve the quadratic on
    that piece in closed form: with the top-``s`` mean ``m`` and variance ``V``,
    ``eta = m - sqrt(V / (q s - 1))``. Ties never split: a piece that would separate equal
    losses has an empty eta-interval.
    """
    rho_f = _check_nonneg("rho", rho)
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1 or losses.numel() == 0:
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise AdvrwError(f"losses has shape {shape}: must be a non-empty 1-D tensor")
    l = losses.detach().double()
    if not bool(torch.isfinite(l).all()):
        raise AdvrwError("losses contain NaN or inf: every per-example loss must be finite")

    n = l.numel()
    uniform = torch.full_like(l, 1.0 / n)
    if rho_f == 0.0 or n == 1:
        return uniform
    r2 = 2.0 * rho_f / n  # squared radius of the ball around 1/N
    q = r2 + 1.0 / n  # target sum of squares when the ball is active

    l_max = l.max()
    top = l == l_max
    k = int(top.sum())
    if 1.0 / k - 1.0 / n <= r2:  # uniform-on-argmax is inside the ball: ball inactive
        return top.double() / k

    # Ball active. Shift by the max (w is invariant to shifts) for better conditioning.
    ls, order = torch.sort(l - l_max, descending=True)
    s_idx = torch.arange(1, n + 1, dtype=torch.float64, device=l.device)
    c1 = torch.cumsum(ls, 0)
    c2 = torch.cumsum(ls * ls, 0)
    mean = c1 / s_idx
    var = (c2 / s_idx - mean * mean).clamp_min(0.0)

    # sum w^2 at the breakpoint eta = ls[s] (support = top s), for s = 1 .. n-1
    b = ls[1:]
    t = mean[:-1] - b  # >= 0
    s_f = s_idx[:-1]
    g = torch.where(t > 0, (var[:-1] + t * t) / (s_f * t * t), torch.full_like(t, float("inf")))
    # smallest s whose breakpoint value is <= q; s = n always qualifies (eta -> -inf gives 1/N < q)
    ok = torch.nonzero(g <= q).flatten()
    s = int(ok[0]) + 1 if ok.numel() else n

    m_s, v_s = mean[s - 1], var[s - 1]
    denom = q * s - 1.0
    # denom > 0 because q >= sum w^2 >= 1/s on this piece; v_s > 0 because the active case has
    # strictly more than the k tied maxima in the support
    eta = m_s - torch.sqrt(v_s / denom) if (denom > 0 and v_s > 0) else m_s - 1.0
    lo = ls[s] if s < n else torch.tensor(-float("inf"), dtype=torch.float64, device=l.device)
    eta = torch.clamp(eta, min=lo)  # guard rounding at the piece's lower end
    w_sorted = (ls - eta).clamp_min(0.0)
    w_sorted = w_sorted / w_sorted.sum()

    w = torch.empty_like(w_sorted)
    w[order] = w_sorted
    # Rounding can leave ||w - u||^2 a few ulps above r2; shrinking towards u keeps sum 1 and
    # w >= 0 (convex combination with u) and restores exact feasibility.
    d2 = float(((w - uniform) ** 2).sum())
    if d2 > r2:
        w = uniform + (w - uniform) * math.sqrt(r2 / d2)
    return w


def chi2_dro(losses: torch.Tensor, correct_mask: torch.Tensor, rho: float, *,
             scale_by_n: bool = False) -> dict:
    """Worst-case chi-square-ball reweighting of per-example adversarial losses.

    Returns ``{"loss": sum_i w_i l_i, "accuracy": sum_i w_i 1[correct_i], "rho": rho}`` with
    ``w = chi2_dro_weights(losses, rho)``. At ``rho = 0`` these are the mean loss and the plain
    accuracy. Zeng's eq. 28 writes the objective as ``(1/N) sum_i w_i l_i``; that constant does
    not change ``w`` and SPEC 6 drops it: ``scale_by_n=True`` reports the paper's scaled loss.
    """
    if not isinstance(correct_mask, torch.Tensor) or correct_mask.shape != losses.shape:
        got = tuple(correct_mask.shape) if isinstance(correct_mask, torch.Tensor) else type(correct_mask).__name__
        raise AdvrwError(f"correct_mask has shape {got}: must match losses {tuple(losses.shape)}")
    w = chi2_dro_weights(losses, rho)
    loss = float((w * losses.detach().double()).sum())
    if scale_by_n:
        loss /= losses.numel()
    acc = float((w * correct_mask.to(w.device).double()).sum())
    return {"loss": loss, "accuracy": acc, "rho": float(rho)}


def chi2_dro_curve(losses: torch.Tensor, correct_mask: torch.Tensor, rhos, *,
                   scale_by_n: bool = False) -> list[dict]:
    """``chi2_dro`` for each budget in ``rhos`` (Zeng Fig. 4)."""
    return [chi2_dro(losses, correct_mask, r, scale_by_n=scale_by_n) for r in rhos]


# --------------------------------------------------------------------------- per-class diagnostics

def confusion_matrix(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """LongTensor ``[C, C]``: row = true class, column = predicted class."""
    c = _check_num_classes(num_classes)
    if not isinstance(pred, torch.Tensor) or pred.dim() != 1:
        raise AdvrwError("pred must be a 1-D tensor of predicted class indices "
                         "(pass logits.argmax(1), not logits)")
    _check_labels(pred, pred.shape[0], c, name="pred")
    _check_labels(y, pred.shape[0], c, name="y")
    flat = y.long() * c + pred.to(y.device).long()
    return torch.bincount(flat, minlength=c * c).view(c, c)


def per_class_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float64 ``[C]``: accuracy within each true class; NaN for classes with no examples."""
    cm = confusion_matrix(pred, y, num_classes).double()
    total = cm.sum(dim=1)
    hits = cm.diagonal()
    out = torch.full_like(total, float("nan"))
    seen = total > 0
    out[seen] = hits[seen] / total[seen]
    return out


# --------------------------------------------------------------------------- EWAT entropy

def prediction_entropy(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``-sum_k p_k log p_k`` (natural log) with ``p = softmax(logits / tau)``, shape ``[N]``."""
    _check_logits(logits)
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise AdvrwError(f"tau={tau!r} is invalid: must be a finite number > 0")
    return functional.entropy(logits, tau)


def high_entropy_share(logits: torch.Tensor, threshold: float = 1.5, tau: float = 1.0) -> float:
    """Fraction of examples whose prediction entropy exceeds ``threshold`` (EWAT Fig. 4a)."""
    return (prediction_entropy(logits, tau) > float(threshold)).double().mean().item()


# --------------------------------------------------------------------------- histograms

def histogram(values, bins: int = 50, range: tuple[float, float] | None = None, *,  # noqa: A002
              log: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(counts int64 [bins], edges float64 [bins + 1])``, numpy's semantics (last bin closed).

    The pair is what ``wandb.Histogram(np_histogram=...)`` takes and what the PNG plots draw.
    ``log=True`` uses geometrically spaced edges (values must then be > 0), which suits the
    heavy-tailed normalised importance weights of Zeng A.6.
    """
    v = values.detach().double().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    v = v.ravel()
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise AdvrwError(f"bins={bins!r} is invalid: must be a positive integer")
    if v.size == 0:
        raise AdvrwError("values is empty: need at least one value to histogram")
    if not np.isfinite(v).all():
        raise AdvrwError("values contain NaN or inf: histogram needs finite values")
    lo, hi = (float(v.min()), float(v.max())) if range is None else (float(range[0]), float(range[1]))
    if not lo <= hi:
        raise AdvrwError(f"range={range!r} is invalid: need low <= high")
    if log:
        if lo <= 0:
            raise AdvrwError(f"histogram(log=True) needs positive values/range; got low={lo}")
        if lo == hi:
            lo, hi = lo / 1.5, hi * 1.5  # one distinct value: a visible bin around it
        edges = np.geomspace(lo, hi, int(bins) + 1)
    else:
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5  # numpy's convention for a degenerate range
        edges = np.linspace(lo, hi, int(bins) + 1)
    counts, edges = np.histogram(v, bins=edges)
    return counts.astype(np.int64), edges.astype(np.float64)
