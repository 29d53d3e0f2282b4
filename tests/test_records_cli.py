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
    proc = cli("eval", f"ckpt={run}", "eval=quick", "logger=none", "eval.n_eval=1000", cwd=tmp_path)
    assert proc.returncode == 2 and [p.name for p in (run / "eval").iterdir()] == [ev.name]  # no stray dir
    # the report of the dir sees one training job (the evaluation inside it is not a job of its own)
    md = ok(cli("report", str(tmp_path), "--no-plots", "--out", str(tmp_path / "rep"), cwd=tmp_path)).stdout
    assert [ln for ln in md.splitlines() if ln.startswith("| ")][1:][0].split("|")[2].strip() == "n=1"
    # debug=fast: its own output root, a debug tag and a -debug name in W&B
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    ok(cli("train", *common, "debug=fast", "logger=wandb", "dataset.n_train=40", "schedule.batch_size=20",
           "dataset.n_test=20", "eval.n_eval=20", cwd=tmp_path, env=env))
    (dbg,) = (tmp_path / "outputs" / "debug").glob("*/*")
    rec, _, config = wandb_records(dbg)
    assert "debug" in rec.tags and rec.display_name.endswith("-debug")
    assert json.loads((dbg / "run_info.json").read_text())["choices"]["debug"] == "fast"


def _imported(module: str, importtime: str) -> bool:
    """Does ``python -X importtime``'s report list ``module``?"""
    return any(ln.split("|")[-1].strip() == module for ln in importtime.splitlines() if ln.startswith("import time:"))


def test_help_is_advrws_own_and_tab_completion_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    from advrw.config import CONF_DIR

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "advrw.train", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "powered by Hydra" not in out.stdout
    groups = [p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and p.name != "hydra"]
    for g in groups:  # every group is explained; the automatic ones say so
        assert f"\n  {g}" in out.stdout or f" {g} (" in out.stdout or f"{g} (" in out.stdout, g
    assert "Chosen automatically" in out.stdout and "combo" in out.stdout.split("Chosen automatically")[1]
    for cmd in ("python -m advrw.train", "python -m advrw.eval", "python -m advrw.report", "outputs/"):
        assert cmd in out.stdout
    assert not _imported("torch", out.stderr)  # torch never loaded
    comp = subprocess.run([sys.executable, "-X", "importtime", "-m", "advrw.train", "-sc", "query=bash"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**env, "COMP_LINE": "advrw-train weighting=", "COMP_POINT": "22"})
    assert "weighting=vir" in comp.stdout and "weighting=mail" in comp.stdout
    assert not _imported("torch", comp.stderr)
    ev = subprocess.run([sys.executable, "-m", "advrw.eval", "--help"], cwd=tmp_path, capture_output=True,
                        text=True, env=env, timeout=120)
    assert ev.returncode == 0 and "<run dir>/eval/" in ev.stdout and "whole test split" in ev.stdout
