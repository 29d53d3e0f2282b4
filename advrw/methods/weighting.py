"""Instance-weighting schemes (SPEC section 3): each a pure function of logits and labels.

Every scheme has the signature ``scheme(z_nat, z_adv, y, kappa=None, **hparams) -> w [N]``
where ``z_nat``/``z_adv`` are the logits of the natural and adversarial inputs (``z_nat`` may be
None for schemes that do not read it), ``y`` the labels and ``kappa`` GAIRAT's per-example
count of still-correct PGD iterates. The functions do not detach; ``compute_weights`` applies
the config's ``detach`` switch, burn-in and the scheme's default, so researchers can reuse the
bare formulas in their own loops::

    from advrw.methods.weighting import vir
    w = vir(z_nat, z_adv, y, alpha=7.0, gamma=10.0, beta=0.007).detach()

How a weight enters the loss is the defense's business (``advrw.methods.defenses``); EWAT's additive
``1 + w`` / ``beta + w`` form is the ``combine: add`` setting of that scheme's config.
"""

from __future__ import annotations

import inspect

import torch

from dataclasses import dataclass
from typing import Callable

from advrw.core.errors import AdvrwError
from advrw.methods.functional import entropy, kl_per_example, prob_margin, true_prob
from advrw.core.rules import boolean, check, choice, number, suggest


def batch_normalize(w: torch.Tensor) -> torch.Tensor:
    """``w * m / sum(w)``: mean weight 1 over the batch (GAIRAT, MAIL paper)."""
    return w * (w.numel() / w.sum())


def _need(name, scheme, value):
    if value is None:
        raise AdvrwError(f"weighting={scheme} needs {name}, got None")
    return value


def none(z_nat, z_adv, y, kappa=None) -> torch.Tensor:
    """Unweighted: ``w = 1``."""
    return torch.ones(len(y), device=y.device)


HALF_STEPS = ("paper", "code")


def gairat(z_nat, z_adv, y, kappa=None, *, lam: float = -1.0, steps: int = 10,
           normalize: bool = True, half_steps: str = "paper") -> torch.Tensor:
    """GAIRAT (Zhang et al. 2021): ``w = (1 + tanh(lam + 5 (1 - 2 kappa / K))) / 2``.

    ``kappa`` counts the PGD iterates (start counted, final not) still classified correctly,
    ``K = steps`` of the training attack; the paper's ``lambda`` is ``lam`` (default -1).
    Normalised to ``w * m / sum(w)`` as in the public code. ``half_steps``: ``paper`` uses
    ``K/2`` (the formula above); ``code`` uses the public code's ``int(K/2)``, i.e.
    ``tanh(lam + 5 (h - kappa) / h)`` with ``h = K // 2`` -- the same for even K, not for odd K.
    """
    kappa = _need("kappa (from the training attack)", "gairat", kappa).float()
    if half_steps == "paper":
        w = (1.0 + torch.tanh(lam + 5.0 * (1.0 - 2.0 * kappa / steps))) / 2.0
    elif half_steps == "code":
        h = int(steps) // 2
        if h < 1:
            raise AdvrwError(f"weighting.half_steps=code needs attack.steps >= 2 (int(K/2) >= 1), got K={steps}")
        w = (1.0 + torch.tanh(lam + 5.0 * (h - kappa) / h)) / 2.0
    else:
        raise AdvrwError(f"weighting.half_steps={half_steps!r} is unknown: choose one of {', '.join(HALF_STEPS)}")
    return batch_normalize(w) if normalize else w


def probabilistic_margin(z_nat, z_adv, y, pm: str = "adv") -> torch.Tensor:
    """MAIL's PM: ``adv``/``nat`` = ``p_y - max_{k!=y} p_k`` on x'/x; ``dif`` = ``p_y(x) - p_y(x')``."""
    if pm == "adv":
        return prob_margin(z_adv, y)
    if pm == "nat":
        return prob_margin(_need("natural logits", "mail pm=nat", z_nat), y)
    if pm == "dif":
        return true_prob(_need("natural logits", "mail pm=dif", z_nat), y) - true_prob(z_adv, y)
    raise AdvrwError(f"weighting.pm={pm!r} is unknown: choose one of adv, nat, dif")


def mail(z_nat, z_adv, y, kappa=None, *, gamma: float = 10.0, beta: float = -0.5, pm: str = "adv",
         normalize: str = "batch", scale: float = 3.0) -> torch.Tensor:
    """MAIL (Liu et al. 2021): ``w = sigmoid(-gamma (PM - beta))``.

    Defaults are MAIL-AT's (gamma 10, beta -0.5); MAIL-TRADES/MART use gamma 2, beta 0.
    ``normalize``: ``batch`` = ``w * m / sum(w)`` (the paper), ``scale`` = ``scale * w`` (the
    public code, scale 3), ``none``.
    """
    w = torch.sigmoid(-gamma * (probabilistic_margin(z_nat, z_adv, y, pm) - beta))
    if normalize == "batch":
        return batch_normalize(w)
    if normalize == "scale":
        return scale * w
    if normalize == "none":
        return w
    raise AdvrwError(f"weighting.normalize={normalize!r} is unknown: choose one of batch, scale, none")


