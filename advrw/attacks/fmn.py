"""Fast Minimum-Norm from ``foolbox`` (optional: torchattacks 3.5.1 has no FMN and ``adv-lib``'s
hard dependency ``visdom`` does not build here). Shared adapter rules: ``advrw.attacks.common``."""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from advrw.attacks import common
from advrw.attacks.common import AttackResult
from advrw.attacks.engine import model_mode
from advrw.core.errors import AdvrwError


def fmn_available() -> bool:
    """True if foolbox (which ships FMN for torch) is importable.

    Checked against torch 2.13.0: torchattacks 3.5.1 has no FMN; ``adv-lib`` 0.2.8 (FMN by one
    of its authors) needs ``visdom``, whose sdist fails to build (setup.py imports
    ``pkg_resources``); ``foolbox`` 3.3.4 installs (pure Python: eagerpy, GitPython, gitdb,
    smmap) and its ``LInfFMNAttack`` runs on torch 2.13. It is not a project dependency yet.
    """
    return importlib.util.find_spec("foolbox") is not None


def run_fmn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
            steps: int = 100, batch_size: int = 500, seed: int = 0) -> AttackResult:
    """FMN-``steps`` (foolbox) evaluated at ``eps``: a point is broken if FMN finds an
    adversarial example of norm <= eps. FMN without an init attack is deterministic; the seed
    only pins torch's RNG for the call."""
    if not fmn_available():
        raise AdvrwError("attack 'fmn' needs foolbox, which is not installed: "
                         "pip install foolbox==3.3.4 (or drop fmn from eval.attacks)")
    classes = {"Linf": "LInfFMNAttack", "L2": "L2FMNAttack", "L1": "L1FMNAttack"}
    if norm not in classes:
        raise AdvrwError(f"norm={norm!r} is invalid: FMN supports {sorted(classes)}")
    common.check_positive("steps", steps, integer=True)
    common.check_positive("seed", seed, integer=True, allow_zero=True)
    x, y = common.prepare(x, y, eps, batch_size)
    if x.shape[0] == 0:
        return common.empty(AttackResult, x, {"attack": "fmn", "steps": int(steps), "eps": float(eps),
                                        "norm": norm, "seed": int(seed), "batch_size": int(batch_size),
                                        "library": "foolbox", "library_version": common.lib_version("foolbox")})
    import foolbox

    with model_mode(model, False), common.seeded(seed, x.device), common.quiet_stdout("foolbox"):
        clean_pred = common.predict_labels(model, x, batch_size)
        fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
        atk = getattr(foolbox.attacks, classes[norm])(steps=int(steps))
        chunks = []
        for i in range(0, x.shape[0], batch_size):
            _, clipped, _ = atk(fmodel, x[i:i + batch_size], y[i:i + batch_size], epsilons=float(eps))
            chunks.append(clipped.detach())
        x_adv, robust, n_bad, _ = common.finalize(model, x, y, torch.cat(chunks), eps=float(eps), norm=norm,
                                            batch_size=batch_size, clean_pred=clean_pred, tag="FMN")
    protocol = {"attack": "fmn", "steps": int(steps), "eps": float(eps), "norm": norm, "seed": int(seed),
                "n": int(x.shape[0]), "batch_size": int(batch_size), "n_invalid": n_bad,
                "library": "foolbox", "library_version": common.lib_version("foolbox")}
    return AttackResult(x_adv=x_adv, robust=robust, robust_accuracy=float(robust.double().mean()),
                        clean_accuracy=float((clean_pred == y).double().mean()), protocol=protocol)
