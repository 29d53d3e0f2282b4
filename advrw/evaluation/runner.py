"""One evaluation runner for both CLIs: the suite on the test split for the configured checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf

from advrw.core import checkpoints as ckpt_io
from advrw.core import hardware
from advrw.evaluation import bestlast
from advrw.evaluation.results import write_report
from advrw.evaluation.suite import run_suite
from advrw.methods import ema as weight_avg
from advrw.methods.awp import spec_fields as awp_spec_fields
from advrw.records.runlog import RunLog


@torch.no_grad()
def as_float(x_uint8):
    return x_uint8.float().div_(255)


def final_eval(cfg, model, data, run_dir: Path, runlog: RunLog, subset: tuple, runtime: dict | None = None,
               between_attacks: Callable[[], None] | None = None) -> dict:
    """The evaluation suite on the test set with the configured checkpoint (last, best or both).

    ``between_attacks()`` is called at each safe stopping point (the training loop's signal guard
    raises ``Interrupted`` there when a signal arrived)."""
    idx, picked = subset  # (indices, record) from advrw.data.subsets.eval_subset
    x, y = as_float(data.test_x[idx.to(data.test_x.device)]), data.test_y[idx.to(data.test_y.device)]
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    def load(path, which):
        state = ckpt_io.read(path)
        model.load_state_dict(weight_avg.weights_of(state, which))  # raw or EMA weights (ema.evaluate)
        return state

    def protocol_of(kind, path, state, which):
        out = {"checkpoint": bestlast.protocol(kind, path, state), "model": cfg.model.name,
               "dataset": cfg.dataset.name, "split": "test", "defense": cfg.defense.name,
               "weighting": cfg.weighting.name, "eval": cfg.eval.name, "train_seed": int(cfg.seed),
               "minimizer": awp_spec_fields(cfg), "subsets": {**data.subsets, "eval": picked}}
        if "ema" in state:  # which weights of an averaging run these numbers are
            out["checkpoint"]["weights"] = which
        if runtime is not None:  # eval itself runs fp32 and eager on this machine; training's settings as resolved
            out.update({"runtime": hardware.eval_runtime(x.device, runtime["channels_last"]), "train_runtime": runtime})
        return out

    per_weights = {}
    for which in weight_avg.scored(cfg):  # figures and W&B tables: the last scored (last with both)
        per_weights[which], arrays = bestlast.score(
            [(kind, run_dir / f"{kind}.pt") for kind in bestlast.kinds(cfg.eval.checkpoint)],
            lambda path, w=which: load(path, w),
            lambda: run_suite(model, x, y, ev, num_classes=data.num_classes, progress=bool(cfg.progress)),
            lambda kind, path, state, w=which: protocol_of(kind, path, state, w))
    results = weight_avg.merge(per_weights)
    if between_attacks is not None:
        between_attacks()
    write_report(run_dir, results, arrays, data.classes, runlog, plots=bool(cfg.eval.plots))
    return results
