"""The real entry points in subprocesses: a run, a multirun, every defense x scheme, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import CIFAR_JPEG, ok, results


def test_train_run_writes_records(run_cli, tmp_path):
    run_dir = tmp_path / "r"
    proc = ok(run_cli("train", "experiment=smoke", "weighting=mail", "defense=trades", f"hydra.run.dir={run_dir}"))
    for name in ("results.json", "metrics.jsonl", "last.pt", "best.pt", "run_info.json", ".hydra/config.yaml",
                 "figures/confusion_pgd20.png", "figures/class_weight_sums.png"):
        assert (run_dir / name).exists(), name
    res = results(run_dir)
    proto = res["attacks"]["pgd20"]["protocol"]
    assert proto["steps"] == 20 and proto["restarts"] == 1 and proto["n_eval"] == 128
    assert proto["eps"] == pytest.approx(8 / 255) and proto["step"] == pytest.approx(0.8 / 255)
    assert res["protocol"]["checkpoint"]["kind"] == "last" and res["protocol"]["checkpoint"]["epoch"] == 2
    assert 0.0 <= res["attacks"]["pgd20"]["robust_accuracy"] <= res["clean"]["accuracy"]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert lines[0]["burn_in"] is True and lines[0]["w_std"] == 0.0 and lines[0]["w_mean"] == 1.0
    assert lines[1]["burn_in"] is False and "val_robust" in lines[1] and len(lines[1]["class_weight_sum"]) == 10
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 0 and info["choices"]["weighting"] == "mail" and "git_commit" in info
    ckpt = torch.load(run_dir / "last.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "config"} <= set(ckpt)
    assert ckpt["config"]["weighting"]["gamma"] == 2.0  # MAIL-TRADES defaults from the combo
    assert "pgd20" in proc.stderr + proc.stdout  # the console table


def test_every_defense_and_scheme_through_multirun(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    ok(run_cli("train", "-m", "experiment=smoke", "defense=at,trades,mart",
               "weighting=none,gairat,mail,vir,ewat,margin_exp", "dataset.val_size=0", "schedule.epochs=2",
               "dataset.n_train=128", "dataset.n_test=32", f"hydra.sweep.dir={sweep}", timeout=900))
    runs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert len(runs) == 18
    seen = set()
    for r in runs:
        cfg = torch.load(r / "last.pt", weights_only=False)["config"]
        seen.add((cfg["defense"]["name"], cfg["weighting"]["name"]))
        assert results(r)["clean"]["accuracy"] >= results(r)["attacks"]["pgd20"]["robust_accuracy"]
    assert len(seen) == 18


def test_multirun_two_jobs_with_sweep_values(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    ok(run_cli("train", "-m", "experiment=smoke", "weighting=vir", "weighting.gamma=3,10",
               f"hydra.sweep.dir={sweep}"))
    gammas = sorted(torch.load(p, weights_only=False)["config"]["weighting"]["gamma"] for p in sweep.glob("*/last.pt"))
    assert gammas == [3.0, 10.0]
    table = ok(run_cli("report", str(sweep), "--csv")).stdout
    lines = table.strip().splitlines()
    assert len(lines) == 3 and "pgd20 (eps 8/255, 20 x 0.8/255) mean" in lines[0]
    assert lines[0].startswith("weighting.gamma,n,seeds") and [ln.split(",")[0] for ln in lines[1:]] == ["3", "10"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(run_cli, tmp_path):
    common = ["experiment=smoke", "weighting=gairat", "schedule.epochs=3", "schedule.burn_in=1", "eval.n_eval=16"]
    ok(run_cli("train", *common, f"hydra.run.dir={tmp_path / 'full'}"))
    ok(run_cli("train", *common, "stop_after=1", f"hydra.run.dir={tmp_path / 'part'}"))
    assert not (tmp_path / "part" / "results.json").exists()
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=False)["epoch"] == 1
    ok(run_cli("train", f"resume={tmp_path / 'part'}", f"hydra.run.dir={tmp_path / 'resumed'}"))
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model"]
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["model"]
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    assert results(tmp_path / "full")["clean"] == results(tmp_path / "resumed")["clean"]
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    info = json.loads((tmp_path / "resumed" / "run_info.json").read_text())
    assert info["choices"]["weighting"] == "gairat" and info["start_epoch"] == 1


@pytest.mark.parametrize("args, expected", [
    (["weighting=foo"], "weighting=foo is unknown: choose one of ewat, gairat, mail, margin_exp, none, vir"),
    (["model=wrn"], "model=wrn is unknown: choose one of preact_resnet18, resnet18, resnet50, smallcnn, tiny, wrn28_10, wrn28_10_silu, wrn32_10, wrn34_10, wrn34_20_silu, wrn70_16_silu"),
    (["attack.epz=0.1"], "attack.epz is not a config key"),
    (["attack.eps=-0.1"], "attack.eps=-0.1 is invalid: must be > 0"),
    (["attack.eps=0"], "attack.eps=0 is invalid"),
    (["attack.step=0.5"], "attack.step=0.5 is invalid: must be <= eps"),
    (["schedule.burn_in=2"], "schedule.burn_in=2 is invalid: must be >= 0 and < schedule.epochs (2)"),
    (["attack.init=gauss"], "attack.init='gauss' is unknown"),
    (["eval.alpha_test=-1"], "eval.alpha_test=-1 is invalid"),
    (["precision=fp16"], "precision='fp16' is unknown"),
    (["attack.loss=hinge"], "attack.loss='hinge' is unknown"),
    (["weighting=margin_exp", "attack.weighted=true", "attack.loss=cw"], "cannot be combined with attack.weighted"),
    (["-m", "weighting=vir", "weighting.gamma=3,10", "schedule.burn_in=0,5"], "schedule.burn_in=5 is invalid"),
    (["-m", "seed=0,1", "hydra/launcher=bogus"], "hydra/launcher=bogus is unknown: choose one of basic"),
])
def test_bad_input_is_one_line_before_any_work(run_cli, tmp_path, args, expected):
    proc = run_cli("train", "experiment=smoke", *args, f"hydra.run.dir={tmp_path / 'bad'}",
                   f"hydra.sweep.dir={tmp_path / 'bads'}")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advrw: error: ") and expected in err[0], proc.stderr
    assert "provider=" not in err[0]
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bads").exists()


def test_missing_dataset_offline(run_cli, tmp_path):
    proc = run_cli("train", "experiment=smoke", "dataset=cifar10", f"dataset.root={tmp_path / 'nowhere'}",
                   f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "dataset.root" in line and "cifar-10" in line, proc.stderr


def test_existing_run_dir_is_not_overwritten(run_cli, tmp_path):
    run_dir = tmp_path / "r"
    ok(run_cli("train", "experiment=smoke", f"hydra.run.dir={run_dir}", "eval.n_eval=16"))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = run_cli("train", "experiment=smoke", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert before == after


def test_unwritable_output_dir(run_cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        import os
        if os.access(locked, os.W_OK):  # root ignores permission bits: use a path under a file instead
            target = tmp_path / "afile"
            target.write_text("x")
            target = target / "run"
        else:
            target = locked / "run"
        proc = run_cli("train", "experiment=smoke", f"hydra.run.dir={target}")
        assert proc.returncode == 2 and "is not writable" in proc.stderr, proc.stderr
    finally:
        locked.chmod(0o700)


def test_resume_errors(run_cli, tmp_path):
    proc = run_cli("train", "experiment=smoke", f"resume={tmp_path / 'none'}", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2 and "has no checkpoint" in proc.stderr
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = run_cli("train", "experiment=smoke", f"resume={bad}", f"hydra.run.dir={tmp_path / 'r2'}")
    assert proc.returncode == 2 and "is unreadable" in proc.stderr
    ok(run_cli("train", "experiment=smoke", "stop_after=1", f"hydra.run.dir={tmp_path / 'part'}"))
    proc = run_cli("train", f"resume={tmp_path / 'part'}", "model=resnet18", f"hydra.run.dir={tmp_path / 'r3'}")
    assert proc.returncode == 2 and "does not match the checkpoint" in proc.stderr, proc.stderr


@pytest.mark.skipif(not CIFAR_JPEG.is_file(), reason="the shared CIFAR-10 JPEG archive is not beside this checkout")
def test_short_run_on_real_cifar10_jpeg(run_cli, tmp_path):
    run_dir = tmp_path / "cifar"
    ok(run_cli("train", "experiment=smoke", "dataset=imagefolder", f"dataset.root={CIFAR_JPEG}",
               "dataset.n_train=2048", "dataset.val_size=256", "dataset.n_test=256", "weighting=none",
               "schedule.epochs=2", "schedule.batch_size=128", "schedule.lr=0.1", "schedule.milestones=[2]",
               f"hydra.run.dir={run_dir}"))
    res = results(run_dir)
    assert res["protocol"]["dataset"] == "imagefolder" and res["protocol"]["n_eval"] == 256
    assert res["attacks"]["pgd20"]["protocol"]["eps"] == pytest.approx(8 / 255)
    assert res["attacks"]["pgd20"]["robust_accuracy"] <= res["clean"]["accuracy"]
    epochs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]  # it learns from the real images


def test_schedule_and_burn_in_are_followed(run_cli, tmp_path):
    run_dir = tmp_path / "r"
    ok(run_cli("train", "experiment=smoke", "weighting=vir", "schedule.epochs=3", "schedule.burn_in=2",
               "schedule.lr=0.1", "schedule.milestones=[1,2]", "eval.n_eval=16", f"hydra.run.dir={run_dir}"))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.01, 0.001])
    assert [r["burn_in"] for r in rows] == [True, True, False]
    assert rows[1]["w_min"] == rows[1]["w_max"] == 1.0 and rows[2]["w_std"] > 0
    # VIR's weights: S_v * S_d + beta >= beta
    assert rows[2]["w_min"] >= 0.007 - 1e-9


def test_console_scripts(tmp_path):
    """``advrw-train`` / ``advrw-eval`` (pyproject scripts) find the config from any directory."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    bindir = Path(sys.executable).parent
    train, evaluate = shutil.which("advrw-train", path=str(bindir)), shutil.which("advrw-eval", path=str(bindir))
    assert train and evaluate, "pip install -e . installs the advrw-train and advrw-eval scripts"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    ok(subprocess.run([train, "experiment=smoke", "eval.n_eval=16", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path,
                      env=env, capture_output=True, text=True, timeout=300))
    ok(subprocess.run([evaluate, f"ckpt={tmp_path / 'r'}", "eval=quick", "n_eval=16", "logger=none",
                       f"hydra.run.dir={tmp_path / 'e'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                      timeout=300))
    assert results(tmp_path / "e")["clean"] == results(tmp_path / "r")["clean"]
