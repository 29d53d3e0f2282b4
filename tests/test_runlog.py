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
    rl.epoch({"epoch": 1, "loss": 1.0}, weights=torch.ones(2), class_sums=[1.0, 2.0], classes=["a", "b"])
    rl.epoch({"epoch": 2, "loss": 0.9})
    assert Run.calls == 1 and rl.wandb is None and "continuing without it" in caplog.text
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
