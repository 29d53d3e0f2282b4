"""The modern-recipe presets: experiment=wang2023_wrn28_10_cifar10 (DM-Improves-AT as its code runs),
its ResNet-18 variant and sweep=recipe_x_weighting compose, validate, and run through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from advrw.config.validation import validate_train
from conftest import cli, ok, preset_jobs, results


def test_wang2023_preset_holds_the_anchors_recipe(cfg_train):
    cfg = cfg_train("experiment=wang2023_wrn28_10_cifar10")
    validate_train(cfg)
    s, e, d = cfg.schedule, cfg.ema, cfg.defense
    assert (cfg.model.name, cfg.model.activation, cfg.model.bn_momentum, cfg.model.first_bn_momentum) == \
        ("wrn28_10_silu", "silu", 0.01, 1.0)
    assert (d.name, d.beta_trades, d.label_smoothing, cfg.attack.init, cfg.attack.clamp_start) == \
        ("trades", 5.0, 0.1, "uniform", True)
    assert cfg.attack.bn_mode == "train_frozen" and cfg.attack.steps == 10
    assert (s.batch_size, s.lr, s.nesterov, s.weight_decay, list(s.wd_exclude)) == (512, 0.2, True, 0.0005, ["bn"])
    assert (s.lr_schedule, s.step_per, s.one_cycle.pct_start, s.one_cycle.base_momentum,
            s.one_cycle.max_momentum) == ("one_cycle", "epoch", 0.025, 0.85, 0.95)
    assert (e.name, e.decay, e.warmup, e.warmup_in, e.ramp, e.buffers, e.evaluate) == \
        ("standard", 0.995, 0.025, "fraction", True, "epoch", "ema")
    assert cfg.dataset.extra_fraction == 0.7 and cfg.dataset.normalize and cfg.eval.name == "autoattack"
    rn18 = cfg_train("experiment=wang2023_rn18_cifar10")
    validate_train(rn18)
    assert rn18.model.name == "resnet18" and rn18.dataset.extra_fraction is None and rn18.ema.name == "standard"


def test_recipe_x_weighting_expands_to_the_twelve_rows(cfg_train):
    jobs = preset_jobs("sweep=recipe_x_weighting")
    assert len(jobs) == 12
    seen = set()
    for job in jobs:
        cfg = cfg_train(*job)
        validate_train(cfg)
        assert cfg.defense.name == "trades" and cfg.defense.beta_trades == 5.0 and cfg.model.name == "resnet18"
        seen.add((cfg.ema.name, cfg.defense.label_smoothing, cfg.weighting.name))
    assert seen == {(ema, ls, w) for ema, ls in (("none", 0.0), ("standard", 0.0), ("standard", 0.1))
                    for w in ("none", "vir", "mail", "ewat")}


@pytest.mark.slow  # two short CLI runs with the presets' full wiring (EMA, mixed batches, one-cycle)
def test_recipe_presets_run_with_debug_fast(tmp_path):
    """Both presets train and evaluate with debug=fast (tiny model, synthetic images, a generated-data
    npz mixed in at 0.7 of each batch for the WRN preset): EMA weights scored, paper numbers attached."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "gen.npz"
    np.savez(npz, image=rng.integers(0, 256, (600, 16, 16, 3), dtype=np.uint8), label=rng.integers(0, 10, 600))
    small = ["debug=fast", "dataset=synthetic", "model=tiny", "schedule.batch_size=64",
             "dataset.n_train=256", "dataset.n_test=64", "eval.n_eval=64", "logger=none", "progress=false"]
    run = tmp_path / "wang"
    ok(cli("train", "experiment=wang2023_wrn28_10_cifar10", *small, f"dataset.extra_npz={npz}",
           f"hydra.run.dir={run}", cwd=tmp_path))
    r = results(run)
    assert r["protocol"]["checkpoint"]["weights"] == "ema" and "pgd20" in r["attacks"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["lr"] != rows[1]["lr"]  # one-cycle, stepped per epoch
    info = json.loads((run / "run_info.json").read_text())
    assert "experiment=wang2023_wrn28_10_cifar10" in info["command"]
    run = tmp_path / "rn18"
    ok(cli("train", "experiment=wang2023_rn18_cifar10", *small, "recipe=ema_ls", "weighting=vir",
           f"hydra.run.dir={run}", cwd=tmp_path))
    assert results(run)["protocol"]["checkpoint"]["weights"] == "ema"
