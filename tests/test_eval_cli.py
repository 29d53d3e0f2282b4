"""``python -m advrw.eval`` on a checkpoint from a real tiny training run."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import ok, results
from test_campaigns import wandb_records


def test_eval_writes_results_and_figures(run_cli, tmp_path, trained_run):
    out = tmp_path / "ev"
    ok(run_cli("eval", f"ckpt={trained_run}", "eval=nonuniform", "eval.rho=[0,0.5]", "logger=none",
               "eval.only=[pgd20]", f"hydra.run.dir={out}"))
    res = results(out)
    assert res["protocol"]["checkpoint"]["kind"] == "last"
    assert res["protocol"]["checkpoint"]["path"].endswith("last.pt")
    assert res["protocol"]["dataset"] == "synthetic" and res["protocol"]["weighting"] == "vir"
    nu = res["nonuniform"]
    assert nu["A_rob"] == pytest.approx(res["attacks"]["pgd20"]["robust_accuracy"])
    for a, v in nu["alpha_test"].items():
        assert v["A_sa"] <= nu["A_rob"] + 1e-9
        assert v["weighted_attack"]["objective"] == "weighted_ce" and v["weighted_attack"]["alpha"] == float(a)
    assert nu["dro"]["0.0"]["accuracy"] == pytest.approx(nu["A_rob"])
    for png in ("confusion_pgd20.png", "per_class_pgd20.png", "entropy_hist.png", "nonuniform_weights.png"):
        assert (out / "figures" / png).stat().st_size > 1000, png


def _structure(value):
    """Keys and leaf types of a JSON value (list items by the first one's structure)."""
    if isinstance(value, dict):
        return {k: _structure(v) for k, v in value.items()}
    if isinstance(value, list):
        return ["list", _structure(value[0]) if value else None]
    return type(value).__name__


def test_both_clis_write_the_same_protocol_structure(run_cli, tmp_path, trained_run):
    """The trained run's results.json (train's final evaluation) and advrw.eval on its last.pt with
    the same eval config: the same protocol, key by key and type by type (one runner)."""
    out = tmp_path / "same"
    ok(run_cli("eval", f"ckpt={trained_run / 'last.pt'}", "eval=quick", "logger=none", f"hydra.run.dir={out}"))
    train_p, eval_p = results(trained_run)["protocol"], results(out)["protocol"]
    assert set(train_p) == set(eval_p), set(train_p) ^ set(eval_p)
    for key in train_p:
        assert _structure(train_p[key]) == _structure(eval_p[key]), key
    assert isinstance(eval_p["minimizer"], dict) and eval_p["minimizer"] == train_p["minimizer"]
    for key in ("checkpoint", "model", "dataset", "defense", "weighting", "train_seed", "eval", "subsets", "n_eval"):
        assert train_p[key] == eval_p[key], key
    assert results(out)["attacks"]["pgd20"] == results(trained_run)["attacks"]["pgd20"]


def test_eval_best_checkpoint_and_plain_state_dict(run_cli, tmp_path, trained_run):
    ok(run_cli("eval", f"ckpt={trained_run}", "eval=quick", "eval.checkpoint=best", "logger=none",
               f"hydra.run.dir={tmp_path / 'best'}"))
    assert results(tmp_path / "best")["protocol"]["checkpoint"]["kind"] == "best"
    sd = torch.load(trained_run / "last.pt", weights_only=False)["model"]
    torch.save(sd, tmp_path / "plain.pt")
    ok(run_cli("eval", f"ckpt={tmp_path / 'plain.pt'}", "model=tiny", "dataset=synthetic", "eval=quick",
               "logger=none", f"hydra.run.dir={tmp_path / 'plain'}"))
    a, b = results(tmp_path / "plain"), results(trained_run)
    assert a["protocol"]["checkpoint"]["kind"] == "state_dict"
    assert a["clean"]["accuracy"] == pytest.approx(b["clean"]["accuracy"])


def test_eval_multirun_over_checkpoints_with_an_alpha_test_list(run_cli, tmp_path, trained_run):
    """A sweep over checkpoints stays a sweep; alpha_test is a list scored inside each job."""
    sweep = tmp_path / "sweep"
    ok(run_cli("eval", "-m", f"ckpt={trained_run},{trained_run / 'best.pt'}", "eval=nonuniform",
               "eval.alpha_test=[0.5,2]", "eval.rho=[]", "logger=none", "eval.plots=false", "n_eval=64",
               f"hydra.sweep.dir={sweep}"))
    runs = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(runs) == 2 and {r["protocol"]["checkpoint"]["kind"] for r in runs} == {"last", "best"}
    assert all(sorted(float(a) for a in r["nonuniform"]["alpha_test"]) == [0.5, 2.0] for r in runs)
    assert all(r["protocol"]["n_eval"] == 64 for r in runs)  # the top-level n_eval shorthand


@pytest.mark.parametrize("args, expected", [
    (["model=resnet18"], "does not match model=resnet18"),
    (["dataset=synthetic", "dataset.num_classes=5", "dataset.image_size=16"],
     "its classifier has 10 outputs but the data set has 5 classes"),
    (["eval.n_eval=100000"], "eval.n_eval=100000 is larger than the test set (128 examples)"),
    (["eval.only=[pgd7]"], "eval.only names attack 'pgd7'"),
    (["eval.rho=[-1]"], "eval.rho=-1 is invalid"),
    (["eval.alpha_test=-0.5"], "eval.alpha_test=-0.5 is invalid"),
    (["+eval.attacks.foo={kind:deepfool}"], "eval.attacks.foo.kind='deepfool' is unknown"),
])
def test_eval_bad_input(run_cli, tmp_path, trained_run, args, expected):
    proc = run_cli("eval", f"ckpt={trained_run}", "logger=none", *args, f"hydra.run.dir={tmp_path / 'x'}")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("advrw: error:") and expected in line, proc.stderr


def test_eval_missing_and_unreadable_checkpoint(run_cli, tmp_path):
    proc = run_cli("eval", f"ckpt={tmp_path / 'nope.pt'}", "logger=none")
    assert proc.returncode == 2 and "nope.pt does not exist" in proc.stderr
    (tmp_path / "junk.pt").write_text("junk")
    proc = run_cli("eval", f"ckpt={tmp_path / 'junk.pt'}", "logger=none", "dataset=synthetic", "model=tiny")
    assert proc.returncode == 2 and "is unreadable" in proc.stderr
    proc = run_cli("eval", "logger=none")
    assert proc.returncode == 2 and "ckpt is required" in proc.stderr


AUDIT_SMALL = ("eval.audit_settings.steps=[5,20]", "eval.audit_settings.losses_steps=20",
               "eval.audit_settings.square_queries=100", "eval.audit_settings.n=32",
               "eval.audit_settings.eps_factors=[0.5,1,8]")


@pytest.mark.slow  # two CLI runs with the audit (~60 s on a busy 2-core box)
def test_audit_through_both_clis_with_the_wandb_logger(run_cli, tmp_path, trained_run):
    """eval=audit under advrw.eval and eval.audit=true after training (default W&B logger, offline):
    the audit block in results.json, its verdict in the console table and in W&B's summary."""
    env = {"WANDB_MODE": "offline"}
    out = tmp_path / "audited"
    proc = ok(run_cli("eval", f"ckpt={trained_run}", "eval=audit", *AUDIT_SMALL, f"hydra.run.dir={out}", env=env))
    a = results(out)["audit"]
    assert a["verdict"] in ("reliable", "flagged") and a["n"] == 32
    assert a["checks"]["unbounded"]["threshold"] == 0.01 and set(a["checks"]["convergence"]["accuracy"]) == {"5", "20"}
    assert re.search(rf"audit +{a['verdict']}", proc.stdout + proc.stderr)
    _, summary, _ = wandb_records(out)
    assert summary["test/audit"].startswith(a["verdict"]) and summary["test/audit_reliable"] == (a["verdict"] == "reliable")
    run = tmp_path / "trained_audited"
    ok(run_cli("train", "experiment=smoke", "eval.audit=true", *AUDIT_SMALL, "schedule.epochs=1",
               "schedule.burn_in=0", f"hydra.run.dir={run}"))
    t = results(run)["audit"]
    assert set(t["checks"]) == set(a["checks"]) and t["checks"]["unbounded"]["pass"] in (True, False)
