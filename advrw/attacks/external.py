"""Adapters to maintained attack libraries (SPEC section 6): AutoAttack, Square, SPSA, FMN.

* ``run_autoattack`` -- ``pyautoattack`` (the packaged fork of the official AutoAttack code) with
  the budgets it sets for ``version='standard'``: APGD-CE (100 iterations, 1 restart), APGD-T
  (100 iterations, 9 target classes), FAB-T (100 iterations, 9 target classes), Square (5000
  queries, p_init 0.8). The cascade only attacks points still robust, so the final mask is the
  per-example worst case over the four attacks.
* ``run_square`` / ``run_spsa`` -- ``torchattacks`` 3.5.1 black-box attacks.
* ``run_fmn`` -- Fast Minimum-Norm from ``foolbox`` (optional: torchattacks 3.5.1 has no FMN and
  ``adv-lib``'s hard dependency ``visdom`` does not build here); ``fmn_available()`` says
  whether it can run.

Every adapter: evaluates the model in eval mode and restores each submodule's previous mode,
keeps inputs in [0, 1] and fp32 on ``x``'s device, seeds torch's RNG with a fixed seed inside a
forked RNG state (the caller's global RNG is untouched), sends nothing to stdout, and re-checks
the returned points itself: ``robust[i]`` is True only if ``x_adv[i]`` lies in the eps-ball
around ``x[i]`` and in [0, 1] and the model classifies it correctly. A returned point outside
the ball is replaced by ``x[i]`` (the attack gets no credit for it) and reported.

No PGD loop lives here: the white-box PGD family is ``advrw.attacks.engine``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from advrw.attacks.engine import model_mode
from advrw.core.errors import AdvrwError

log = logging.getLogger(__name__)

__all__ = [
    "AttackResult",
    "AutoAttackResult",
    "fmn_available",
    "run_autoattack",
    "run_fmn",
    "run_spsa",
    "run_square",
]

# Slack for float32 rounding in ``x + clamp(delta, -eps, eps)``; far below one 8-bit grey level.
_EPS_TOL = 1e-6


@dataclass
class AttackResult:
    """Outcome of one library attack on ``N`` examples (all tensors on ``x``'s device).

    ``x_adv``: ``[N, ...]`` adversarial inputs (the clean input where the attack failed);
    ``robust``: BoolTensor ``[N]``, correct on a valid ``x_adv``; ``robust_accuracy``:
    ``robust.float().mean()``; ``clean_accuracy``: accuracy on ``x``; ``protocol``: every
    setting needed to report the number (attack, budgets, eps, norm, seed, n, library version).
    """

    x_adv: torch.Tensor
    robust: torch.Tensor
    robust_accuracy: float
    clean_accuracy: float
    protocol: dict = field(default_factory=dict)


@dataclass
class AutoAttackResult(AttackResult):
    """``AttackResult`` plus ``per_attack`` (attack name -> robust accuracy after that stage of
    the cascade; ``'clean'`` is the starting accuracy) and ``warnings`` (every message
    AutoAttack's sanity checks logged, plus ours, e.g. invalid perturbations)."""

    per_attack: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


# --------------------------------------------------------------------------- shared helpers

@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fixed-seed RNG for the call; the caller's CPU (and CUDA) RNG state is restored after."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet_stdout(tag: str) -> Iterator[None]:
    """Libraries that ``print`` (torchattacks' device notice, verbose branches) go to our log."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    text = buf.getvalue().strip()
    if text:
        log.debug("%s printed: %s", tag, text)


def _check_positive(name: str, value, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok_type = (isinstance(value, int) and not isinstance(value, bool)) if integer else (
        isinstance(value, (int, float)) and not isinstance(value, bool))
    kind = "integer" if integer else "number"
    bound = ">= 0" if allow_zero else "> 0"
    if not ok_type or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise AdvrwError(f"{name}={value!r} is invalid: must be a finite {kind} {bound}")


def _prepare(x: torch.Tensor, y: torch.Tensor, eps: float, batch_size: int,
             device=None) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise AdvrwError(f"x has shape {shape}: must be an image batch [N, C, H, W]")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise AdvrwError(f"y has shape {shape}: must be 1-D with N={x.shape[0]} labels")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise AdvrwError(f"y has dtype {y.dtype}: must be integer class indices")
    _check_positive("eps", eps)
    _check_positive("batch_size", batch_size, integer=True)
    dev = torch.device(device) if device is not None else x.device
    x = x.detach().to(dev, torch.float32)
    y = y.detach().to(dev, torch.long)
    if x.shape[0] == 0:
        return x, y  # callers attacking "the still-robust subset" may pass none: see _empty
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise AdvrwError(f"x has values in [{lo:.4g}, {hi:.4g}]: inputs must lie in [0, 1] "
                         "(normalisation belongs inside the model)")
    return x, y


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)])


def _lp_dist(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    d = (x_adv - x).flatten(1)
    if norm == "Linf":
        return d.abs().amax(dim=1)
    if norm == "L2":
        return d.norm(p=2, dim=1)
    return d.abs().sum(dim=1)  # L1


def _finalize(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, *,
              eps: float, norm: str, batch_size: int, clean_pred: torch.Tensor,
              tag: str) -> tuple[torch.Tensor, torch.Tensor, float, list[str]]:
    """Validate the returned points, then decide robustness from OUR forward pass on them."""
    x_adv = x_adv.detach().to(x.device, torch.float32)
    if x_adv.shape != x.shape:
        raise AdvrwError(f"{tag} returned x_adv of shape {tuple(x_adv.shape)}: expected {tuple(x.shape)}")
    flat = x_adv.flatten(1)
    tol = _EPS_TOL * (1.0 if norm == "Linf" else max(1.0, float(flat.shape[1])))
    valid = (torch.isfinite(flat).all(dim=1)
             & (flat.amin(dim=1) >= 0.0) & (flat.amax(dim=1) <= 1.0)
             & (_lp_dist(x_adv, x, norm) <= eps + tol))
    notes = []
    n_bad = int((~valid).sum())
    if n_bad:
        msg = (f"{tag}: {n_bad} returned point(s) outside the {norm} eps={eps:.6g} ball or [0, 1]; "
               "they were replaced by the clean input and count as not broken")
        log.warning(msg)
        notes.append(msg)
        x_adv = torch.where(valid.view(-1, *[1] * (x.dim() - 1)), x_adv, x)
    robust = _predict(model, x_adv, batch_size) == y
    # A point the model already misclassifies is not robust, whatever the attack returned.
    robust &= clean_pred == y
    return x_adv, robust, n_bad, notes


def _empty(cls, x: torch.Tensor, protocol: dict, **extra) -> AttackResult:
    """N = 0: nothing to attack; accuracies are NaN (undefined), never a fake 0 or 1."""
    log.info("%s: no examples to attack", protocol.get("attack"))
    return cls(x_adv=x.clone(), robust=torch.zeros(0, dtype=torch.bool, device=x.device),
               robust_accuracy=float("nan"), clean_accuracy=float("nan"),
               protocol=dict(protocol, n=0), **extra)


def _lib_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class _Capture(logging.Handler):
    """Collects every record of the 'auto-attack' logger and forwards it to ours."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        # progress lines are DEBUG in pyautoattack; keep the level so WARNINGs stay visible
        log.log(record.levelno, "auto-attack: %s", record.getMessage())


_AA_STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
_PROGRESS = re.compile(r"^(\S+) - \d+/\d+ - (\d+) out of (\d+) successfully perturbed$")


# --------------------------------------------------------------------------- AutoAttack

def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                   norm: str = "Linf", version: str = "standard", seed: int = 0,
                   batch_size: int = 500, device=None, attacks: list[str] | None = None,
                   apgd_restarts: int | None = None) -> AutoAttackResult:
    """AutoAttack from ``pyautoattack`` with its official budgets; worst case per example.

    ``attacks`` (e.g. ``["apgd-ce"]``) runs only those stages of the package's cascade, each with
    the budget ``version='standard'`` gives it (pyautoattack's ``version='custom'``);
    ``apgd_restarts`` overrides APGD-CE's restarts (standard: 1).

    ``per_attack`` is recomputed exactly from the cascade's per-batch success counts (logged at
    DEBUG by pyautoattack). With fewer than 10 classes the 9 target classes of APGD-T / FAB-T
    are impossible; they are capped at ``C - 1`` and the cap is recorded in ``protocol`` (the
    official numbers assume ``C >= 10``).
    """
    if norm not in ("Linf", "L2", "L1"):
        raise AdvrwError(f"norm={norm!r} is invalid: AutoAttack supports 'Linf', 'L2', 'L1'")
    if version not in ("standard", "plus", "rand"):
        raise AdvrwError(f"version={version!r} is invalid: must be 'standard', 'plus' or 'rand'")
    if attacks is not None and (not attacks or any(a not in _AA_STAGES for a in attacks)):
        raise AdvrwError(f"attacks={attacks!r} is invalid: choose from {', '.join(_AA_STAGES)}")
    if apgd_restarts is not None:
        _check_positive("apgd_restarts", apgd_restarts, integer=True)
    _check_positive("seed", seed, integer=True, allow_zero=True)
    x, y = _prepare(x, y, eps, batch_size, device)
    if x.shape[0] == 0:
        return _empty(AutoAttackResult, x, {"attack": "autoattack", "library": "pyautoattack",
                                            "library_version": _lib_version("pyautoattack"),
                                            "version": version, "eps": float(eps), "norm": norm,
                                            "seed": int(seed), "batch_size": int(batch_size)},
                      per_attack={}, warnings=[])
    from pyautoattack import AutoAttack
    from pyautoattack import checks as aa_checks

    aa_logger = logging.getLogger("auto-attack")
    handler = _Capture()
    saved_logger = (aa_logger.level, aa_logger.propagate)
    saved_trace = sys.gettrace()  # check_dynamic calls sys.settrace(None): keep coverage/debuggers
    with model_mode(model, False), _seeded(seed, x.device), _quiet_stdout("pyautoattack"):
        with torch.no_grad():
            logits0 = model(x[:1])
        n_classes = int(logits0.shape[1])
        if n_classes < 4 and (attacks is None or any(a in ("apgd-t", "fab-t") for a in attacks)):
            raise AdvrwError(f"model has {n_classes} classes: AutoAttack '{version}' (targeted DLR) "
                             "needs at least 4")
        _check_labels_in_range(y, n_classes)
        clean_pred = _predict(model, x, batch_size)
        # check_dynamic's call counter is a module global never reset: one dynamic model would
        # otherwise make every later run warn
        for key in aa_checks.funcs:
            aa_checks.funcs[key] = 0
        aa_logger.addHandler(handler)
        aa_logger.setLevel(logging.DEBUG)
        aa_logger.propagate = False  # our handler re-logs under advrw's logger instead
        try:
            adversary = AutoAttack(model, eps=float(eps), norm=norm, seed=int(seed),
                                   version=version, device=x.device)
            n_targets = min(9, n_classes - 1)
            capped = adversary.apgd_targeted.n_target_classes > n_targets or adversary.fab.n_target_classes > n_targets
            adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, n_targets)
            adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, n_targets)
            if attacks is not None:  # the standard budgets, then only the chosen stages
                adversary.attacks_to_run = list(attacks)
                adversary.version = "custom"
            if apgd_restarts is not None:
                adversary.apgd.n_restarts = int(apgd_restarts)
            attacks = list(adversary.attacks_to_run)
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=int(batch_size))
        finally:
            aa_logger.removeHandler(handler)
            aa_logger.setLevel(saved_logger[0])
            aa_logger.propagate = saved_logger[1]
            sys.settrace(saved_trace)
        x_adv, robust, n_bad, notes = _finalize(model, x, y, x_adv, eps=float(eps), norm=norm,
                                                batch_size=int(batch_size), clean_pred=clean_pred,
                                                tag="AutoAttack")

    n = x.shape[0]
    clean_acc = float((clean_pred == y).double().mean())
    per_attack = _per_attack(handler.records, attacks, n, int((clean_pred == y).sum()), clean_acc)
    warnings = [r.getMessage() for r in handler.records if r.levelno >= logging.WARNING] + notes
    protocol = {
        "attack": "autoattack",
        "library": "pyautoattack",
        "library_version": _lib_version("pyautoattack"),
        "version": version,
        "attacks": attacks,
        "n_iter": int(adversary.apgd.n_iter),
        "restarts": {"apgd-ce": int(adversary.apgd.n_restarts),
                     "apgd-t": int(adversary.apgd_targeted.n_restarts),
                     "fab-t": int(adversary.fab.n_restarts),
                     "square": int(adversary.square.n_restarts)},
        "target_classes": {"apgd-t": int(adversary.apgd_targeted.n_target_classes),
                           "fab-t": int(adversary.fab.n_target_classes)},
        "target_classes_capped": bool(capped),
        "square_queries": int(adversary.square.n_queries),
        "square_p_init": float(adversary.square.p_init),
        "fab_n_iter": int(adversary.fab.n_iter),
        "eps": float(eps),
        "norm": norm,
        "seed": int(seed),
        "n": n,
        "batch_size": int(batch_size),
        "n_invalid": n_bad,
    }
    return AutoAttackResult(x_adv=x_adv, robust=robust, robust_accuracy=float(robust.double().mean()),
                            clean_accuracy=clean_acc, protocol=protocol, per_attack=per_attack,
                            warnings=warnings)


