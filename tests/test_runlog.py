"""W&B trouble never stops a run; metrics.jsonl is always written."""

from __future__ import annotations

import json
import sys
import types

import torch

from advrw.records.runlog import RunLog


def test_wandb_init_failure_is_survived(tmp_path, monkeypatch, caplog):
    fake = types.ModuleType("wandb")

    def boom(**kw):
        raise RuntimeError("network unreachable")

    fake.init = boom
    monkeypatch.setitem(sys.modules, "wandb", fake)
    rl = RunLog(tmp_path, {"name": "wandb", "mode": "offline"}, {"a": 1})
    assert rl.wandb is None and "W&B disabled" in caplog.text
    rl.epoch({"epoch": 1, "loss": 0.5}, weights=torch.ones(3))
    rl.finish()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 0.5


def test_wandb_log_failure_switches_it_off(tmp_path, monkeypatch, caplog):
    class Run:
        calls = 0

        def log(self, *a, **k):
            Run.calls += 1
            raise OSError("disk full")

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: Run()
    fake.Histogram = lambda v: list(v)
    fake.plot = types.SimpleNamespace(line_series=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    rl = RunLog(tmp_path, {"name": "wandb"}, {})
    rl.epoch({"epoch": 1, "loss": 1.0, "class_weight_sum": [1.0, 2.0]}, weights=torch.ones(2), classes=["a", "b"])
    rl.epoch({"epoch": 2, "loss": 0.9})
    assert Run.calls == 1 and rl.wandb is None and "continuing without it" in caplog.text
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_wandb_metric_names_group_by_prefix():
    from advrw.records.runlog import wandb_metrics

    rec = {"epoch": 3, "lr": 0.1, "burn_in": False, "train_loss": 1.5, "train_adv_acc": 0.4, "w_mean": 1.0,
           "val_clean": 0.8, "val_robust": 0.45, "val_protocol": {"steps": 10}, "best": True,
           "class_weight_sum": [10.0, 20.0]}
    assert wandb_metrics(rec, ["cat", "dog"]) == {
        "epoch": 3, "train/lr": 0.1, "train/loss": 1.5, "train/adv_acc": 0.4, "train/w_mean": 1.0,
        "val/clean": 0.8, "val/robust": 0.45, "train/class_weight_sum/cat": 10.0, "train/class_weight_sum/dog": 20.0}
