"""FAT (Zhang et al. 2020, friendly adversarial training): the early-stop budget ``tau`` and its schedule.

The early stop itself is a mode of the one PGD engine (``pgd(..., tau=...)``); this module holds
the only epoch-dependent piece -- the paper's "dynamic tau", which grows during training -- as a
pure function, and the validation of the keys issue 8's attack side adds (``attack.tau``,
``attack.tau_milestones``, ``attack.omega``, ``attack.clamp_start``, ``weighting.half_steps``).
"""

from __future__ import annotations

from advrw.core.errors import AdvrwError
from advrw.methods.weighting import HALF_STEPS


def tau_at_epoch(epoch: int, tau: int, milestones=()) -> int:
    """``tau`` plus one for every milestone the 1-indexed ``epoch`` has passed.

    FAT's public code (``--dynamictau``): tau 0 up to epoch 50, 1 up to 90, then 2 (milestones
    ``[50, 90]``); its TRADES variant uses ``[30, 50, 70]`` (0 -> 3). No milestones = fixed tau.
    """
    return int(tau) + sum(1 for m in milestones if epoch > m)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_attack(cfg) -> None:
    """One-line errors for the keys issue 8's attack side adds (called by config.validate_train):
    ``attack.{clamp_start,tau,tau_milestones,omega}`` and GAIRAT's ``weighting.half_steps``."""
    half = cfg.weighting.get("half_steps", "paper") if cfg.weighting.name == "gairat" else "paper"
    if half not in HALF_STEPS:
        raise AdvrwError(f"weighting.half_steps={half!r} is unknown: choose one of {', '.join(HALF_STEPS)}")
    if half == "code" and int(cfg.attack.steps) < 2:
        raise AdvrwError(f"weighting.half_steps=code needs attack.steps >= 2 (int(K/2) >= 1), got {cfg.attack.steps}")
    attack = cfg.attack
    clamp = attack.get("clamp_start", True)
    if not isinstance(clamp, bool):
        raise AdvrwError(f"attack.clamp_start={clamp!r} is invalid: choose true or false")
    tau = attack.get("tau")
    if tau is not None and (not _is_int(tau) or tau < 0):
        raise AdvrwError(f"attack.tau={tau!r} is invalid: must be an integer >= 0 (or null for plain PGD)")
    milestones = list(attack.get("tau_milestones") or [])
    if any(not _is_int(m) or m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise AdvrwError(f"attack.tau_milestones={milestones} is invalid: must be increasing epochs >= 1")
    if milestones and tau is None:
        raise AdvrwError("attack.tau_milestones needs attack.tau (the starting tau): set attack.tau or use attack=fat")
    omega = attack.get("omega", 0.0)
    if isinstance(omega, bool) or not isinstance(omega, (int, float)) or not omega >= 0:
        raise AdvrwError(f"attack.omega={omega!r} is invalid: must be a number >= 0")


def fat_spec_kwargs(attack) -> dict:
    """The ``StepSpec`` fields of the start / early-stop keys (absent keys: plain PGD, clamped start)."""
    tau = attack.get("tau")
    return {"clamp_start": bool(attack.get("clamp_start", True)), "tau": None if tau is None else int(tau),
            "tau_milestones": tuple(int(m) for m in (attack.get("tau_milestones") or ())),
            "omega": float(attack.get("omega", 0.0))}
