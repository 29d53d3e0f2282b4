"""``python -m advrw.eval ckpt=...``: the evaluation suite on any checkpoint.

An advrw checkpoint carries its resolved config: its ``dataset`` and ``model`` are used unless
the command line selects or changes them (``model=``, ``dataset.root=`` ...). A plain
``state_dict`` (a released model) is evaluated with the ``model=`` and ``dataset=`` given.
Results, figures and W&B records go to this evaluation's own run dir.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from advrw import checkpoint as ckpt_io
from advrw import hardware
from advrw.config import git_commit, resolve_device, seed_everything, validate_eval
from advrw.cli import CONF_DIR
from advrw.errors import AdvrwError
from advrw.runlog import RunLog, write_json

log = logging.getLogger("advrw.eval")


def checkpoint_path(ckpt: str, kind: str) -> Path:
    p = Path(str(ckpt)).expanduser()
    if p.is_dir():
        p = p / f"{kind}.pt"
    if not p.is_file():
        raise AdvrwError(f"ckpt={ckpt} does not exist" + (f" (looked for {p})" if p != Path(str(ckpt)) else ""))
    return p


def _cli_touched(group: str) -> bool:
    if not HydraConfig.initialized():
        return False
    return any(o.lstrip("+~").split("=")[0].split(".")[0] == group for o in HydraConfig.get().overrides.task)


def effective_config(cfg: DictConfig, saved: dict | None) -> DictConfig:
    """Take dataset/model from the checkpoint's config unless the command line changed them."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    if saved and "config" in saved:
        for group in ("dataset", "model"):
            if not _cli_touched(group) and group in saved["config"]:
                cfg[group] = saved["config"][group]
    return cfg


def run(cfg: DictConfig, run_dir: Path) -> dict:
    from advrw.data import build_data
    from advrw.models import build_model
    from advrw.report import write_report
    from advrw.suite import run_suite

    path = checkpoint_path(cfg.ckpt, cfg.eval.checkpoint)
    obj = ckpt_io.read(path)
    is_advrw = "config" in obj and "model" in obj
    cfg = effective_config(cfg, obj if is_advrw else None)
    validate_eval(cfg)
    device = resolve_device(cfg.device)
    seed_everything(int(cfg.eval.seed), False)
    data = build_data(cfg.dataset, device)
    n_eval = cfg.eval.n_eval or len(data.test_y)
    if n_eval > len(data.test_y):
        raise AdvrwError(f"eval.n_eval={n_eval} is larger than the test set ({len(data.test_y)} examples)")
    norm = (data.mean, data.std) if cfg.dataset.get("normalize") else (None, None)
    model = build_model(cfg.model.name, data.num_classes, in_channels=data.channels, image_size=data.image_size,
                        mean=norm[0], std=norm[1])
    ckpt_io.load_model_state(model, ckpt_io.model_state(obj), str(path), cfg.model.name, data.num_classes)
    model.to(device).eval()
    kind = path.stem if path.stem in ("best", "last") else "state_dict" if not is_advrw else "checkpoint"
    config = OmegaConf.to_container(cfg, resolve=True)
    info = {"git_commit": git_commit(), "command": " ".join(sys.argv), "checkpoint": str(path),
            "checkpoint_kind": kind, "epoch": obj.get("epoch") if is_advrw else None,
            "runtime": hardware.eval_runtime(device)}
    write_json(run_dir / "run_info.json", info)
    logger_cfg = dict(config["logger"])
    logger_cfg["dir"] = logger_cfg.get("dir") or str(run_dir)
    if logger_cfg.get("name") == "wandb":
        logger_cfg["group"] = f"eval-{cfg.eval.name}"
    runlog = RunLog(run_dir, logger_cfg, {**config, "run_info": info}, name=f"eval-{run_dir.name}")
    x = data.test_x[:n_eval].float().div_(255)
    y = data.test_y[:n_eval]
    log.info("evaluating %s (%s, epoch %s) with eval=%s on %d %s test images, eps %.4g", path, kind,
             info["epoch"], cfg.eval.name, n_eval, cfg.dataset.name, cfg.eval.eps)
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    results, arrays = run_suite(model, x, y, ev, num_classes=data.num_classes, progress=bool(cfg.progress))
    results["protocol"].update({"checkpoint": {"path": str(path), "kind": kind, "epoch": info["epoch"]},
                                "model": cfg.model.name, "dataset": cfg.dataset.name, "split": "test",
                                "eval": cfg.eval.name, "runtime": info["runtime"]})
    if is_advrw:
        tc = obj["config"]
        results["protocol"].update({"defense": tc["defense"]["name"], "weighting": tc["weighting"]["name"],
                                    "train_seed": tc.get("seed"),
                                    "train_runtime": (obj.get("run_info") or {}).get("runtime")})
    write_report(run_dir, results, arrays, data.classes, runlog, plots=bool(cfg.eval.plots))
    runlog.finish()
    return results


def _validate_cli(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise AdvrwError("ckpt is required: ckpt=<run dir or .pt file>")
    validate_eval(cfg)


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        results = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except AdvrwError as err:  # one line for the user, nothing else (no traceback, no log echo)
        print(f"advrw: error: {err}", file=sys.stderr)
        sys.exit(2)
    return results.get("worst_case", {}).get("robust_accuracy")


def main() -> None:
    from advrw.cli import precheck

    precheck("eval", _validate_cli)
    _hydra_main()


if __name__ == "__main__":
    main()
