"""Weight averaging (advrw/methods/ema.py): the update against hand arithmetic, its rules, and real runs
(mid-epoch resume bitwise, best.pt chosen on the EMA's validation accuracy, ema.evaluate=both)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from advrw.core.errors import AdvrwError
from advrw.methods.ema import ModelEMA, decay_at, merge, warmup_steps, weights_of
from conftest import cli, ok, results


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_ema_matches_a_hand_computed_average_with_warm_up_and_ramp():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    ema = ModelEMA(model, decay=0.2, warmup_steps=2, ramp=True, buffers="epoch")
    hand = [p.detach().clone() for p in model.parameters()]
    bn0 = ema.module[1].running_mean.clone()
    # t = 1: copy (warm-up); t = 2: d = 0 -> 1/10; t = 3: 2/11; t >= 4: (1+d)/(10+d) >= 0.25 capped at 0.2
    expected = [0.0, 0.1, 2 / 11, 0.2, 0.2]
    g = torch.Generator().manual_seed(1)
    for t, dec in enumerate(expected, start=1):
        x, y = torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        ema.update()
        hand = [dec * h + (1 - dec) * p.detach() for h, p in zip(hand, model.parameters())]
        assert decay_at(t, decay=0.2, warmup_steps=2) == pytest.approx(dec)
        for a, b in zip(ema.module.parameters(), hand):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert int(ema.t) == 5
    live = list(model.parameters())
    assert not torch.equal(next(ema.module.parameters()), live[0])  # really an average now
    # buffers are not averaged: BN statistics stay until the epoch-end copy, then equal the live model's
    assert torch.equal(ema.module[1].running_mean, bn0)
    ema.end_epoch()
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert torch.equal(ema.module[1].num_batches_tracked, model[1].num_batches_tracked)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_constant_decay_buffers_per_step_and_state_round_trip():
    model = tiny()
    ema = ModelEMA(model, decay=0.5, warmup_steps=0, ramp=False, buffers="step")
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_var.fill_(3.0)
    ema.update()
    for a, b, p in zip(ema.module.parameters(), before, model.parameters()):
        torch.testing.assert_close(a, 0.5 * b + 0.5 * p)
    assert torch.equal(ema.module[1].running_var, model[1].running_var)
    twin = ModelEMA(tiny(), decay=0.5, ramp=False)
    twin.load_state_dict(ema.state_dict())
    assert int(twin.t) == 1 and all(torch.equal(a, b) for a, b in zip(twin.module.parameters(),
                                                                       ema.module.parameters()))
    assert warmup_steps({"warmup": 0.025, "warmup_in": "fraction"}, 4000) == pytest.approx(100)
    assert warmup_steps({"warmup": 7, "warmup_in": "steps"}, 4000) == 7


def test_weights_of_and_merge():
    state = {"model": {"w": 1}, "ema": {"model": {"w": 2}, "t": torch.tensor(3)}}
    assert weights_of(state, "raw") == {"w": 1} and weights_of(state, "ema") == {"w": 2}
    with pytest.raises(AdvrwError, match="ema.evaluate=raw"):
        weights_of({"model": {}}, "ema")
    top = merge({"raw": {"protocol": {}, "clean": 1}, "ema": {"protocol": {}, "clean": 2}})
    assert top["clean"] == 2 and top["protocol"]["top_level_weights"] == "ema" and set(top["weights"]) == {"raw", "ema"}


@pytest.mark.parametrize("override,message", [
    ("ema.decay=1.0", "ema.decay=1.0 is invalid: must be a number in [0, 1)"),
    ("ema.evaluate=mean", "ema.evaluate=mean is invalid: choose one of ema, raw, both"),
    ("ema.warmup=1.5", "ema.warmup=1.5 is invalid with ema.warmup_in=fraction"),
    ("ema.buffers=average", "ema.buffers=average is invalid: choose one of epoch, step"),
])
def test_ema_rules(cfg_train, override, message):
    from advrw.config.validation import validate_train

    validate_train(cfg_train("experiment=smoke", "ema=standard"))
    with pytest.raises(AdvrwError, match=message.replace("[", r"\[").replace(")", r"\)").replace("(", r"\(")):
        validate_train(cfg_train("experiment=smoke", "ema=standard", override))


EMA_RUN = ["experiment=smoke", "ema=standard", "ema.evaluate=both", "ema.warmup=0.1", "dataset.n_train=256",
           "dataset.val_size=64", "eval.n_eval=32",
           "eval.checkpoint=best", "weighting=vir", "minimizer=awp", "minimizer.warmup=0",
           # the rest of the recipe resumes exactly too: a per-iteration schedule, wd groups, clipping
           "schedule.lr_schedule=warmup_cosine", "schedule.step_per=iteration", "schedule.warmup=1",
           "schedule.wd_exclude=[bn,bias]", "schedule.clip_grad_norm=5"]


@pytest.mark.slow  # three short CLI runs (full, interrupted, resumed)
def test_ema_run_resumes_mid_epoch_bitwise_and_picks_best_on_the_ema(tmp_path):
    """One averaging run (VIR + AWP + warm-up cosine per iteration: EMA composes with a scheme, the
    minimizer and the schedules) interrupted mid-epoch
    and resumed equals an uninterrupted one bit for bit, raw and EMA weights both; best.pt is the
    epoch with the best validation PGD accuracy *of the EMA weights*; both weights are scored."""
    from advrw.data import build_data
    from advrw.training.build import build_model_for
    from advrw.training.loop import validate_epoch
    from omegaconf import OmegaConf

    full = tmp_path / "full"
    ok(cli("train", *EMA_RUN, f"hydra.run.dir={full}", cwd=tmp_path))
    part = tmp_path / "part"
    proc = cli("train", *EMA_RUN, f"hydra.run.dir={part}", cwd=tmp_path, env={"ADVRW_FAULT_SIGNAL": "SIGTERM@2:0"})
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert torch.load(part / "last.pt", weights_only=False)["position"]["batch"] == 1
    res = tmp_path / "res"
    ok(cli("train", f"resume={part}", f"hydra.run.dir={res}", cwd=tmp_path))
    a, b = (torch.load(p / "last.pt", weights_only=False) for p in (full, res))
    for key in ("model",):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert all(torch.equal(a["ema"]["model"][k], b["ema"]["model"][k]) for k in a["ema"]["model"])
    assert int(a["ema"]["t"]) == int(b["ema"]["t"]) == 2 * 3  # 2 epochs of 192 images in batches of 64
    assert not all(torch.equal(a["model"][k], a["ema"]["model"][k]) for k in a["model"])

    rows = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_weights"] == "ema" for r in rows)
    best = torch.load(full / "best.pt", weights_only=False)
    vals = [r["val_robust"] for r in rows]
    assert best["epoch"] == vals.index(max(vals)) + 1
    cfg = OmegaConf.create(best["config"])
    data = build_data(cfg.dataset, torch.device("cpu"))
    model = build_model_for(cfg, data, torch.device("cpu"), channels_last=False)
    model.load_state_dict(best["ema"]["model"])
    again = validate_epoch(model.eval(), data, cfg, 128)
    rec = rows[best["epoch"] - 1]
    assert (again["val_clean"], again["val_robust"]) == (rec["val_clean"], rec["val_robust"])

    r = results(full)
    assert set(r["weights"]) == {"raw", "ema"} and r["protocol"]["top_level_weights"] == "ema"
    assert r["protocol"]["checkpoint"]["weights"] == "ema" and r["protocol"]["checkpoint"]["kind"] == "best"
    assert r["weights"]["raw"]["protocol"]["checkpoint"]["weights"] == "raw"
    assert r["clean"] == r["weights"]["ema"]["clean"]
    # advrw.eval scores the same EMA weights of the same checkpoint, with the same numbers
    ok(cli("eval", f"ckpt={full}", "eval.checkpoint=best", "eval.n_eval=32", f"hydra.run.dir={tmp_path / 'ev'}",
           cwd=tmp_path))
    e = results(tmp_path / "ev")
    assert e["protocol"]["checkpoint"]["weights"] == "ema" and e["clean"] == r["weights"]["ema"]["clean"]
