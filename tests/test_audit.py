"""The gradient-masking audit: a deliberately masked model is flagged, a trained one passes."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from advrw.data import build_data
from advrw.records.audit_verdict import verdict_text
from advrw.evaluation.suite import run_suite
from advrw.models import build_model
from advrw.training.step import StepSpec, train_step

EPS = 8 / 255


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = build_data({"name": "synthetic", "image_size": 12, "n_train": 512, "n_test": 96, "val_size": 0,
                       "augment": False, "seed": 1}, "cpu")
    model = build_model("tiny", 10, in_channels=3, image_size=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    spec = StepSpec(defense="at", eps=EPS, step=2 / 255, steps=3, init="uniform")
    x_all, y_all = data.train_x.float() / 255, data.train_y
    for _ in range(6):
        for i in range(0, len(y_all), 64):
            train_step(model, opt, x_all[i:i + 64], y_all[i:i + 64], spec)
    return model.eval(), data.test_x.float() / 255, data.test_y


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


def _ev(cfg_eval, **settings):
    ev = cfg_eval("eval=audit", f"eval.eps={EPS}", "eval.batch_size=64", "eval.audit_settings.steps=[5,10,40]",
                  "eval.audit_settings.losses_steps=40", "eval.audit_settings.square_queries=300",
                  "eval.audit_settings.n=48").eval
    out = OmegaConf.to_container(ev, resolve=True)
    out["audit_settings"].update(settings)
    return out


def test_audit_passes_a_trained_model_and_flags_masked_ones(trained, cfg_eval):
    model, x, y = trained
    ev = _ev(cfg_eval)
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


def test_audit_flags_a_randomised_model(trained, cfg_eval):
    model, x, y = trained
    res, _ = run_suite(Noisy(model), x, y, _ev(cfg_eval, eot=2), num_classes=10, progress=False)
    a = res["audit"]
    assert "randomness" in a["reasons"] and a["checks"]["randomness"]["value"] > 0 and a["eot"] == 2
    assert a["checks"]["autoattack_checks"]["warnings"]  # AutoAttack's own check agrees
