"""The evaluation suite on a briefly trained tiny model: attack ordering, the non-uniform metrics, and the
gradient-masking audit (a deliberately masked model is flagged, the trained one passes)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from advrw.data import build_data
from advrw.models import build_model
from advrw.training.step import StepSpec, train_step
from advrw.evaluation.suite import black_box, run_suite, white_box
from advrw.records.audit_verdict import verdict_text

EPS = 8 / 255


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    data = build_data({"name": "synthetic", "image_size": 12, "n_train": 512, "n_test": 96, "val_size": 0,
                       "augment": False, "seed": 1}, "cpu")
    model = build_model("tiny", 10, in_channels=3, image_size=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    spec = StepSpec(defense="at", eps=EPS, step=2 / 255, steps=3, init="uniform")
    x_all, y_all = data.train_x.float() / 255, data.train_y
    for epoch in range(6):
        for i in range(0, len(y_all), 64):
            train_step(model, opt, x_all[i:i + 64], y_all[i:i + 64], spec)
    model.eval()
    return model, data.test_x.float() / 255, data.test_y


def test_model_learned(tiny):
    model, x, y = tiny
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.5  # far above chance (0.1)


def _ev(**kw):
    ev = {"eps": EPS, "seed": 0, "batch_size": 64, "alpha_test": [], "rho": [], "nonuniform_attack": "pgd20",
          "attacks": {"pgd20": {"kind": "pgd", "objective": "ce", "steps": 20, "step": EPS / 10, "restarts": 1,
                                "init": "uniform"}}}
    ev.update(kw)
    return ev


ATTACKS = {
    "fgsm": {"kind": "fgsm"},
    "pgd10": {"kind": "pgd", "objective": "ce", "steps": 10, "step": EPS / 4, "restarts": 2, "init": "uniform"},
    "cw": {"kind": "pgd", "objective": "cw", "steps": 10, "step": EPS / 4, "restarts": 1, "init": "uniform"},
    "ls": {"kind": "pgd", "objective": "scaled_ce", "scale": 10.0, "steps": 10, "step": EPS / 4, "restarts": 1,
           "init": "uniform"},
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_white_box_attacks_bounded_and_never_help(tiny, name, monkeypatch):
    model, x, y = tiny
    seen = []
    import advrw.evaluation.suite as suite

    real_pgd, real_fgsm = suite.pgd, suite.fgsm

    def spy(fn):
        def wrapped(m, xb, yb, **kw):
            res = fn(m, xb, yb, **kw)
            seen.append((xb, res.x_adv))
            return res
        return wrapped

    monkeypatch.setattr(suite, "pgd", spy(real_pgd))
    monkeypatch.setattr(suite, "fgsm", spy(real_fgsm))
    out = white_box(model, x, y, ATTACKS[name], EPS, batch_size=64, seed=0, progress=False)
    assert seen
    for xb, xa in seen:
        assert (xa - xb).abs().max() <= EPS + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert out.robust.float().mean() <= clean.float().mean()
    assert out.robust.float().mean() < clean.float().mean()  # the attack does something on this model


def test_suite_skips_misclassified_and_reports_protocols(tiny):
    model, x, y = tiny
    res, arrays = run_suite(model, x, y, _ev(attacks=ATTACKS), num_classes=10, progress=False)
    assert set(res["attacks"]) == set(ATTACKS)
    for name, e in res["attacks"].items():
        p = e["protocol"]
        assert p["eps"] == pytest.approx(EPS) and p["n_eval"] == len(y) and "steps" in p and "step" in p
        assert e["robust_accuracy"] <= res["clean"]["accuracy"]
        assert len(e["per_class"]) == 10 and sum(map(sum, e["confusion"])) == len(y)
    assert res["attacks"]["pgd10"]["protocol"]["restarts"] == 2
    worst = res["worst_case"]["robust_accuracy"]
    assert worst <= min(e["robust_accuracy"] for e in res["attacks"].values())


def test_nonuniform_metrics_order(tiny):
    """A_sa = A_rob at alpha 0; A_sa <= A_rob always; weighted PGD does at least as much damage."""
    model, x, y = tiny
    res, arrays = run_suite(model, x, y, _ev(alpha_test=[0.0, 1.0, 2.0], rho=[0.0, 1.0]), num_classes=10,
                            progress=False)
    nu = res["nonuniform"]
    assert nu["alpha_test"]["0.0"]["A_sa"] == pytest.approx(nu["A_rob"])
    for a in ("1.0", "2.0"):
        assert nu["alpha_test"][a]["A_sa"] <= nu["A_rob"] + 1e-12
        # stated tolerance: the weighted attack is a heuristic maximiser, allow 1 point of slack
        assert nu["alpha_test"][a]["A_tr"] <= nu["alpha_test"][a]["A_sa"] + 0.01
    assert nu["dro"]["0.0"]["accuracy"] == pytest.approx(nu["A_rob"])
    assert nu["dro"]["1.0"]["loss"] >= nu["dro"]["0.0"]["loss"]
    for w in arrays["weights"].values():
        assert float(w.sum()) == pytest.approx(1.0)


def test_autoattack_at_most_pgd(tiny):
    model, x, y = tiny
    x, y = x[:32], y[:32]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    pgd = white_box(model, x, y, ATTACKS["pgd10"], EPS, batch_size=64, seed=0, only=clean, progress=False)
    aa = black_box(model, x, y, {"kind": "autoattack", "version": "standard"}, EPS, batch_size=64, seed=0,
                   only=clean, desc="aa", progress=False)
    assert (aa.robust & clean).float().mean() <= (pgd.robust & clean).float().mean()
    assert aa.protocol["attack"] == "autoattack" and aa.protocol["eps"] == pytest.approx(EPS)
    assert "warnings" in aa.extra


def test_apgd_ce_at_most_pgd20_with_its_own_protocol(tiny):
    model, x, y = tiny
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    pgd20 = {"kind": "pgd", "objective": "ce", "steps": 20, "step": EPS / 10, "restarts": 1, "init": "uniform"}
    ev = _ev(attacks={"pgd20": pgd20, "apgd_ce": {"kind": "apgd_ce", "restarts": 1}})
    res, _ = run_suite(model, x, y, ev, num_classes=10, progress=False)
    a, p = res["attacks"]["apgd_ce"], res["attacks"]["pgd20"]
    assert a["robust_accuracy"] <= p["robust_accuracy"] < clean.float().mean().item()
    proto = a["protocol"]
    assert (proto["attack"], proto["attacks"], proto["n_iter"], proto["restarts"], proto["loss"]) == (
        "apgd_ce", ["apgd-ce"], 100, 1, "ce")
    assert proto["library"] == "pyautoattack" and "target_classes" not in proto and "per_attack" not in a


class Scaled(nn.Module):
    """Logits x 1e4: the softmax saturates, CE's gradient is 0 in fp32 (masked), the argmax is unchanged."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 1e4 * self.inner(x)


