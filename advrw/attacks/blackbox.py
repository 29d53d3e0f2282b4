"""Black-box Square and SPSA from ``torchattacks`` 3.5.1. Shared adapter rules: ``advrw.attacks.common``."""

from __future__ import annotations

import torch
from torch import nn

from advrw.attacks import common
from advrw.attacks.common import AttackResult
from advrw.attacks.engine import model_mode
from advrw.core.errors import AdvrwError


def _run_torchattacks(model, x, y, *, attack, eps, norm, seed, batch_size, protocol, tag):
    if x.shape[0] == 0:
        return common.empty(AttackResult, x, dict(protocol, eps=float(eps), norm=norm, seed=int(seed),
                                            batch_size=int(batch_size), library="torchattacks",
                                            library_version=common.lib_version("torchattacks")))
    with model_mode(model, False), common.seeded(seed, x.device), common.quiet_stdout("torchattacks"):
        clean_pred = common.predict_labels(model, x, batch_size)
        attack.set_device(x.device)
        chunks = []
        for i in range(0, x.shape[0], batch_size):
            chunks.append(attack(x[i:i + batch_size], y[i:i + batch_size]).detach())
        x_adv, robust, n_bad, _ = common.finalize(model, x, y, torch.cat(chunks), eps=float(eps), norm=norm,
                                            batch_size=batch_size, clean_pred=clean_pred, tag=tag)
    protocol = dict(protocol, eps=float(eps), norm=norm, seed=int(seed), n=int(x.shape[0]),
                    batch_size=int(batch_size), n_invalid=n_bad, library="torchattacks",
                    library_version=common.lib_version("torchattacks"))
    return AttackResult(x_adv=x_adv, robust=robust, robust_accuracy=float(robust.double().mean()),
                        clean_accuracy=float((clean_pred == y).double().mean()), protocol=protocol)


def run_square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
               n_queries: int = 5000, p_init: float = 0.8, seed: int = 0, batch_size: int = 500,
               norm: str = "Linf", n_restarts: int = 1, loss: str = "margin",
               resc_schedule: bool = False) -> AttackResult:
    """Black-box Square attack (``torchattacks.Square``), margin loss.

    ``resc_schedule=False`` matches AutoAttack's Square (its p-schedule is defined on 10000
    iterations and not rescaled to ``n_queries``); torchattacks' own default is True.
    Square reseeds torch with ``seed`` at every batch, so results do not depend on what ran before.
    """
    if norm not in ("Linf", "L2"):
        raise AdvrwError(f"norm={norm!r} is invalid: Square supports 'Linf' or 'L2'")
    if loss not in ("margin", "ce"):
        raise AdvrwError(f"loss={loss!r} is invalid: Square supports 'margin' or 'ce'")
    common.check_positive("n_queries", n_queries, integer=True)
    common.check_positive("n_restarts", n_restarts, integer=True)
    common.check_positive("seed", seed, integer=True, allow_zero=True)
    if not (isinstance(p_init, (int, float)) and 0 < p_init <= 1):
        raise AdvrwError(f"p_init={p_init!r} is invalid: must be in (0, 1]")
    x, y = common.prepare(x, y, eps, batch_size)
    import torchattacks

    with common.quiet_stdout("torchattacks"):
        atk = torchattacks.Square(model, norm=norm, eps=float(eps), n_queries=int(n_queries),
                                  n_restarts=int(n_restarts), p_init=float(p_init), loss=loss,
                                  resc_schedule=bool(resc_schedule), seed=int(seed), verbose=False)
    protocol = {"attack": "square", "n_queries": int(n_queries), "p_init": float(p_init),
                "restarts": int(n_restarts), "loss": loss, "resc_schedule": bool(resc_schedule)}
    return _run_torchattacks(model, x, y, attack=atk, eps=eps, norm=norm, seed=seed,
                             batch_size=int(batch_size), protocol=protocol, tag="Square")


def run_spsa(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
             delta: float = 0.001, lr: float = 0.01, nb_iter: int = 100, nb_sample: int = 256,
             max_batch_size: int = 64, seed: int = 0, batch_size: int = 32) -> AttackResult:
    """SPSA (``torchattacks.SPSA``, advertorch's algorithm: Adam on a finite-difference gradient
    of the logit margin, l_inf). One forward evaluates ``max_batch_size`` random directions for
    each of ``batch_size`` examples, so memory scales with their product. It returns the last
    iterate (no best-so-far tracking), as the library does."""
    for name, v in (("delta", delta), ("lr", lr)):
        common.check_positive(name, v)
    for name, v in (("nb_iter", nb_iter), ("nb_sample", nb_sample), ("max_batch_size", max_batch_size)):
        common.check_positive(name, v, integer=True)
    common.check_positive("seed", seed, integer=True, allow_zero=True)
    x, y = common.prepare(x, y, eps, batch_size)
    import torchattacks

    with common.quiet_stdout("torchattacks"):
        atk = torchattacks.SPSA(model, eps=float(eps), delta=float(delta), lr=float(lr),
                                nb_iter=int(nb_iter), nb_sample=int(nb_sample),
                                max_batch_size=int(max_batch_size))
    protocol = {"attack": "spsa", "delta": float(delta), "lr": float(lr), "nb_iter": int(nb_iter),
                "nb_sample": int(nb_sample), "max_batch_size": int(max_batch_size)}
    return _run_torchattacks(model, x, y, attack=atk, eps=eps, norm="Linf", seed=seed,
                             batch_size=int(batch_size), protocol=protocol, tag="SPSA")
