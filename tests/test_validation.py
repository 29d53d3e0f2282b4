"""Every bad value is refused before any work and before any run dir exists (issue 6, bad input).

Most rows call the command-line precheck in-process (what ``python -m advrw.train`` runs first);
a few go through the real CLI to show that no ``outputs/`` dir appears.
"""

from __future__ import annotations

import pytest

from advrw.config.precheck import precheck
from advrw.config.validation import validate_train

SMOKE = ["experiment=smoke"]

# (command-line arguments, what the one line must say)
BAD_TRAIN = [
    # types
    (["schedule.lr=abc"], "schedule.lr='abc' is invalid: must be a finite number > 0"),
    (["attack.eps=big"], "attack.eps='big' is invalid"),
    (["weighting=margin_exp", "weighting.alpha=abc"], "weighting.alpha='abc' is invalid"),
    (["schedule.epochs=two"], "schedule.epochs='two' is invalid: must be an integer >= 1"),
    (["schedule.milestones=[a]"], "schedule.milestones=['a'] is invalid"),
    (["schedule.batch_size=1.5"], "schedule.batch_size=1.5 is invalid: must be an integer >= 1"),
    (["schedule.nesterov=maybe"], "schedule.nesterov='maybe' is invalid: must be true or false"),
    # ranges
    (["schedule.lr=0"], "schedule.lr=0 is invalid: must be > 0"),
    (["schedule.momentum=-1"], "schedule.momentum=-1 is invalid: must be >= 0 and < 1"),
    (["schedule.momentum=1"], "schedule.momentum=1 is invalid"),
    (["schedule.weight_decay=-0.1"], "schedule.weight_decay=-0.1 is invalid: must be >= 0"),
    (["schedule.epochs=0"], "schedule.epochs=0 is invalid"),
    (["schedule.batch_size=0"], "schedule.batch_size=0 is invalid"),
    (["schedule.eval_batch_size=0"], "schedule.eval_batch_size=0 is invalid"),
    (["checkpoint_every=0"], "checkpoint_every=0 is invalid: must be an integer >= 1"),
    (["stop_after=-1"], "stop_after=-1 is invalid: must be an integer >= 1 or null"),
    (["stop_after=0"], "stop_after=0 is invalid"),
    (["schedule.milestones=[2,1]"], "schedule.milestones=[2, 1] is invalid: must be a list of increasing integers"),
    (["schedule.milestones=[5]"], "in 1..schedule.epochs (2)"),
    (["schedule.lr=inf"], "schedule.lr=inf is invalid"),
    (["schedule.momentum=0", "schedule.nesterov=true"], "schedule.nesterov=true is invalid"),
    (["validation.steps=0"], "validation.steps=0 is invalid"),
    (["validation.step=0"], "validation.step=0 is invalid"),
    (["validation.step=1"], "validation.step=1 is invalid: must be <= eps"),
    (["validation.n=0"], "validation.n=0 is invalid"),
    (["validation.n=65"], "validation.n=65 is invalid: must be <= dataset.val_size (64)"),
    (["dataset.n_train=0"], "dataset.n_train=0 is invalid"),
    (["dataset.val_size=-1"], "dataset.val_size=-1 is invalid"),
    (["dataset.val_size=2000"], "dataset.val_size=2000 is invalid: must be < dataset.n_train=1024"),
    (["eval.n_eval=0"], "eval.n_eval=0 is invalid"),
    (["eval.n_eval=129"], "eval.n_eval=129 is invalid: must be <= dataset.n_test (128)"),
    (["eval.batch_size=0"], "eval.batch_size=0 is invalid"),
    # every scheme's hyperparameters, nan/inf included, at validation time (not after burn-in)
    (["weighting=mail", "weighting.gamma=nan"], "weighting.gamma=nan is invalid"),
    (["weighting=mail", "weighting.beta=inf"], "weighting.beta=inf is invalid"),
    (["weighting=mail", "weighting.scale=0"], "weighting.scale=0 is invalid"),
    (["weighting=mail", "weighting.pm=foo"], "weighting.pm='foo' is unknown: choose one of adv, nat, dif"),
    (["weighting=mail", "weighting.normalize=mean"], "weighting.normalize='mean' is unknown"),
    (["weighting=vir", "weighting.alpha=-1"], "weighting.alpha=-1 is invalid"),
    (["weighting=vir", "weighting.gamma=nan"], "weighting.gamma=nan is invalid"),
    (["weighting=vir", "weighting.beta=-1"], "weighting.beta=-1 is invalid"),
    (["weighting=vir", "weighting.factors=both2"], "weighting.factors='both2' is unknown: choose one of both, sv, sd"),
    (["weighting=ewat", "weighting.tau=0"], "weighting.tau=0 is invalid: must be > 0"),
    (["weighting=gairat", "weighting.lam=nan"], "weighting.lam=nan is invalid"),
    (["weighting=gairat", "weighting.normalize=1"], "weighting.normalize=1 is invalid: must be true or false"),
    (["weighting=margin_exp", "weighting.alpha=-0.1"], "weighting.alpha=-0.1 is invalid"),
    (["weighting.combine=sum"], "weighting.combine='sum' is unknown"),
    (["weighting.detach=no"], "weighting.detach='no' is invalid"),
    (["weighting=vir", "+weighting.gama=3"], "weighting.gama is not a hyperparameter of weighting=vir"),
    (["defense=trades", "defense.beta_trades=nan"], "defense.beta_trades=nan is invalid"),
    (["defense=mart", "defense.lambda_mart=-1"], "defense.lambda_mart=-1 is invalid"),
    (["defense=trades", "+defense.beta=3"], "defense.beta is not a setting of defense=trades: it has beta_trades, detach_nat"),
    (["attack.weighted=true", "attack.alpha=-1"], "attack.alpha=-1 is invalid"),
    # choices
    (["dataset.subset=firstn"], "dataset.subset='firstn' is unknown: choose one of stratified, random, first"),
    (["eval.subset=frist"], "eval.subset='frist' is unknown: choose one of stratified, random, first (did you mean first?)"),
    (["eval.checkpoint=middle"], "eval.checkpoint='middle' is unknown"),
    (["schedule.lr_schedule=step"], "schedule.lr_schedule='step' is unknown"),
    (["+eval.attacks.x={kind:pgd,steps:0,step:0.001}"], "eval.attacks.x.steps=0 is invalid"),
    # misspelled keys and groups, unread +keys
    (["defence=trades"], "defence is not a config key or group (did you mean defense?)"),
    (["+defence=trades"], "+defence=trades adds a top-level key 'defence' that nothing reads (did you mean defense?)"),
    (["weighting=vri"], "weighting=vri is unknown: choose one of ewat, gairat, mail, margin_exp, none, vir (did you mean vir?)"),
    (["schedule.lrr=0.1"], "schedule.lrr is not a config key or group (did you mean schedule.lr?)"),
    (["shedule.lr=0.1"], "shedule.lr is not a config key or group (did you mean schedule.lr?)"),
    (["experiment=smok"], "(did you mean smoke?)"),
    # every job of a sweep; evaluation grids never retrain
    (["-m", "schedule.momentum=0.9,0.5,-1"], "schedule.momentum=-1 is invalid"),
    (["-m", "eval.alpha_test=0.5,1,2"], "write eval.alpha_test=[0.5,1,2]"),
    (["-m", "seed=0,1", "eval.rho=0,1"], "write eval.rho=[0,1]"),
    (["-m", "seed=0,1", "eval.n_eval=8,16"], "would retrain once per evaluation setting"),
    (["-m", "eval=quick,full"], "python -m advrw.eval -m ckpt=<run dir> eval=quick,full"),
    # files the run would only miss after its dir exists
    (["dataset=imagefolder", "dataset.root=/nonexistent/advrw-set"], "dataset.root='/nonexistent/advrw-set' does not exist"),
    (["dataset=cifar10", "dataset.root=/nonexistent/advrw-data"], "dataset.download=false"),
    (["dataset.extra_npz=/nonexistent/e.npz"], "dataset.extra_npz='/nonexistent/e.npz' does not exist"),
    (["resume=/nonexistent/run"], "resume=/nonexistent/run has no checkpoint"),
    # degenerate settings (issue 15) and Hydra's own groups
    (["schedule.batch_size=5000", "dataset.n_train=3000", "dataset.val_size=0"],
     "schedule.batch_size=5000 is invalid: must be in 1..3000"),
    (["eval.only=[]"], "eval.only=[] is invalid: name at least one attack"),
    (["minimizer=awp", "minimizer.warmup=100"], "minimizer.warmup=100 is invalid: must be in 0..1"),
    (["hydra/launcher=bogus"], "hydra/launcher=bogus is unknown: choose one of"),
    (["-m", "seed=0,1", "hydra/sweeper=nope"], "hydra/sweeper=nope is unknown"),
]


