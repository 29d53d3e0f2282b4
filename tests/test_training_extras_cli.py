"""Through the CLI: AWP + extra data per batch survive stop/resume bitwise; eval.checkpoint=both."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose_config, ok, results

from advrw.evaluation.bestlast import run_dir_for_both
from advrw.config.validation import validate_train
from advrw.core.errors import AdvrwError

# Tiny models on a shared 2-core box: one torch thread per process avoids busy-waiting.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def best_epoch(run_dir) -> int:
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    top = max(r["val_robust"] for r in rows)
    return next(r["epoch"] for r in rows if r["val_robust"] == top)  # the first epoch reaching the max


def check_both(res: dict, run_dir) -> None:
    rows = res["checkpoints"]
    assert set(rows) == {"best", "last"}
    assert rows["last"]["protocol"]["checkpoint"]["kind"] == "last"
    assert rows["best"]["protocol"]["checkpoint"]["kind"] == "best"
    assert rows["best"]["protocol"]["checkpoint"]["epoch"] == best_epoch(run_dir)
    assert rows["best"]["protocol"]["checkpoint"]["selected_on"]["split"] == "validation"
    for r in rows.values():
        assert "pgd20" in r["attacks"] and r["attacks"]["pgd20"]["protocol"]["steps"] == 20
    # the top level stays last's numbers for existing readers
    assert res["clean"] == rows["last"]["clean"] and res["attacks"] == rows["last"]["attacks"]
    assert res["protocol"]["top_level_checkpoint"] == "last"


def test_awp_with_extra_data_resumes_bitwise_and_scores_best_and_last(run_cli, tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "extra.npz"
    np.savez(npz, image=rng.integers(0, 256, (200, 16, 16, 3), dtype=np.uint8), label=rng.integers(0, 10, 200))
    common = ["experiment=smoke", "minimizer=awp", "minimizer.gamma=0.02", "minimizer.warmup=1",
              "schedule.epochs=2", "dataset.n_train=256", "validation.n=32", f"dataset.extra_npz={npz}",
              "dataset.extra_fraction=0.5", "eval.n_eval=16", "eval.checkpoint=both"]
    one = {"env": ONE_THREAD}
    ok(run_cli("train", *common, f"hydra.run.dir={tmp_path / 'full'}", **one))
    ok(run_cli("train", *common, "stop_after=1", f"hydra.run.dir={tmp_path / 'part'}", **one))
    # epoch 1 (AWP on after its 1-epoch warm-up) runs in the resumed process; it scores last only
    ok(run_cli("train", f"resume={tmp_path / 'part'}", "eval.checkpoint=last", f"hydra.run.dir={tmp_path / 'resumed'}",
               **one))
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model"]
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["model"]
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    res = results(tmp_path / "full")
    check_both(res, tmp_path / "full")
    assert res["checkpoints"]["last"]["protocol"]["checkpoint"]["epoch"] == 2
    assert res["protocol"]["minimizer"] == {"minimizer": "awp", "awp_gamma": 0.02, "awp_warmup": 1}
    again = results(tmp_path / "resumed")
    assert "checkpoints" not in again and again["protocol"]["checkpoint"]["kind"] == "last"
    assert again["clean"] == res["clean"] and again["attacks"] == res["attacks"]


def test_eval_cli_scores_best_and_last(run_cli, tmp_path, trained_run):
    ok(run_cli("eval", f"ckpt={trained_run}", "eval=quick", "eval.checkpoint=both", "logger=none",
               f"hydra.run.dir={tmp_path / 'both'}", env=ONE_THREAD))
    res = results(tmp_path / "both")
    check_both(res, trained_run)
    assert res["checkpoints"]["last"]["clean"]["accuracy"] == pytest.approx(results(trained_run)["clean"]["accuracy"])


def test_both_refuses_without_a_validation_split(tmp_path):
    cfg = compose_config("train", "experiment=smoke", "dataset.val_size=0", "eval.checkpoint=both")
    with pytest.raises(AdvrwError, match=r"eval.checkpoint=both needs a validation split: set dataset.val_size > 0"):
        validate_train(cfg)
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(AdvrwError, match="has no best.pt"):
        run_dir_for_both(str(tmp_path))
    with pytest.raises(AdvrwError, match="needs ckpt= to be a run dir"):
        run_dir_for_both(str(tmp_path / "last.pt"))
