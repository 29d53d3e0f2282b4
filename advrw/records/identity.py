"""W&B identity: a run's name, group and job type from what it is, never from the clock or a job number."""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import OmegaConf

from advrw.core.keys import override_key, without

_MODEL_SHORT = {"resnet18": "rn18", "resnet50": "rn50", "preact_resnet18": "prn18", "wrn34_10": "wrn34-10",
                "wrn28_10": "wrn28-10", "wrn32_10": "wrn32-10"}


def base_name(config: dict) -> str:
    """``vir-at-cifar10-rn18``: scheme (if any), defense, data set, model."""
    w = (config.get("weighting") or {}).get("name")
    parts = [w] if w and w != "none" else []
    parts += [(config.get("defense") or {}).get("name"), (config.get("dataset") or {}).get("name")]
    model = (config.get("model") or {}).get("name")
    parts.append(_MODEL_SHORT.get(model, model))
    return "-".join(str(p) for p in parts if p)


def swept_overrides(task_overrides: list[str], sweep_overrides: list[str]) -> list[str]:
    """This job's values of the keys its sweep varies (``weighting.gamma=3``), seed and base-name keys left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(sweep_overrides)
    except Exception:
        return []
    swept = {o.get_key_element().split("@")[0] for o in parsed if o.is_sweep_override()}
    swept -= {"seed", "weighting", "defense", "dataset", "model", "experiment"}  # already in the base name
    out = []
    for o in task_overrides:
        key = override_key(o)
        if key in swept:
            out.append(f"{key.split('.')[-1]}={o.split('=', 1)[1]}")
    return out


def config_hash(config: dict) -> str:
    import hashlib
    import json

    blob = json.dumps(without(config), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:6]


def wandb_identity(config: dict, swept: list[str] | None = None) -> dict:
    """name ``vir-at-cifar10-rn18-s0[-gamma=3]``; group = the same without the seed plus a hash of the
    config without its seed (so ``gamma=3`` and ``gamma=10`` are separate groups, seeds share one)."""
    base = base_name(config) + "".join(f"-{s}" for s in swept or [])
    return {"name": f"{base}-s{config.get('seed')}", "group": f"{base}-{config_hash(config)}"}


def hydra_swept() -> list[str]:
    """The swept overrides of the current Hydra job (empty outside a multirun)."""
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return []
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return []
    sweep_ovs = [f"{k}={v}" for k, v in (hc.sweeper.get("params") or {}).items()]
    multirun_yaml = Path(str(hc.sweep.dir)) / "multirun.yaml"  # the launcher's copy of the sweep command
    try:
        sweep_ovs += list(OmegaConf.load(multirun_yaml).hydra.overrides.task)
    except Exception:
        sweep_ovs += [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    return swept_overrides(list(hc.overrides.task), sweep_ovs)


def wandb_config(config: dict) -> dict:
    """The config W&B shows, as it ran: ``weighting.burn_in`` is only the paper's default for
    ``schedule.burn_in`` (the one the loop reads; ``debug=fast`` shortens it), so it shows that value."""
    out = copy.deepcopy(config)
    w, s = out.get("weighting"), out.get("schedule")
    if isinstance(w, dict) and isinstance(s, dict) and "burn_in" in w and "burn_in" in s:
        w["burn_in"] = s["burn_in"]
    return out


def hydra_campaign() -> str | None:
    """The campaign of the current Hydra job: its sweep dir's name (``10-00-00-3fa2c1``), None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(str(HydraConfig.get().sweep.dir)).name


def campaign_tags(campaign: str | None, debug: str | None) -> list[str]:
    """``campaign-<sweep id>`` (filter a sweep's train, eval and report runs in W&B) and ``debug``."""
    return ([f"campaign-{campaign}"] if campaign else []) + (["debug"] if debug else [])


def logger_settings(logger_cfg: dict, config: dict, run_dir, job_type: str, identity: dict | None = None,
                    swept: list[str] | None = None, campaign: str | None = None,
                    debug: str | None = None) -> tuple[dict, str]:
    """The logger config an entry point hands to ``RunLog``, and the run name.

    ``identity`` (``{"id", "name", "group"}``) continues a known W&B run (a resume); otherwise
    name and group come from the config. User-set ``logger.group`` / ``logger.run_name`` win.
    ``campaign`` (the sweep's id) and ``debug`` (a ``debug=`` preset) add tags; a debug run's name
    ends in ``-debug`` so it never reads as a real run's.
    """
    cfg = dict(logger_cfg)
    cfg["dir"] = cfg.get("dir") or str(run_dir)
    cfg["job_type"] = job_type
    derived = identity or wandb_identity(config, swept)
    cfg["group"] = cfg.get("group") or derived["group"]
    if identity and identity.get("id"):
        cfg["id"] = identity["id"]
    if cfg.get("tags") is None:
        cfg["tags"] = [(config.get(g) or {}).get("name") for g in ("defense", "weighting", "dataset", "model")
                       if isinstance(config.get(g), dict)]
    cfg["tags"] = [*cfg["tags"], *(t for t in campaign_tags(campaign, debug) if t not in cfg["tags"])]
    name = cfg.get("run_name") or derived["name"]
    if debug and not name.endswith("-debug"):
        name += "-debug"
    return cfg, name


def eval_logger_settings(logger_cfg: dict, config: dict, run_dir, checkpoint: dict | None) -> tuple[dict, str, dict]:
    """W&B settings of an evaluation: ``job_type=eval`` in the training run's group, named after it.

    A separate run rather than a resume of the training run: offline runs are synced one dir at a
    time, several evaluations of one checkpoint may run at once, and a resumed (finished) run would
    have its history and summary mixed with another protocol's numbers. The training run's id and
    name go into this run's config (``train_run``), so the two are linked both ways by group and id.
    Returns (logger config, run name, extra config).
    """
    eval_name = (config.get("eval") or {}).get("name", "eval")
    if checkpoint is not None and "config" in checkpoint:
        train = checkpoint.get("wandb") or wandb_identity(checkpoint["config"])
        identity = {"name": f"{train['name']}-eval-{eval_name}", "group": train["group"]}
        extra = {"train_run": {k: train.get(k) for k in ("id", "name", "group")}}
    else:
        base = base_name(config)
        identity = {"name": f"eval-{base}-{eval_name}", "group": f"eval-{base}"}
        extra = {}
    info = (checkpoint or {}).get("run_info") or {}
    campaign, debug = info.get("campaign"), ((checkpoint or {}).get("choices") or {}).get("debug")
    cfg, name = logger_settings(logger_cfg, config, run_dir, "eval", None, campaign=campaign, debug=debug)
    cfg["group"] = logger_cfg.get("group") or identity["group"]
    if logger_cfg.get("tags") is None and checkpoint is not None and "config" in checkpoint:
        cfg["tags"] = logger_settings({}, checkpoint["config"], run_dir, "eval", campaign=campaign, debug=debug)[0]["tags"]
    if campaign:
        extra["campaign"] = campaign
    name = logger_cfg.get("run_name") or identity["name"]
    return cfg, name + ("-debug" if debug and "-debug" not in name else ""), extra
