"""The rule makers every feature declares its config rules with, and :func:`check` that applies them.

A rule is ``rule(key, value)`` raising one-line :class:`AdvrwError` naming the key, the bad value and
what is allowed. Features keep their tables next to their code (``weighting.SCHEME_RULES``,
``defenses.DEFENSE_RULES``, ``data.checks.DATASET_RULES``); :mod:`advrw.config.validation` composes them.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from advrw.core.errors import AdvrwError

_ABSENT = object()

Rule = Callable[[str, Any], None]




def show(value: Any) -> str:
    """How a value appears in a message: strings quoted, numbers and lists as typed."""
    return repr(value) if isinstance(value, str) else str(value)


def suggest(word: str, candidates) -> str:
    """`` (did you mean X?)`` for the closest candidate, else ``''``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _bounds(gt=None, ge=None, lt=None, le=None) -> str:
    parts = [f"> {gt}" if gt is not None else "", f">= {ge}" if ge is not None else "",
             f"< {lt}" if lt is not None else "", f"<= {le}" if le is not None else ""]
    return " and ".join(p for p in parts if p)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(*, gt=None, ge=None, lt=None, le=None, null=False, integer=False) -> Rule:
    """A finite number (an int with ``integer``) inside the bounds; None only with ``null``."""
    what = ("an integer" if integer else "a finite number")
    bounds = _bounds(gt, ge, lt, le)
    allowed = what + (f" {bounds}" if bounds else "") + (" or null" if null else "")

    def rule(key, v):
        if v is None and null:
            return
        typed = isinstance(v, int) and not isinstance(v, bool) if integer else _is_number(v) and math.isfinite(v)
        if not typed:
            raise AdvrwError(f"{key}={show(v)} is invalid: must be {allowed}")
        if not ((gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt)
                and (le is None or v <= le)):  # the right type, out of range: the bounds say it
            raise AdvrwError(f"{key}={show(v)} is invalid: must be {allowed if integer else bounds}")
    return rule


def integer(**bounds) -> Rule:
    return number(integer=True, **bounds)


def boolean(null=False) -> Rule:
    def rule(key, v):
        if not (isinstance(v, bool) or (null and v is None)):
            raise AdvrwError(f"{key}={show(v)} is invalid: must be true or false" + (" or null" if null else ""))
    return rule


def choice(*options) -> Rule:
    def rule(key, v):
        if not isinstance(v, (str, type(None))) or v not in options:
            raise AdvrwError(f"{key}={show(v)} is unknown: choose one of {', '.join(map(str, options))}"
                             + (suggest(v, options) if isinstance(v, str) else ""))
    return rule


def numbers(**bounds) -> Rule:
    """A number or a list of numbers (e.g. eval.alpha_test), each checked like ``number``."""
    one = number(**bounds)

    def rule(key, v):
        if OmegaConf.is_list(v) or isinstance(v, (list, tuple)):
            for x in v:
                one(key, x)
        elif v is not None:
            one(key, v)
    return rule


def value(cfg: DictConfig, key: str) -> Any:
    """``cfg``'s value at the dotted ``key`` (``_ABSENT`` when missing); unresolvable -> one line."""
    try:
        v = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except Exception as err:  # an interpolation that does not resolve, a ??? value
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AdvrwError(f"{key} cannot be read: {first}") from None
    return v


def check(cfg: DictConfig, rules, prefix: str = "") -> None:
    """Apply ``[(key, rule), ...]`` to ``cfg``; keys missing from ``cfg`` are skipped."""
    for key, rule in rules:
        v = value(cfg, key)
        if v is not _ABSENT:
            rule(prefix + key, v)
