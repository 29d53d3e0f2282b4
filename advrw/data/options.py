"""Reading and checking ``dataset.*`` config values (an OmegaConf DictConfig or a plain dict)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from advrw.core.errors import AdvrwError


def get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.get(key, default)`` that also works for struct-mode configs and treats None as unset."""
    try:
        value = cfg.get(key, default)
    except (KeyError, AttributeError):
        value = default
    return default if value is None else value


def opt_int(cfg: Any, key: str, default: int | None, *, minimum: int, allow_none: bool = False) -> int | None:
    value = get(cfg, key, default)
    if value is None:
        if allow_none:
            return None
        raise AdvrwError(f"dataset.{key}=None is invalid: must be an integer >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, int):
        try:  # numpy integers and the like
            import numbers

            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise AdvrwError(
                f"dataset.{key}={value!r} is invalid: must be an integer >= {minimum}"
                + (" or null" if allow_none else "")
            ) from None
    if value < minimum:
        raise AdvrwError(
            f"dataset.{key}={value} is invalid: must be an integer >= {minimum}" + (" or null" if allow_none else "")
        )
    return value


def opt_bool(cfg: Any, key: str, default: bool | None) -> bool | None:
    value = get(cfg, key, default)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise AdvrwError(f"dataset.{key}={value!r} is invalid: must be true or false")
    return value


def opt_path(cfg: Any, key: str) -> Path | None:
    value = get(cfg, key, None)
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or str(value).strip() == "":
        raise AdvrwError(f"dataset.{key}={value!r} is invalid: must be a path")
    return Path(os.path.expanduser(str(value)))


def default_cache_dir() -> Path:
    """``$ADVRW_CACHE`` or ``~/.cache/advrw``."""
    env = os.environ.get("ADVRW_CACHE")
    return Path(os.path.expanduser(env)) if env else Path.home() / ".cache" / "advrw"


def default_data_root() -> Path:
    """Where torchvision data sets live when ``dataset.root`` is unset: ``$ADVRW_DATA`` or ``<cache>/data``."""
    env = os.environ.get("ADVRW_DATA")
    return Path(os.path.expanduser(env)) if env else default_cache_dir() / "data"
