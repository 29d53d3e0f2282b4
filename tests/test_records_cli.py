"""Records through the CLI: eval defaults that explain themselves, eval outputs beside their run,
debug runs apart from real ones (tag, name, output root)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, ok, results
from test_campaigns import wandb_records


def _npz(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    img[0], img[1] = 0, 255  # pixels at both ends of the range
    np.savez(path, image=img, label=np.arange(n) % 10)


@pytest.mark.slow
def test_eval_scores_the_whole_test_split_beside_its_run_and_debug_runs_stay_apart(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _npz(data / "train.npz", 80, 0)
    _npz(data / "test.npz", 40, 1)
    run = tmp_path / "run"
    common = ["experiment=smoke", "dataset=npz", f"dataset.root={data}", "model=tiny", "dataset.val_size=0",
              "dataset.n_train=80",
              "schedule.epochs=1", "schedule.burn_in=0", "schedule.milestones=[1]", "eval.plots=false"]
    ok(cli("train", *common, "dataset.n_test=20", f"hydra.run.dir={run}", cwd=tmp_path))
    assert results(run)["protocol"]["n_eval"] == 20
    proc = ok(cli("eval", f"ckpt={run}", "eval=quick", "logger=none", "eval.plots=false", cwd=tmp_path))
    (ev,) = (run / "eval").glob("quick-*")  # beside the run it scores, never among training runs
    assert results(ev)["protocol"]["n_eval"] == 40  # the whole test split, not the training run's 20
    assert "whole test split" in proc.stdout + proc.stderr and "dataset.n_test=20" in proc.stdout + proc.stderr
    assert not (tmp_path / "outputs").exists()
    proc = cli("eval", f"ckpt={run}", "eval=quick", "eval.checkpoint=best", "logger=none", cwd=tmp_path)
    assert proc.returncode == 2 and "validation split" in proc.stderr and "eval.checkpoint=last" in proc.stderr
    # the report of the dir sees one training job (the evaluation inside it is not a job of its own)
    md = ok(cli("report", str(tmp_path), "--no-plots", "--out", str(tmp_path / "rep"), cwd=tmp_path)).stdout
    assert [ln for ln in md.splitlines() if ln.startswith("| ")][1:][0].split("|")[2].strip() == "n=1"
    # debug=fast: its own output root, a debug tag and a -debug name in W&B
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    ok(cli("train", *common, "debug=fast", "logger=wandb", "dataset.n_train=40", "dataset.n_test=20",
           "eval.n_eval=20", cwd=tmp_path, env=env))
    (dbg,) = (tmp_path / "outputs" / "debug").glob("*/*")
    rec, _, config = wandb_records(dbg)
    assert "debug" in rec.tags and rec.display_name.endswith("-debug")
    assert json.loads((dbg / "run_info.json").read_text())["choices"]["debug"] == "fast"
