"""One evaluation runner for both CLIs: the suite on the test split for the configured checkpoints.

``final_eval`` (the end of ``advrw.train``) and ``eval_checkpoint`` (``advrw.eval``, after it
merged the command line with the checkpoint's config) share the protocol record, the scoring of
last / best / both and the report, so the same checkpoint and eval config give a ``results.json``
with the same protocol structure from either CLI.

Each attack of the final evaluation is a resumable unit: after it finishes, its result (and what
the figures need) goes to ``final_eval.partial.json`` in the run dir (written whole) before
``between_attacks()`` runs (training's signal check). A resumed run reuses the units recorded for
the same eval config and checkpoint, so it continues from the first attack not done and ends with
the numbers and figures of an uninterrupted run. The file is removed once results.json is written.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf

from advrw.core import checkpoints as ckpt_io
from advrw.core import hardware
from advrw.core.errors import AdvrwError
from advrw.core.files import jsonable, write_json
from advrw.core.lock import RunLock
from advrw.data import build_data, subsets
from advrw.evaluation import bestlast
from advrw.evaluation.results import write_report
from advrw.evaluation.suite import run_suite
from advrw.methods import ema as weight_avg
from advrw.methods.awp import spec_fields as awp_spec_fields
from advrw.models import build_model, zoo
from advrw.records.identity import eval_logger_settings
from advrw.records.provenance import git_state, job_command
from advrw.records.runlog import RunLog

log = logging.getLogger(__name__)
PARTIAL = "final_eval.partial.json"


@torch.no_grad()
def as_float(x_uint8):
    return x_uint8.float().div_(255)


def read_checkpoint(path: Path, trust: bool = False) -> dict:
    """Every checkpoint read of an evaluation goes through here (``ckpt_trust``: the one opt-out of
    weights_only, for files the user vouches for)."""
    return ckpt_io.read(path, trust=trust, key="ckpt")


def is_advrw(obj) -> bool:
    return isinstance(obj, dict) and "config" in obj and "model" in obj


def cli_checkpoint(cfg) -> tuple[Path, dict]:
    """``advrw.eval``'s ``ckpt=`` (a run dir, a file, or ``robustbench:<Name>``) and ``eval.checkpoint``:
    the file and its contents."""
    if zoo.is_zoo(cfg.ckpt):
        path = zoo.zoo_path(cfg.ckpt, cfg.robustbench)
        if not path.is_file():
            raise AdvrwError(zoo.missing_message(cfg.ckpt, path, cfg.robustbench))
        return path, read_checkpoint(path, _trust(cfg))
    path = (ckpt_io.resolve(bestlast.run_dir_for_both(cfg.ckpt), "last") if cfg.eval.checkpoint == "both"
            else ckpt_io.resolve(cfg.ckpt, cfg.eval.checkpoint))
    return path, read_checkpoint(path, _trust(cfg))


def _trust(cfg) -> bool:
    return bool(cfg.get("ckpt_trust", False))


def protocol_of(cfg, kind: str, path: Path, state: dict, subsets_record: dict, runtime: dict,
                which: str = "raw") -> dict:
    """``results.json``'s ``protocol`` additions for one scored checkpoint; training's settings come
    from the checkpoint's own config, so both CLIs write the same structure."""
    out = {"checkpoint": bestlast.protocol(kind, path, state) if is_advrw(state) else
           {"path": str(Path(path).resolve()), "kind": kind, "epoch": None},
           "model": cfg.model.name, "dataset": cfg.dataset.name, "split": "test", "eval": cfg.eval.name,
           "subsets": subsets_record, "runtime": runtime}
    if is_advrw(state):
        tc = OmegaConf.create(state["config"])
        out.update({"defense": tc.defense.name, "weighting": tc.weighting.name, "train_seed": int(tc.seed),
                    "minimizer": awp_spec_fields(tc),
                    "train_runtime": (state.get("run_info") or {}).get("runtime")})
        if "ema" in state:  # which weights of an averaging run these numbers are (ema.evaluate)
            out["checkpoint"]["weights"] = which
    return out