class Quantised(nn.Module):
    """A non-differentiable input quantiser (round to 8 levels) in front: every input gradient is 0."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 7) / 7)


class Noisy(nn.Module):
    """A randomised model: Gaussian noise on the logits at every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + 0.5 * torch.randn(len(x), 10)


def _audit_ev(cfg_eval, **settings):
    ev = cfg_eval("eval=audit", f"eval.eps={EPS}", "eval.batch_size=64", "eval.audit_settings.steps=[5,10,40]",
                  "eval.audit_settings.losses_steps=40", "eval.audit_settings.square_queries=300",
                  "eval.audit_settings.n=48").eval
    out = OmegaConf.to_container(ev, resolve=True)
    out["audit_settings"].update(settings)
    return out


def test_audit_passes_a_trained_model_and_flags_masked_ones(tiny, cfg_eval):
    model, x, y = tiny
    ev = _audit_ev(cfg_eval)
    res, _ = run_suite(model, x, y, ev, num_classes=10, progress=False)
    a = res["audit"]
    assert a["verdict"] == "reliable", a
    assert set(a["checks"]) == {"unbounded", "convergence", "black_box", "loss_choice", "eps_sweep", "randomness",
                                "autoattack_checks"}
    for c in a["checks"].values():
        assert {"value", "threshold", "pass", "meaning"} <= set(c)
    assert a["checks"]["unbounded"]["value"] == 0.0 and verdict_text(res) == "reliable"
    scaled, _ = run_suite(Scaled(model), x, y, ev, num_classes=10, progress=False)
    assert scaled["audit"]["verdict"] == "flagged"
    assert {"unbounded", "loss_choice"} <= set(scaled["audit"]["reasons"])
    assert res["clean"] == scaled["clean"]  # the same classifier: only its gradients are hidden
    quant, _ = run_suite(Quantised(model), x, y, ev, num_classes=10, progress=False)
    assert {"unbounded", "black_box"} <= set(quant["audit"]["reasons"])
    assert verdict_text(quant).startswith("flagged: ")


def test_audit_flags_a_randomised_model(tiny, cfg_eval):
    model, x, y = tiny
    res, _ = run_suite(Noisy(model), x, y, _audit_ev(cfg_eval, eot=2), num_classes=10, progress=False)
    a = res["audit"]
    assert "randomness" in a["reasons"] and a["checks"]["randomness"]["value"] > 0 and a["eot"] == 2
    assert a["checks"]["autoattack_checks"]["warnings"]  # AutoAttack's own check agrees