def vir(z_nat, z_adv, y, kappa=None, *, alpha: float = 7.0, gamma: float = 10.0, beta: float = 0.007,
        factors: str = "both") -> torch.Tensor:
    """VIR (Fakorede et al.): ``w = S_v * S_d + beta``.

    ``S_v = alpha * exp(-gamma * p_y(x))`` (vulnerability of the natural example) and
    ``S_d = KL(p(x) || p(x'))``. Defaults are VIR-AT's (7, 10, 0.007); VIR-TRADES uses
    (8, 3, 1.6). ``factors``: ``both`` (the method), ``sv`` / ``sd`` for the paper's
    single-factor ablations (Tables 6-7), which use that factor alone, without beta.
    """
    z_nat = _need("natural logits", "vir", z_nat)
    s_v = alpha * torch.exp(-gamma * true_prob(z_nat, y))
    s_d = kl_per_example(z_nat, z_adv)
    if factors == "both":
        return s_v * s_d + beta
    if factors == "sv":
        return s_v
    if factors == "sd":
        return s_d
    raise AdvrwError(f"weighting.factors={factors!r} is unknown: choose one of both, sv, sd")


def ewat(z_nat, z_adv, y, kappa=None, *, tau: float = 1.0) -> torch.Tensor:
    """EWAT (Kim et al.): ``w_i = E_i / mean_batch(E)``, ``E`` the entropy of ``softmax(z'/tau)``.

    The paper adds it to the unweighted loss (``(1 + w) CE`` for AT, ``beta + w`` on TRADES'
    KL), which is ``combine: add`` in its config.
    """
    if not tau > 0:
        raise AdvrwError(f"weighting.tau={tau} is invalid: must be > 0")
    e = entropy(z_adv, tau)
    return e / e.mean().clamp_min(1e-12)


def margin_exp(z_nat, z_adv, y, kappa=None, *, alpha: float = 1.0) -> torch.Tensor:
    """Zeng et al.: ``s = exp(-alpha * (p_y(x') - max_{k!=y} p_k(x')))``; not normalised.

    Part of the objective in the paper, so its config defaults to ``detach: false``.
    """
    return torch.exp(-alpha * prob_margin(z_adv, y))


SCHEMES = {"none": none, "gairat": gairat, "mail": mail, "vir": vir, "ewat": ewat, "margin_exp": margin_exp}


def _never(hp: dict) -> bool:
    return False


@dataclass(frozen=True)
class Needs:
    """What a scheme reads beyond ``z_adv`` and ``y``; the training step provides it (and nothing more).

    ``natural(hparams)``: the natural logits (an extra clean forward when the defense has none);
    ``kappa``: the training attack counts each example's still-correct iterates;
    ``steps``: the training attack's step count is passed as the ``steps`` hyperparameter.
    """

    natural: Callable[[dict], bool] = _never
    kappa: bool = False
    steps: bool = False


NEEDS = {"none": Needs(), "gairat": Needs(kappa=True, steps=True),
         "mail": Needs(natural=lambda hp: hp.get("pm", "adv") != "adv"), "vir": Needs(natural=lambda hp: True),
         "ewat": Needs(), "margin_exp": Needs()}
# Keys of a weighting config that steer the wiring rather than the formula.
CONTROL_KEYS = ("name", "detach", "combine")
COMBINES = ("multiply", "add")


def get_scheme(name: str):
    try:
        return SCHEMES[name]
    except KeyError:
        raise AdvrwError(f"weighting={name!r} is unknown: choose one of {', '.join(SCHEMES)}") from None


def needs_of(name: str) -> Needs:
    get_scheme(name)  # an unknown name fails here with the list of schemes
    return NEEDS[name]


def needs_natural(name: str, hparams: dict) -> bool:
    return bool(needs_of(name).natural(hparams))


def scheme_hparams(cfg: dict) -> dict:
    """The formula's keyword arguments from a weighting config (drops the wiring keys)."""
    return {k: v for k, v in dict(cfg).items() if k not in CONTROL_KEYS}


def compute_weights(name: str, z_nat, z_adv, y, kappa=None, *, detach: bool = True,
                    burn_in: bool = False, **hparams) -> torch.Tensor:
    """Weights for one batch: burn-in forces ``w = 1``; ``detach`` stops their gradient."""
    if burn_in:
        return torch.ones(len(y), device=y.device)
    w = get_scheme(name)(z_nat, z_adv, y, kappa, **hparams)
    return w.detach() if detach else w


# ----------------------------------------------------------------------------------- config rules
# The formula's hyperparameters per scheme (keys are checked against the function's signature too).
SCHEME_RULES = {
    "none": [],
    "gairat": [("lam", number()), ("normalize", boolean())],
    "mail": [("gamma", number(gt=0)), ("beta", number()), ("pm", choice("adv", "nat", "dif")),
             ("normalize", choice("batch", "scale", "none")), ("scale", number(gt=0))],
    "vir": [("alpha", number(gt=0)), ("gamma", number(ge=0)), ("beta", number(ge=0)),
            ("factors", choice("both", "sv", "sd"))],
    "ewat": [("tau", number(gt=0))],
    "margin_exp": [("alpha", number(ge=0))],
}


def validate_scheme(cfg) -> None:
    """weighting.*: the scheme, its wiring and every hyperparameter, now rather than when burn-in ends."""
    w = cfg.weighting
    check(cfg, [("weighting.name", choice(*SCHEMES)), ("weighting.combine", choice(*COMBINES))])
    fn = SCHEMES[w.name]
    params = [p for p in inspect.signature(fn).parameters if p not in ("z_nat", "z_adv", "y", "kappa")]
    for key in w:
        if key not in CONTROL_KEYS and key != "burn_in" and key not in params:
            raise AdvrwError(f"weighting.{key} is not a hyperparameter of weighting={w.name}: it has "
                             f"{', '.join(params) or 'no hyperparameters'}{suggest(key, params)}")
    check(w, SCHEME_RULES.get(str(w.name), []), prefix="weighting.")
