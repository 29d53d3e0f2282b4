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

from advrw.config import CONF_DIR
from advrw.core.errors import AdvrwError
from advrw.core.keys import hydra_only, override_key

log = logging.getLogger("advrw.eval")


def checkpoint_path(ckpt: str, kind: str) -> Path:
    from advrw.core import checkpoints as ckpt_io  # deferred: torch (tab completion imports this module)

    p = Path(str(ckpt)).expanduser()
    if p.is_dir():
        p = p / f"{kind}.pt"
    if not p.is_file():
        raise AdvrwError(ckpt_io.missing(ckpt, p))
    return p


def effective_config(cfg: DictConfig, saved: dict | None) -> DictConfig:
    """Dataset/model from the checkpoint's config; ``dataset.*``/``model.*`` overrides apply on top.

    A group selection (``dataset=svhn``) replaces the checkpoint's choice; a key override
    (``dataset.root=<moved archive>``) only changes that key of the checkpoint's dataset.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    if not (saved and "config" in saved):
        return cfg
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    for group in ("dataset", "model"):
        if group not in saved["config"] or any(override_key(o) == group for o in overrides):
            continue
        merged = OmegaConf.create(saved["config"][group])
        for o in overrides:
            key = override_key(o)
            if key.startswith(group + "."):
                OmegaConf.update(merged, key[len(group) + 1:], OmegaConf.select(cfg, key), force_add=True)
        cfg[group] = merged
    _whole_test_split(cfg, saved["config"], overrides)
    trained = bool(saved["config"].get("dataset", {}).get("normalize", False))
    now = bool(cfg.dataset.get("normalize", False))
    if trained != now:
        raise AdvrwError(f"the checkpoint was trained with dataset.normalize={str(trained).lower()} (a mean/std layer "
                         f"{'inside' if trained else 'not in'} the model) but this evaluation sets "
                         f"dataset.normalize={str(now).lower()}: drop the override or set "
                         f"dataset.normalize={str(trained).lower()}")
    return cfg


def _whole_test_split(cfg: DictConfig, trained: dict, overrides: list[str]) -> None:
    """Score the whole test split unless told otherwise: a training run's ``dataset.n_test`` subset (a
    quick check's 200 images) is not inherited silently, and the choice is said either way."""
    n_test = (trained.get("dataset") or {}).get("n_test")
    if any(override_key(o) in ("dataset", "dataset.n_test") for o in overrides) or n_test is None:
        return
    if cfg.dataset.get("name") == "synthetic":  # its n_test is the size of the generated test split itself
        return
    cfg.dataset.n_test = None
    log.info("scoring the whole test split (the run trained with dataset.n_test=%s; set dataset.n_test=%s "
             "to score that subset instead)", n_test, n_test)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    # deferred below: torch and the data/model/attack stack, so --help and tab completion answer at once
    from advrw.config.validation import validate_eval  # deferred: torch (see above)
    from advrw.core import checkpoints as ckpt_io  # deferred: torch
    from advrw.core import hardware  # deferred: torch
    from advrw.core.files import write_json  # deferred: torch
    from advrw.core.hardware import resolve_device, seed_everything  # deferred: torch
    from advrw.data import build_data, subsets  # deferred: torch
    from advrw.evaluation import bestlast  # deferred: torch
    from advrw.evaluation.results import write_report  # deferred: torch
    from advrw.evaluation.suite import run_suite  # deferred: torch
    from advrw.models import build_model  # deferred: torch
    from advrw.records.identity import eval_logger_settings  # deferred: torch
    from advrw.records.provenance import git_state, job_command  # deferred: torch
    from advrw.records.runlog import RunLog  # deferred: torch

    both = cfg.eval.checkpoint == "both"  # best.pt and last.pt of a run dir (advrw/evaluation/bestlast.py)
    path = (checkpoint_path(bestlast.run_dir_for_both(cfg.ckpt), "last") if both
            else checkpoint_path(cfg.ckpt, cfg.eval.checkpoint))
    obj = ckpt_io.read(path)
    is_advrw = "config" in obj and "model" in obj
    cfg = effective_config(cfg, obj if is_advrw else None)
    validate_eval(cfg)
    device = resolve_device(cfg.device)
    seed_everything(int(cfg.eval.seed), False)
    data = build_data(cfg.dataset, device)
    idx, picked = subsets.eval_subset(data.test_y, cfg.eval)
    n_eval = len(idx)
    norm = (data.mean, data.std) if cfg.dataset.get("normalize") else (None, None)
    model = build_model(cfg.model.name, data.num_classes, in_channels=data.channels, image_size=data.image_size,
                        mean=norm[0], std=norm[1])
    ckpt_io.load_model_state(model, ckpt_io.model_state(obj), str(path), cfg.model.name, data.num_classes)
    model.to(device).eval()
    kind = path.stem if path.stem in ("best", "last") else "state_dict" if not is_advrw else "checkpoint"
    config = OmegaConf.to_container(cfg, resolve=True)
    git = git_state()
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    info = {"git_commit": git["commit"], "git_dirty": git["dirty"], "git_diff_sha1": git["diff_sha1"],
            "command": job_command("advrw.eval", overrides), "checkpoint": str(path.resolve()),
            "checkpoint_kind": kind, "epoch": obj.get("epoch") if is_advrw else None,
            "runtime": hardware.eval_runtime(device)}
    write_json(run_dir / "run_info.json", info)
    logger_cfg, run_name, link = eval_logger_settings(config["logger"], config, run_dir, obj if is_advrw else None)
    runlog = RunLog(run_dir, logger_cfg, {**config, **link, "run_info": info}, name=run_name)
    x = data.test_x[idx.to(data.test_x.device)].float().div_(255)
    y = data.test_y[idx.to(data.test_y.device)]
    log.info("evaluating %s (%s, epoch %s) with eval=%s on %d %s test images, eps %.4g", path, kind,
             info["epoch"], cfg.eval.name, n_eval, cfg.dataset.name, cfg.eval.eps)
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    def load(p):
        if not both:  # the one checkpoint is in the model already
            return obj
        state = ckpt_io.read(p)  # the model holds one checkpoint at a time
        ckpt_io.load_model_state(model, ckpt_io.model_state(state), str(p), cfg.model.name, data.num_classes)
        return state

    def protocol_of(kind, p, state):
        out = {"checkpoint": bestlast.protocol(kind, p, state) if is_advrw else
               {"path": str(Path(p).resolve()), "kind": kind, "epoch": info["epoch"]},
               "model": cfg.model.name, "dataset": cfg.dataset.name, "split": "test", "eval": cfg.eval.name,
               "subsets": {**data.subsets, "eval": picked}, "runtime": info["runtime"]}
        if is_advrw:
            tc = state["config"]
            out.update({"defense": tc["defense"]["name"], "weighting": tc["weighting"]["name"],
                        "train_seed": tc.get("seed"), "minimizer": tc.get("minimizer", {}).get("name", "sgd"),
                        "train_runtime": (state.get("run_info") or {}).get("runtime")})
        return out

    checkpoints = [(k, path.parent / f"{k}.pt") for k in bestlast.kinds("both")] if both else [(kind, path)]
    results, arrays = bestlast.score(
        checkpoints, load,
        lambda: run_suite(model, x, y, ev, num_classes=data.num_classes, progress=bool(cfg.progress)), protocol_of)
    write_report(run_dir, results, arrays, data.classes, runlog, plots=bool(cfg.eval.plots))
    runlog.finish()
    return results