def _check_labels_in_range(y: torch.Tensor, n_classes: int) -> None:
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise AdvrwError(f"y has values in [{int(y.min())}, {int(y.max())}]: the model has "
                         f"{n_classes} classes, so labels must lie in [0, {n_classes - 1}]")


def _per_attack(records, attacks: list[str], n: int, n_clean: int, clean_acc: float) -> dict:
    """Robust accuracy after each cascade stage from the exact per-batch success counts."""
    fooled = {a: 0 for a in attacks}
    for r in records:
        m = _PROGRESS.match(r.getMessage())
        if m and m.group(1) in fooled:
            fooled[m.group(1)] += int(m.group(2))
    out = {"clean": clean_acc}
    remaining = n_clean
    for a in attacks:  # a stage skipped because nothing was left keeps the previous value
        remaining -= fooled[a]
        out[a] = max(remaining, 0) / n
    return out


# --------------------------------------------------------------------------- torchattacks black-box

def _run_torchattacks(model, x, y, *, attack, eps, norm, seed, batch_size, protocol, tag):
    if x.shape[0] == 0:
        return _empty(AttackResult, x, dict(protocol, eps=float(eps), norm=norm, seed=int(seed),
                                            batch_size=int(batch_size), library="torchattacks",
                                            library_version=_lib_version("torchattacks")))
    with model_mode(model, False), _seeded(seed, x.device), _quiet_stdout("torchattacks"):
        clean_pred = _predict(model, x, batch_size)
        attack.set_device(x.device)
        chunks = []
        for i in range(0, x.shape[0], batch_size):
            chunks.append(attack(x[i:i + batch_size], y[i:i + batch_size]).detach())
        x_adv, robust, n_bad, _ = _finalize(model, x, y, torch.cat(chunks), eps=float(eps), norm=norm,
                                            batch_size=batch_size, clean_pred=clean_pred, tag=tag)
    protocol = dict(protocol, eps=float(eps), norm=norm, seed=int(seed), n=int(x.shape[0]),
                    batch_size=int(batch_size), n_invalid=n_bad, library="torchattacks",
                    library_version=_lib_version("torchattacks"))
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
    _check_positive("n_queries", n_queries, integer=True)
    _check_positive("n_restarts", n_restarts, integer=True)
    _check_positive("seed", seed, integer=True, allow_zero=True)
    if not (isinstance(p_init, (int, float)) and 0 < p_init <= 1):
        raise AdvrwError(f"p_init={p_init!r} is invalid: must be in (0, 1]")
    x, y = _prepare(x, y, eps, batch_size)
    import torchattacks

    with _quiet_stdout("torchattacks"):
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
        _check_positive(name, v)
    for name, v in (("nb_iter", nb_iter), ("nb_sample", nb_sample), ("max_batch_size", max_batch_size)):
        _check_positive(name, v, integer=True)
    _check_positive("seed", seed, integer=True, allow_zero=True)
    x, y = _prepare(x, y, eps, batch_size)
    import torchattacks

    with _quiet_stdout("torchattacks"):
        atk = torchattacks.SPSA(model, eps=float(eps), delta=float(delta), lr=float(lr),
                                nb_iter=int(nb_iter), nb_sample=int(nb_sample),
                                max_batch_size=int(max_batch_size))
    protocol = {"attack": "spsa", "delta": float(delta), "lr": float(lr), "nb_iter": int(nb_iter),
                "nb_sample": int(nb_sample), "max_batch_size": int(max_batch_size)}
    return _run_torchattacks(model, x, y, attack=atk, eps=eps, norm="Linf", seed=seed,
                             batch_size=int(batch_size), protocol=protocol, tag="SPSA")