def _refused(capsys, config_name, validate, args):
    with pytest.raises(SystemExit) as info:
        precheck(config_name, validate, args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advrw: error: "), err
    return err[0]


@pytest.mark.parametrize("args, expected", BAD_TRAIN, ids=[" ".join(a) for a, _ in BAD_TRAIN])
def test_bad_train_value_is_one_line_before_any_work(capsys, tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    line = _refused(capsys, "train", validate_train, [*SMOKE, *args])
    assert expected in line, line
    assert "attack." not in line or args[0].startswith(("attack", "+eval", "dataset=cifar")), line
    assert not (tmp_path / "outputs").exists()


def test_good_command_lines_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (SMOKE, [*SMOKE, "weighting=vir", "weighting.gamma=3"], [*SMOKE, "eval.alpha_test=[0.5,1]"],
                 [*SMOKE, "stop_after=null", "validation.n=8", "+n_eval=16"],
                 ["-m", *SMOKE, "seed=0,1", "eval.alpha_test=[0.5,1]", "weighting=vir,mail"]):
        precheck("train", validate_train, args)  # returns: no exit


def test_eval_grid_and_checkpoints(capsys, tmp_path, monkeypatch):
    from advrw.eval import _validate_cli

    monkeypatch.chdir(tmp_path)
    line = _refused(capsys, "eval", _validate_cli, ["-m", "ckpt=a.pt,b.pt", "eval.alpha_test=0.5,1"])
    assert "write eval.alpha_test=[0.5,1]" in line
    (tmp_path / "junk.pt").write_text("junk")
    line = _refused(capsys, "eval", _validate_cli, ["ckpt=junk.pt"])
    assert "ckpt=junk.pt is unreadable" in line
    line = _refused(capsys, "eval", _validate_cli, ["ckpt=none.pt", "eval.subset=all"])
    assert "eval.subset='all' is unknown" in line


@pytest.mark.parametrize("args, expected", [
    (["schedule.lr=abc"], "schedule.lr='abc' is invalid"),
    (["-m", "schedule.momentum=0.9,0.5,-1"], "schedule.momentum=-1 is invalid"),
    # only knowable once the data is loaded: the refused run's Hydra-only dir is removed
    (["dataset.n_test=null", "eval.n_eval=100000"], "eval.n_eval=100000 is larger than the test set (128 examples)"),
])
def test_cli_refusals_leave_no_outputs_dir(run_cli, tmp_path, args, expected):
    before = sorted(p for p in tmp_path.rglob("*"))
    proc = run_cli("train", *SMOKE, *args)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or not any(outputs.iterdir()), sorted(outputs.rglob("*"))
    assert sorted(p for p in tmp_path.rglob("*") if not p.is_relative_to(outputs) and ".cache" not in p.parts) \
        == [p for p in before if ".cache" not in p.parts]


def test_resume_is_validated_against_the_checkpoints_config(capsys, tmp_path, monkeypatch):
    """``resume=`` with a longer schedule passes (the checkpoint's milestones fit); a bad value does not."""
    import torch
    from conftest import compose_config
    from omegaconf import OmegaConf

    monkeypatch.chdir(tmp_path)
    cfg = compose_config("train", *SMOKE, "stop_after=1")
    torch.save({"config": OmegaConf.to_container(cfg, resolve=True), "optimizer": {}, "model": {}}, tmp_path / "last.pt")
    precheck("train", validate_train, [f"resume={tmp_path}", "schedule.epochs=3"])
    line = _refused(capsys, "train", validate_train, [f"resume={tmp_path}", "schedule.epochs=0"])
    assert "schedule.epochs=0 is invalid" in line
    # the one resume merge (advrw.config.resume) refuses a change a resume may not make, before any job
    line = _refused(capsys, "train", validate_train, [f"resume={tmp_path}", "schedule.momentum=-1"])
    assert "schedule.momentum=-1 does not match the checkpoint's schedule.momentum=0.9" in line
    torch.save({"model": {}}, tmp_path / "plain.pt")
    line = _refused(capsys, "train", validate_train, [f"resume={tmp_path / 'plain.pt'}"])
    assert "is not an advrw training checkpoint" in line
    (tmp_path / "bad.pt").write_bytes(b"\x80junk")
    assert "is unreadable" in _refused(capsys, "train", validate_train, [f"resume={tmp_path / 'bad.pt'}"])


def test_sweeper_params_become_jobs_and_the_command_line_wins():
    from advrw.config.precheck import job_overrides, with_sweeper_params

    merged = with_sweeper_params({"seed": "0,1", "schedule.momentum": "0.9,-1"}, ["schedule.momentum=0.5", "x=1"])
    assert merged == ["seed=0,1", "schedule.momentum=0.5", "x=1"]
    jobs = job_overrides(with_sweeper_params({"seed": "0,1", "weighting": "vir,mail"}, ["experiment=smoke"]), True)
    assert len(jobs) == 4 and ["seed=1", "weighting=mail", "experiment=smoke"] in jobs
