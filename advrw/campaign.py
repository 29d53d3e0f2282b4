"""Campaign plumbing: resolvers for unique run dirs and debug presets, and the jobs of a sweep preset.

``${advrw_uid:}`` (``conf/hydra/default.yaml``) is a per-process unique suffix so runs started in
the same second never share a dir. It is registered with ``use_cache=True`` like Hydra's ``now``:
the value is cached in the config, so a sweep's jobs (and a submitit job re-created from its
pickled config on requeue) see the dir of the process that launched them.
"""

from __future__ import annotations

import functools
import secrets

from omegaconf import OmegaConf


@functools.lru_cache(maxsize=1)
def process_uid() -> str:
    """Six random hex digits, fixed for this process (not derived from the clock)."""
    return secrets.token_hex(3)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("advrw_uid"):
        OmegaConf.register_new_resolver("advrw_uid", process_uid, use_cache=True)
    if not OmegaConf.has_resolver("advrw_min"):  # debug=fast: burn-in min(paper's, 1)
        OmegaConf.register_new_resolver("advrw_min", lambda *xs: min(xs))


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def preset_sweep_params(config_dir: str, config_name: str, overrides: list[str]) -> list[str]:
    """``hydra.sweeper.params`` that the command line's ``sweep=`` preset sets, as override strings.

    Keys the command line also sets are dropped (Hydra's basic sweeper lets the command line win),
    so the caller can expand ``params + overrides`` into the same jobs Hydra will launch.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if not any(o.get_key_element() == "sweep" for o in parsed):
        return []
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=plain, return_hydra_config=True)
    GlobalHydra.instance().clear()
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    given = {_key(o) for o in overrides}
    return [f"{k}={v}" for k, v in params.items() if _key(str(k)) not in given]


def with_sweep_preset(config_dir: str, config_name: str, overrides: list[str], multirun: bool) -> list[str]:
    """The command line with its sweep preset's params in front (what Hydra's sweeper will expand)."""
    from advrw.errors import AdvrwError

    preset = next((o.split("=", 1)[1] for o in overrides if _key(o) == "sweep"), None)
    if preset in (None, "null"):
        return overrides
    if not multirun:
        raise AdvrwError(f"sweep={preset} launches a sweep: add -m (python -m advrw.{config_name} -m sweep={preset} ...)")
    return preset_sweep_params(config_dir, config_name, overrides) + overrides
