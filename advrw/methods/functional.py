"""Small tensor formulas shared by attacks, weighting schemes, defenses and metrics.

All take logits ``[N, C]`` and return per-example values ``[N]`` in float32, so the code that
needs ``p_y`` or ``KL(p(x) || p(x'))`` computes it the same way everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def probs(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    return F.softmax(logits.float() / tau, dim=1)


def true_prob(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p_y``: the softmax probability of the true class."""
    return probs(logits).gather(1, y[:, None]).squeeze(1)


def prob_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p_y - max_{k != y} p_k``: > 0 iff the example is classified correctly."""
    p = probs(logits)
    p_true = p.gather(1, y[:, None]).squeeze(1)
    p_other = p.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return p_true - p_other


def kl_per_example(z_nat: torch.Tensor, z_adv: torch.Tensor, detach_nat: bool = False,
                   eps: float = 0.0) -> torch.Tensor:
    """``KL(p(x) || p(x'))`` per example; ``eps`` inside the log as MART's code (1e-12).

    The natural side enters as log-probabilities (``log_target``): the same value as the authors'
    ``kl_div(log p(x'), softmax(z))``, but where a natural probability underflows to exactly 0 (a
    logit gap over ~100, e.g. after an early large-lr step) that form's gradient is ``0 * -inf = nan``
    and poisons every weight; this one stays finite."""
    log_p_nat = F.log_softmax(z_nat.float(), dim=1)
    if detach_nat:
        log_p_nat = log_p_nat.detach()
    log_p_adv = torch.log(probs(z_adv) + eps) if eps else F.log_softmax(z_adv.float(), dim=1)
    return F.kl_div(log_p_adv, log_p_nat, reduction="none", log_target=True).sum(dim=1)


def entropy(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``-sum_k p_k log p_k`` (natural log) of ``softmax(logits / tau)``."""
    logp = F.log_softmax(logits.float() / tau, dim=1)
    # p log p with p = 0 contributes 0 even where log p = -inf
    return -(logp.exp() * logp).nan_to_num(nan=0.0).sum(dim=1)
