"""The evaluation attacks, one entry per ``eval.attacks.<name>.kind``: defaults, rules, protocol, run.

The suite is a loop over this table, and the config validator checks every attack spec with
:func:`validate` (rules live here, next to the attacks). ``white_box`` kinds run on the shared PGD
engine (the suite batches them itself, so training's per-epoch check can reuse the same path);
the others call ``run(model, x, y, spec, eps, batch_size=, seed=)`` -> an ``AttackResult``.
``protocol(spec, eps)`` gives a white-box attack's budget fields; the library adapters record
their own protocol, which ``trim`` (when set) narrows to what the kind reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from advrw.attacks import autoattack, blackbox, fmn, mde
from advrw.attacks.engine import INITS, check_budget
from advrw.attacks.objectives import OBJECTIVES
from advrw.core.errors import AdvrwError
from advrw.core.keys import as_list

# A rule is ``(key, kind, bounds)``: kind "int" / "number" with {gt, ge, le} bounds, or "choice" with options.
Rule = tuple


@dataclass(frozen=True)
class AttackKind:
    name: str
    defaults: dict
    rules: tuple = ()
    white_box: bool = False
    run: Callable | None = None  # library attacks
    protocol: Callable[[dict, float], dict] | None = None  # white-box budgets
    relations: Callable[[str, dict, float], None] | None = None  # checks between keys
    trim: Callable[[dict], dict] | None = None  # a library protocol narrowed to this kind's fields
    cascade: bool = False  # results carry ``per_attack`` (robust accuracy after each stage)
    meta: dict = field(default_factory=dict)


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _check_rule(where: str, key: str, kind: str, bounds, v: Any) -> None:
    if kind == "choice":
        if not isinstance(v, str) or v not in bounds:
            raise AdvrwError(f"{where}.{key}={_show(v)} is unknown: choose one of {', '.join(bounds)}")
        return
    integer = kind == "int"
    text = " and ".join(f"{op} {b}" for op, b in ((">", bounds.get("gt")), (">=", bounds.get("ge")),
                                                  ("<=", bounds.get("le"))) if b is not None)
    allowed = ("an integer " if integer else "a finite number ") + text
    typed = (isinstance(v, int) if integer else isinstance(v, (int, float)) and math.isfinite(v)) \
        and not isinstance(v, bool)
    in_range = typed and all(ok for ok in (bounds.get("gt") is None or v > bounds["gt"],
                                           bounds.get("ge") is None or v >= bounds["ge"],
                                           bounds.get("le") is None or v <= bounds["le"]))
    if not in_range:
        raise AdvrwError(f"{where}.{key}={_show(v)} is invalid: must be {allowed}")


# ------------------------------------------------------------------------------- white-box (engine)

def _pgd_protocol(spec: dict, eps: float) -> dict:
    proto = {"attack": "pgd", "objective": spec["objective"], "eps": eps, "steps": int(spec["steps"]),
             "step": float(spec["step"]), "restarts": int(spec["restarts"]), "init": spec["init"]}
    if proto["objective"] == "scaled_ce":
        proto["scale"] = float(spec["scale"])
    if proto["objective"] == "weighted_ce":
        proto["alpha"] = float(spec["alpha"])
    if int(spec["eot"]) > 1:  # Expectation over Transformation (randomised models)
        proto["eot"] = int(spec["eot"])
    return proto


def _fgsm_protocol(spec: dict, eps: float) -> dict:
    return {"attack": "fgsm", "eps": eps, "steps": 1, "step": eps, "restarts": 1, "init": "none"}


def _pgd_relations(where: str, spec: dict, eps: float) -> None:
    check_budget(eps, spec["step"], spec["steps"], spec["init"], prefix=where)


# ------------------------------------------------------------------------------- library adapters

def _run_autoattack(model, x, y, spec, eps, *, batch_size, seed):
    return autoattack.run_autoattack(model, x, y, eps=eps, version=spec["version"], seed=seed, batch_size=batch_size)


def _run_apgd_ce(model, x, y, spec, eps, *, batch_size, seed):  # AutoAttack's first stage, its own budget
    res = autoattack.run_autoattack(model, x, y, eps=eps, seed=seed, batch_size=batch_size, attacks=["apgd-ce"],
                                    apgd_restarts=int(spec["restarts"]))
    res.per_attack = {}
    return res


_APGD_KEYS = ("library", "library_version", "attacks", "n_iter", "norm", "batch_size", "n_invalid")


def _trim_apgd(proto: dict) -> dict:
    return {**{k: proto[k] for k in _APGD_KEYS if k in proto}, "loss": "ce",
            "restarts": proto["restarts"]["apgd-ce"] if isinstance(proto.get("restarts"), dict) else proto.get("restarts")}


def _run_mde(model, x, y, spec, eps, *, batch_size, seed):
    return mde.run_mde(model, x, y, eps=eps, steps=int(spec["steps"]), change_point=int(spec["change_point"]),
                       n_target_classes=int(spec["n_target_classes"]), stages=spec["stages"], seed=seed,
                       batch_size=batch_size)


def _mde_relations(where: str, spec: dict, eps: float) -> None:
    if spec["change_point"] >= spec["steps"] or spec["steps"] < 2:
        raise AdvrwError(f"{where}.change_point={spec['change_point']} is invalid: must be < steps "
                         f"({spec['steps']}), and steps >= 2")
    stages = as_list(spec["stages"])
    if not stages or any(s not in mde.STAGES for s in stages):
        raise AdvrwError(f"{where}.stages={stages} is invalid: choose from {', '.join(mde.STAGES)}")


def _run_square(model, x, y, spec, eps, *, batch_size, seed):
    return blackbox.run_square(model, x, y, eps=eps, n_queries=int(spec["n_queries"]), p_init=float(spec["p_init"]),
                               seed=seed, batch_size=batch_size)


def _run_spsa(model, x, y, spec, eps, *, batch_size, seed):  # nb_sample forwards per image per step: small batches
    return blackbox.run_spsa(model, x, y, eps=eps, delta=float(spec["delta"]), lr=float(spec["lr"]),
                             nb_iter=int(spec["nb_iter"]), nb_sample=int(spec["nb_sample"]),
                             max_batch_size=int(spec["max_batch_size"]), batch_size=int(spec["batch_size"]), seed=seed)


def _run_fmn(model, x, y, spec, eps, *, batch_size, seed):
    return fmn.run_fmn(model, x, y, eps=eps, steps=int(spec["steps"]), batch_size=batch_size, seed=seed)


_INT1 = {"ge": 1}
KINDS: dict[str, AttackKind] = {k.name: k for k in (
    AttackKind("fgsm", {}, white_box=True, protocol=_fgsm_protocol),
    AttackKind("pgd", {"objective": "ce", "restarts": 1, "init": "uniform", "scale": 10.0, "alpha": 1.0, "eot": 1},
               rules=(("steps", "int", _INT1), ("step", "number", {"gt": 0}), ("restarts", "int", _INT1),
                      ("eot", "int", _INT1),
                      ("init", "choice", INITS), ("objective", "choice", tuple(OBJECTIVES)),
                      ("scale", "number", {"gt": 0}), ("alpha", "number", {"ge": 0})),
               white_box=True, protocol=_pgd_protocol, relations=_pgd_relations),
    AttackKind("autoattack", {"version": "standard"}, rules=(("version", "choice", ("standard", "plus", "rand")),),
               run=_run_autoattack, cascade=True),
    AttackKind("apgd_ce", {"restarts": 1}, rules=(("restarts", "int", _INT1),), run=_run_apgd_ce, trim=_trim_apgd),
    AttackKind("mde", dict(mde.DEFAULTS),
               rules=(("steps", "int", _INT1), ("change_point", "int", _INT1), ("n_target_classes", "int", _INT1)),
               run=_run_mde, relations=_mde_relations, cascade=True),
    AttackKind("square", {"n_queries": 5000, "p_init": 0.8},
               rules=(("n_queries", "int", _INT1), ("p_init", "number", {"gt": 0, "le": 1})), run=_run_square),
    AttackKind("spsa", {"nb_iter": 100, "delta": 0.001, "lr": 0.01, "nb_sample": 256, "batch_size": 32,
                        "max_batch_size": 64},
               rules=(("nb_iter", "int", _INT1), ("delta", "number", {"gt": 0}), ("lr", "number", {"gt": 0}),
                      ("nb_sample", "int", _INT1), ("batch_size", "int", _INT1), ("max_batch_size", "int", _INT1)),
               run=_run_spsa),
    AttackKind("fmn", {"steps": 100}, rules=(("steps", "int", _INT1),), run=_run_fmn),
)}
ATTACK_KINDS = tuple(KINDS)


def resolve(spec) -> tuple[AttackKind, dict]:
    """The kind of ``spec`` and the spec with that kind's defaults filled in."""
    spec = dict(spec)
    kind = KINDS[spec["kind"]]
    return kind, {**kind.defaults, **spec}


def white_box_protocol(spec, eps: float) -> dict:
    kind, full = resolve(spec)
    return kind.protocol(full, eps)


def validate(where: str, spec, eps: float) -> None:
    """One line for a bad ``eval.attacks.<name>`` spec: its kind, each key's type and range, relations."""
    kind_name = spec.get("kind")
    if kind_name not in KINDS:
        raise AdvrwError(f"{where}.kind={_show(kind_name)} is unknown: choose one of {', '.join(KINDS)}")
    kind, full = resolve(spec)
    for key, rule_kind, bounds in kind.rules:
        if key in spec:
            _check_rule(where, key, rule_kind, bounds, spec[key])
    if kind.relations is not None:
        kind.relations(where, full, eps)


def selected_attacks(ev) -> dict:
    """The preset's attacks, narrowed to ``eval.only`` when given (names checked by the validator)."""
    attacks = dict(ev.get("attacks") or {})
    only = as_list(ev.get("only"))
    return {k: v for k, v in attacks.items() if k in only} if only else attacks
