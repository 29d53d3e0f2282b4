"""Every config group option and every experiment preset composes, validates and trains one step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from advrw.config import CONF_DIR
from advrw.config.validation import validate_eval, validate_train
from advrw.data import build_data
from advrw.training.step import train_step
from advrw.training.build import build_model_for, optimizer_and_scheduler, step_spec

CONF = Path(CONF_DIR)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def make(overrides, name="train"):
    return compose_config(name, *overrides)


SYNTH = ["dataset=synthetic", "dataset.image_size=16", "dataset.n_train=16", "dataset.n_test=8",
         "dataset.val_size=0", "logger=none", "schedule.batch_size=8",
         "dataset.extra_npz=null", "dataset.extra_fraction=null"]  # presets with generated data: none here


def one_step(cfg):
    data = build_data(cfg.dataset, torch.device("cpu"))
    model = build_model_for(cfg, data, torch.device("cpu"))
    opt, _ = optimizer_and_scheduler(model, cfg.schedule)
    spec = step_spec(cfg)
    spec = type(spec)(**{**spec.__dict__, "steps": 1})  # one PGD step keeps the big models quick
    before = [p.detach().clone() for p in model.parameters()]
    x, y = data.train_x[:4].float() / 255, data.train_y[:4]
    out = train_step(model, opt, x, y, spec, burn_in=False)
    assert torch.isfinite(out["loss"]) and out["w"].shape == (4,)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


BIG_MODELS = {"wrn34_20_silu", "wrn70_16_silu"}


def test_groups_have_the_expected_options():
    assert options("weighting") == ["ewat", "gairat", "mail", "margin_exp", "none", "vir"]
    assert options("defense") == ["at", "mart", "trades"]
    assert options("attack") == ["fat", "pgd"]
    assert options("ema") == ["none", "standard"]
    assert {"quick", "standard", "full", "autoattack", "nonuniform", "mail_table2", "vir_table1", "ewat_table2",
            "audit", "robustbench"} == set(
        options("eval"))
    assert len(options("experiment")) >= 13


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_steps(experiment):
    cfg = make([f"experiment={experiment}"])
    validate_train(cfg)
    paper_cfg = OmegaConf.to_container(cfg, resolve=True)
    # the same preset on synthetic data keeps its defense, scheme, attack and model
    small = make([f"experiment={experiment}", *SYNTH, "schedule.burn_in=0"])
    for key in ("defense", "weighting", "model"):
        assert OmegaConf.to_container(small[key], resolve=True) == paper_cfg[key]
    small.model.name = "tiny"  # each architecture is stepped once in the model-group test
    one_step(small)


@pytest.mark.parametrize("group, option", [(g, o) for g in ("model", "defense", "weighting", "schedule", "attack", "ema")
                                           for o in options(g)])
def test_every_group_option_composes_and_steps(group, option):
    cfg = make([f"{group}={option}", *SYNTH, "schedule.burn_in=0", "schedule.epochs=2", "schedule.milestones=[2]"])
    validate_train(cfg)
    if option in BIG_MODELS:  # hundreds of millions of parameters: built without memory, not stepped on a CPU
        data = build_data(cfg.dataset, torch.device("cpu"))
        with torch.device("meta"):
            model = build_model_for(cfg, data, None, channels_last=False)
        assert sum(p.numel() for p in model.parameters()) > 1e8
        return
    one_step(cfg)


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_option_composes(option):
    extra = ["dataset.root=/tmp/x"] if option in ("imagefolder", "npz", "tinyimagenet") else []
    cfg = make([f"dataset={option}", *extra])
    validate_train(cfg)
    assert cfg.attack.eps == cfg.dataset.threat.eps


@pytest.mark.parametrize("option", options("eval"))
def test_every_eval_option_composes(option):
    cfg = make([f"eval={option}", "ckpt=x.pt"], name="eval")
    validate_eval(cfg)
    train_cfg = make([f"eval={option}"])
    validate_train(train_cfg)


def test_paper_defaults():
    vir_at = make(["weighting=vir"])
    assert (vir_at.weighting.alpha, vir_at.weighting.gamma, vir_at.weighting.beta) == (7.0, 10.0, 0.007)
    assert vir_at.attack.init == "normal" and vir_at.schedule.burn_in == 75 and vir_at.schedule.lr == 0.01
    assert vir_at.schedule.weight_decay == 0.0035 and list(vir_at.schedule.milestones) == [75, 90]
    assert vir_at.model.name == "resnet18" and vir_at.schedule.epochs == 115
    vir_tr = make(["weighting=vir", "defense=trades"])
    assert (vir_tr.weighting.alpha, vir_tr.weighting.gamma, vir_tr.weighting.beta) == (8.0, 3.0, 1.6)
    assert vir_tr.defense.beta_trades == 5.0
    mail_tr = make(["experiment=mail_trades_rn18_cifar10"])
    assert (mail_tr.weighting.gamma, mail_tr.weighting.beta, mail_tr.schedule.burn_in) == (2.0, 0.0, 74)
    assert mail_tr.schedule.epochs == 120
    zeng = make(["experiment=zeng_trades_smallcnn_mnist"])
    assert zeng.attack.weighted and zeng.attack.alpha == 2.0 and zeng.attack.eps == 0.3 and zeng.attack.steps == 40
    ew = make(["experiment=ewat_trades_cifar10"])
    assert ew.weighting.combine == "add" and ew.defense.beta_trades == 5.5 and ew.schedule.burn_in == 0
    g = make(["experiment=gairat_rn18_cifar10"])
    assert g.attack.init == "uniform" and g.schedule.burn_in == 59 and g.attack.steps == 10  # K of kappa
    me = make(["weighting=margin_exp"])
    assert me.weighting.alpha == 0.1 and me.weighting.detach is False
    # SPEC 3: the scheme's combos attack with weighted PGD (overridable); SPEC 2: each paper's start clamp
    for d in ("at", "trades", "mart"):
        assert make(["weighting=margin_exp", f"defense={d}"]).attack.weighted is True
    assert make(["weighting=margin_exp", "attack.weighted=false"]).attack.weighted is False
    clamps = {("none", "at"): True, ("none", "trades"): False, ("none", "mart"): False, ("gairat", "at"): True,
              ("mail", "at"): False, ("mail", "trades"): False, ("vir", "at"): False, ("vir", "trades"): False,
              ("margin_exp", "at"): False, ("margin_exp", "trades"): False}
    for (w, d), clamp in clamps.items():
        assert make([f"weighting={w}", f"defense={d}"]).attack.clamp_start is clamp, (w, d)
    assert make(["defense=trades", "attack.clamp_start=true"]).attack.clamp_start is True
    assert g.weighting.half_steps == "paper"
    fat = make(["experiment=fat_rn18_cifar10"])
    assert (fat.attack.name, fat.attack.tau, list(fat.attack.tau_milestones), fat.attack.omega) == ("fat", 0, [50, 90], 0.001)
    assert fat.attack.init == "uniform" and fat.attack.clamp_start and fat.attack.steps == 10
    assert (fat.schedule.lr, fat.schedule.weight_decay, fat.schedule.epochs) == (0.01, 0.0035, 120)
    assert step_spec(fat).at_epoch(60).current_tau == 1 and step_spec(make([])).tau is None
    # the command line still wins over presets and combos
    assert make(["weighting=vir", "defense=trades", "weighting.gamma=5"]).weighting.gamma == 5
    assert make(["experiment=smoke", "weighting=vir", "weighting.beta=0.1"]).weighting.beta == 0.1