class _Partial:
    """The finished units of an interrupted final evaluation, keyed by checkpoint kind."""

    def __init__(self, run_dir: Path, ev: dict, enabled: bool):
        self.path, self.key, self.units = Path(run_dir) / PARTIAL, jsonable(ev), {}
        if enabled and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError) as err:
                log.warning("ignoring %s (%s): the final evaluation starts over", self.path, err)
                return
            if saved.get("eval") == self.key:
                self.units = saved.get("units", {})
                log.info("resuming the final evaluation: %s already done", ", ".join(self.units) or "nothing")
            else:
                log.info("%s was made with another eval config: the final evaluation starts over", self.path.name)

    def done(self, tag: str) -> dict:
        return {name[len(tag) + 1:]: rec for name, rec in self.units.items() if name.startswith(tag + "/")}

    def save(self, tag: str, name: str, record: dict) -> None:
        self.units[f"{tag}/{name}"] = record
        write_json(self.path, {"eval": self.key, "units": self.units})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def score_and_report(cfg, model, x, y, data, run_dir: Path, runlog: RunLog | None, checkpoints, load,
                     protocol_fn, *, between_attacks: Callable[[], None] | None = None,
                     resumable: bool = False, weights: list[str] = ("raw",)) -> dict:
    """Score each checkpoint with the suite for each of ``weights`` (raw / EMA, ``ema.evaluate``),
    merge (bestlast, then weight_avg), write results.json, figures, W&B.

    ``load(path, which)`` puts the checkpoint's ``which`` weights in the model; ``protocol_fn(kind,
    path, state, which)`` records them."""
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    partial = _Partial(run_dir, ev, resumable)
    per_weights = {}
    for which in weights:  # figures and W&B tables: the last scored (last with both)
        per_weights[which], arrays = _score(cfg, model, x, y, data, ev, checkpoints, partial, which,
                                            lambda p, w=which: load(p, w),
                                            lambda k, p, st, w=which: protocol_fn(k, p, st, w),
                                            between_attacks, resumable)
    results = weight_avg.merge(per_weights)
    write_report(run_dir, results, arrays, data.classes, runlog, plots=bool(cfg.eval.plots))
    partial.clear()
    return results


def _score(cfg, model, x, y, data, ev, checkpoints, partial, which, load, protocol_fn, between_attacks, resumable):
    def run(kind, state):
        tag = f"{kind}@{state.get('epoch') if isinstance(state, dict) else None}" + ("" if which == "raw" else f":{which}")

        def on_unit(name, record):
            if resumable:
                partial.save(tag, name, record)
            if between_attacks is not None:
                between_attacks()
        return run_suite(model, x, y, ev, num_classes=data.num_classes, progress=bool(cfg.progress),
                         done=partial.done(tag), on_unit=on_unit)

    return bestlast.score(checkpoints, load, run, protocol_fn)


def final_eval(cfg, model, data, run_dir: Path, runlog: RunLog, subset: tuple, runtime: dict | None = None,
               between_attacks: Callable[[], None] | None = None) -> dict:
    """Training's final evaluation on the test set with the configured checkpoint (last, best or both).

    ``between_attacks`` runs after each attack, once its result is saved (see the module docstring)."""
    idx, picked = subset  # (indices, record) from advrw.data.subsets.eval_subset
    x, y = as_float(data.test_x[idx.to(data.test_x.device)]), data.test_y[idx.to(data.test_y.device)]
    eval_runtime = hardware.eval_runtime(x.device, bool((runtime or {}).get("channels_last", False)))

    def load(path, which):
        state = read_checkpoint(path)
        model.load_state_dict(weight_avg.weights_of(state, which))  # raw or EMA weights (ema.evaluate)
        return state

    checkpoints = [(kind, run_dir / f"{kind}.pt") for kind in bestlast.kinds(cfg.eval.checkpoint)]
    return score_and_report(
        cfg, model, x, y, data, run_dir, runlog, checkpoints, load,
        lambda kind, path, state, which: protocol_of(cfg, kind, path, state, {**data.subsets, "eval": picked},
                                                     eval_runtime, which),
        between_attacks=between_attacks, resumable=True, weights=weight_avg.scored(cfg))


def eval_checkpoint(cfg, path: Path, obj: dict, run_dir: Path, overrides: list[str]) -> dict:
    """``advrw.eval``: build the data and model ``cfg`` names, load ``obj`` (read from ``path``) and
    score it (best and last with ``eval.checkpoint=both``), holding the run dir's lock as training does
    (two evaluations given the same ``hydra.run.dir`` would interleave their records)."""
    with RunLock(run_dir):
        return _eval_locked(cfg, path, obj, run_dir, overrides)