# --------------------------------------------------------------------------- FMN (optional)

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
    _check_positive("steps", steps, integer=True)
    _check_positive("seed", seed, integer=True, allow_zero=True)
    x, y = _prepare(x, y, eps, batch_size)
    if x.shape[0] == 0:
        return _empty(AttackResult, x, {"attack": "fmn", "steps": int(steps), "eps": float(eps),
                                        "norm": norm, "seed": int(seed), "batch_size": int(batch_size),
                                        "library": "foolbox", "library_version": _lib_version("foolbox")})
    import foolbox

    with model_mode(model, False), _seeded(seed, x.device), _quiet_stdout("foolbox"):
        clean_pred = _predict(model, x, batch_size)
        fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
        atk = getattr(foolbox.attacks, classes[norm])(steps=int(steps))
        chunks = []
        for i in range(0, x.shape[0], batch_size):
            _, clipped, _ = atk(fmodel, x[i:i + batch_size], y[i:i + batch_size], epsilons=float(eps))
            chunks.append(clipped.detach())
        x_adv, robust, n_bad, _ = _finalize(model, x, y, torch.cat(chunks), eps=float(eps), norm=norm,
                                            batch_size=batch_size, clean_pred=clean_pred, tag="FMN")
    protocol = {"attack": "fmn", "steps": int(steps), "eps": float(eps), "norm": norm, "seed": int(seed),
                "n": int(x.shape[0]), "batch_size": int(batch_size), "n_invalid": n_bad,
                "library": "foolbox", "library_version": _lib_version("foolbox")}
    return AttackResult(x_adv=x_adv, robust=robust, robust_accuracy=float(robust.double().mean()),
                        clean_accuracy=float((clean_pred == y).double().mean()), protocol=protocol)