def _validate_cli(cfg: DictConfig) -> None:
    from advrw.config.validation import validate_eval  # deferred: torch (tab completion imports this module)

    if OmegaConf.is_missing(cfg, "ckpt"):
        raise AdvrwError("ckpt is required: ckpt=<run dir or .pt file>")
    validate_eval(cfg)


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        results = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except AdvrwError as err:  # one line for the user, nothing else (no traceback, no log echo)
        from advrw.config.precheck import remove_stray_run_dir  # deferred: torch (see main)

        print(f"advrw: error: {err}", file=sys.stderr)
        out = Path(HydraConfig.get().runtime.output_dir)
        remove_stray_run_dir(out)
        if out.parent.name == "eval" and not out.exists():  # <run>/eval/ made for this evaluation alone
            try:
                out.parent.rmdir()
            except OSError:  # other evaluations live there
                pass
        sys.exit(2)
    return results.get("worst_case", {}).get("robust_accuracy")


def main() -> None:
    if not hydra_only(sys.argv[1:]):  # --help / tab completion: Hydra answers, nothing to check
        from advrw.config.precheck import precheck  # deferred: torch (validation imports the attacks)

        precheck("eval", _validate_cli)
    _hydra_main()


if __name__ == "__main__":
    # Call the importable module's copy: joblib/submitit launchers then pickle the task function by
    # reference (a function of ``__main__`` is pickled by value and drags unpicklable torch globals).
    from advrw.eval import main as _main

    _main()
