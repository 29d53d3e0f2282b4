"""``python -m advrw.eval`` on a checkpoint from a real tiny training run."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ok, results


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