def _eval_locked(cfg, path: Path, obj: dict, run_dir: Path, overrides: list[str]) -> dict:
    both = cfg.eval.checkpoint == "both"
    device = hardware.resolve_device(cfg.device)
    hardware.seed_everything(int(cfg.eval.seed), False)
    data = build_data(cfg.dataset, device)
    idx, picked = subsets.eval_subset(data.test_y, cfg.eval)
    model, zoo_record = _build(cfg, path, obj, data)
    model.to(device).eval()
    advrw_ckpt = is_advrw(obj)
    kind = ("robustbench" if zoo_record else path.stem if path.stem in ("best", "last")
            else "checkpoint" if advrw_ckpt else "state_dict")
    config = OmegaConf.to_container(cfg, resolve=True)
    git = git_state()
    info = {"git_commit": git["commit"], "git_dirty": git["dirty"], "git_diff_sha1": git["diff_sha1"],
            "command": job_command("advrw.eval", overrides), "checkpoint": str(path.resolve()),
            "checkpoint_kind": kind, "epoch": obj.get("epoch") if advrw_ckpt else None,
            "runtime": hardware.eval_runtime(device)}
    write_json(run_dir / "run_info.json", info)
    logger_cfg, run_name, link = eval_logger_settings(config["logger"], config, run_dir, obj if advrw_ckpt else None)
    runlog = RunLog(run_dir, logger_cfg, {**config, **link, "run_info": info}, name=run_name)
    x, y = as_float(data.test_x[idx.to(data.test_x.device)]), data.test_y[idx.to(data.test_y.device)]
    log.info("evaluating %s (%s, epoch %s) with eval=%s on %d %s test images, eps %.4g", path, kind,
             info["epoch"], cfg.eval.name, len(idx), cfg.dataset.name, cfg.eval.eps)

    # an averaging run's checkpoint is scored on the weights its own ema.evaluate names
    weights = weight_avg.scored(OmegaConf.create(obj["config"])) if advrw_ckpt and "ema" in obj else ["raw"]

    def load(p, which):
        state = read_checkpoint(p, _trust(cfg)) if both else obj  # the model holds one checkpoint at a time
        if both or which != "raw" or len(weights) > 1:
            ckpt_io.load_model_state(model, weight_avg.weights_of(state, which) if advrw_ckpt else
                                     ckpt_io.model_state(state), str(p), cfg.model.name, data.num_classes)
        return state

    checkpoints = [(k, path.parent / f"{k}.pt") for k in bestlast.kinds("both")] if both else [(kind, path)]
    def protocol(k, p, state, which):
        out = protocol_of(cfg, k, p, state, {**data.subsets, "eval": picked}, info["runtime"], which)
        if zoo_record:  # the architecture is the zoo entry's (or the exported advrw model's), not model=
            out.update(model=zoo_record["model"], robustbench=zoo_record)
        return out

    results = score_and_report(cfg, model, x, y, data, run_dir, runlog, checkpoints, load, protocol, weights=weights)
    runlog.finish()
    return results


def _build(cfg, path: Path, obj: dict, data):
    """The model with the checkpoint's weights: ``model=`` for advrw and plain files; for
    ``ckpt=robustbench:<Name>`` the exported advrw model (its info JSON) or RobustBench's architecture."""
    state = ckpt_io.model_state(obj)
    if not zoo.is_zoo(cfg.ckpt):
        norm = (data.mean, data.std) if cfg.dataset.get("normalize") else (None, None)
        model = build_model(cfg.model.name, data.num_classes, in_channels=data.channels, image_size=data.image_size,
                            mean=norm[0], std=norm[1], activation=cfg.model.get("activation"))
        ckpt_io.load_model_state(model, state, str(path), cfg.model.name, data.num_classes)
        return model, None
    name, rb = cfg.ckpt[len(zoo.PREFIX):], cfg.robustbench
    record = {"name": name, "dataset": rb.dataset, "threat_model": rb.threat_model, "path": str(path)}
    info = zoo.advrw_info(path)
    if info is not None:  # written by python -m advrw.export --robustbench
        model = build_model(info["model"], data.num_classes, in_channels=data.channels, image_size=data.image_size,
                            mean=info.get("mean"), std=info.get("std"))
        ckpt_io.load_model_state(model, state, str(path), info["model"], data.num_classes)
        return model, {**record, "model": info["model"], "source": "advrw export"}
    model = zoo.zoo_entry(name, rb)()
    ckpt_io.load_model_state(model, state, str(path), f"robustbench:{name}", data.num_classes)
    return model, {**record, "model": f"robustbench:{name}", "source": "RobustBench model zoo",
                   "robustbench_version": importlib.metadata.version("robustbench")}
