"""Per-example attack objectives: the quantity PGD ascends, as a function of logits.

Every objective maps ``(logits [N, C], y [N], ref_logits, params) -> loss [N]``; the engine sums
over the batch, so each example gets the gradient of its own term (with batch norm in eval mode).
Computed in float32 even when the forward ran under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advrw.core.errors import AdvrwError
from advrw.methods.functional import kl_per_example, prob_margin


def ce(logits, y, ref_logits=None, **_):
    return F.cross_entropy(logits.float(), y, reduction="none")


def kl(logits, y, ref_logits=None, **_):
    """TRADES: ``KL(p(x) || p(x'))`` per example; ``ref_logits`` are the natural logits."""
    if ref_logits is None:
        raise AdvrwError("attack objective 'kl' needs the natural logits (ref_logits); got None")
    return kl_per_example(ref_logits, logits)


def cw(logits, y, ref_logits=None, **_):
    """CW-inf margin loss on logits: ``max_{k != y} z_k - z_y`` (positive once misclassified)."""
    z = logits.float()
    z_true = z.gather(1, y[:, None]).squeeze(1)
    z_other = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return z_other - z_true


def weighted_ce(logits, y, ref_logits=None, *, alpha: float = 1.0, **_):
    """Zeng et al. Algorithm 1: ``exp(-alpha * margin(x')) * CE(f(x'), y)``, gradient through both."""
    return torch.exp(-alpha * prob_margin(logits, y)) * ce(logits, y)


def weighted_kl(logits, y, ref_logits=None, *, alpha: float = 1.0, **_):
    """Zeng's weighting applied to TRADES' attack: ``exp(-alpha * margin(x')) * KL(p(x) || p(x'))``."""
    return torch.exp(-alpha * prob_margin(logits, y)) * kl(logits, y, ref_logits)


def scaled_ce(logits, y, ref_logits=None, *, scale: float = 10.0, **_):
    """Logit-scaling attack (EWAT): ``CE(a * z, y)``; ``scale = 1`` is plain CE."""
    return F.cross_entropy(scale * logits.float(), y, reduction="none")


# The margin decomposition of Ma et al. 2023 (MD / MDMT, ``advrw.attacks.mde``): the CW margin
# ``max_{k!=y} z_k - z_y`` split into its two terms, attacked one at a time before the whole.
def true_logit(logits, y, ref_logits=None, **_):
    """``z_y`` (ascended on the MD attacks' first step, as the authors' code does)."""
    return logits.float().gather(1, y[:, None]).squeeze(1)


def neg_true_logit(logits, y, ref_logits=None, **_):
    """``-z_y``: the true-class term of the margin alone."""
    return -true_logit(logits, y)


def max_other_logit(logits, y, ref_logits=None, **_):
    """``max_{k!=y} z_k``: the other term of the margin alone."""
    return logits.float().scatter(1, y[:, None], float("-inf")).amax(dim=1)


def _need_target(target):
    if target is None:
        raise AdvrwError("targeted attack objectives need a target class per example; got None")
    return target


def target_logit(logits, y, ref_logits=None, *, target=None, **_):
    """``z_t`` for a target class ``t`` per example (MDMT's first stage)."""
    return logits.float().gather(1, _need_target(target)[:, None]).squeeze(1)


def targeted_margin(logits, y, ref_logits=None, *, target=None, **_):
    """``z_t - z_y`` (MDMT's second stage)."""
    return target_logit(logits, y, target=target) - true_logit(logits, y)


OBJECTIVES = {"ce": ce, "kl": kl, "cw": cw, "weighted_ce": weighted_ce,
              "weighted_kl": weighted_kl, "scaled_ce": scaled_ce, "true_logit": true_logit,
              "neg_true_logit": neg_true_logit, "max_other_logit": max_other_logit,
              "target_logit": target_logit, "targeted_margin": targeted_margin}


def get_objective(name: str):
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise AdvrwError(f"attack objective {name!r} is unknown: choose one of {', '.join(OBJECTIVES)}") from None
