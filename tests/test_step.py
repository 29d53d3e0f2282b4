"""Tests for advrw.training.step: one adversarial training step for every defense x weighting scheme."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advrw.attacks import pgd
from advrw.methods.defenses import defense_loss
from advrw.training.step import StepSpec, adversarial_examples, train_step
from advrw.methods.weighting import compute_weights, gairat



C = 3
N = 6
DEFENSES = ["at", "trades", "mart"]
SCHEMES = ["none", "gairat", "mail", "vir", "ewat", "margin_exp"]
STEPS = 2


class TinyBN(nn.Module):
    """conv(3->4, s2)-BN-ReLU-flatten-linear(4*3*3 -> C) on 3x6x6 inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, C)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def setup(seed=0):
    torch.manual_seed(seed)
    model = TinyBN()
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.rand(N, 3, 6, 6, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt, x, y


def spec_for(defense, scheme, **over):
    hp = {"gairat": {"steps": STEPS, "lam": -1.0}, "margin_exp": {"alpha": 1.0},
          "mail": {"gamma": 2.0, "beta": 0.0}, "vir": {}}.get(scheme, {})
    kw = dict(defense=defense, scheme=scheme, scheme_hparams=hp, eps=0.05, step=0.02, steps=STEPS,
              init="uniform", detach=scheme != "margin_exp", combine="add" if scheme == "ewat" else "multiply",
              weighted_attack=scheme == "margin_exp",
              defense_kwargs={"trades": {"beta_trades": 6.0}, "mart": {"lambda_mart": 5.0}}.get(defense, {}))
    kw.update(over)
    return StepSpec(**kw)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("defense", DEFENSES)
def test_train_step_runs_every_combination(defense, scheme):
    model, opt, x, y = setup()
    before = params_of(model)
    out = train_step(model, opt, x, y, spec_for(defense, scheme), generator=torch.Generator().manual_seed(1))
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert not out["loss"].requires_grad
    assert out["w"].shape == (N,) and out["w"].dtype == torch.float32
    assert torch.isfinite(out["w"]).all() and (out["w"] >= 0).all()
    assert not out["w"].requires_grad
    after = params_of(model)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert 0 <= out["correct_adv"].item() <= N
    if defense in ("trades", "mart"):
        assert 0 <= out["correct_nat"].item() <= N
    assert model.training


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("defense", DEFENSES)
def test_burn_in_gives_exact_ones(defense, scheme):
    model, opt, x, y = setup()
    out = train_step(model, opt, x, y, spec_for(defense, scheme), burn_in=True,
                     generator=torch.Generator().manual_seed(1))
    assert torch.equal(out["w"], torch.ones(N))
    assert torch.isfinite(out["loss"])


def test_burn_in_trains_the_plain_defense():
    # EWAT's additive form during burn-in falls back to w = 1 multiplied: the step is the plain
    # defense, identical to scheme 'none'.
    outs = []
    for scheme, combine in (("ewat", "add"), ("none", "multiply")):
        model, opt, x, y = setup()
        out = train_step(model, opt, x, y, spec_for("trades", scheme, combine=combine), burn_in=True,
                         generator=torch.Generator().manual_seed(1))
        outs.append((out["loss"], params_of(model)))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b)


def test_gairat_gets_kappa_from_the_attack():
    model, opt, x, y = setup(seed=2)
    spec = spec_for("at", "gairat", steps=4, step=0.02, eps=0.08, scheme_hparams={"steps": 4, "lam": -1.0})
    twin = copy.deepcopy(model)
    _, kappa = adversarial_examples(twin, x, y, spec, generator=torch.Generator().manual_seed(9))
    assert kappa is not None and kappa.dtype == torch.long
    assert ((kappa >= 0) & (kappa <= 4)).all()
    out = train_step(model, opt, x, y, spec, generator=torch.Generator().manual_seed(9))
    expected = gairat(None, None, y, kappa, lam=-1.0, steps=4)
    torch.testing.assert_close(out["w"], expected)


def test_gairat_weights_not_all_equal_on_mixed_batch():
    # A model that gets some examples right and some wrong gives different kappa, hence weights.
    model, opt, x, y = setup(seed=2)
    with torch.no_grad():
        model.eval()
        pred = model(x).argmax(1)
        model.train()
    y = pred.clone()
    y[: N // 2] = (pred[: N // 2] + 1) % C  # first half wrong from the start (kappa 0 likely)
    spec = spec_for("at", "gairat", eps=0.01, step=0.005, steps=4, scheme_hparams={"steps": 4})
    out = train_step(model, opt, x, y, spec, generator=torch.Generator().manual_seed(3))
    assert out["w"].max() > out["w"].min() + 1e-3
    torch.testing.assert_close(out["w"].mean(), torch.tensor(1.0))


def test_step_reads_a_schemes_declared_needs(monkeypatch):
    """A new scheme gets kappa, K and p(x) by declaring them: the step never tests a scheme's name."""
    from advrw.methods import weighting

    seen = {}

    def probe(z_nat, z_adv, y, kappa=None, *, steps=0):
        seen.update(z_nat=z_nat, kappa=kappa, steps=steps)
        return torch.ones(len(y))

    monkeypatch.setitem(weighting.SCHEMES, "probe", probe)
    monkeypatch.setitem(weighting.NEEDS, "probe", weighting.Needs(natural=lambda hp: True, kappa=True, steps=True))
    model, opt, x, y = setup()
    train_step(model, opt, x, y, spec_for("at", "probe", steps=3), generator=torch.Generator().manual_seed(0))
    assert seen["steps"] == 3 and seen["z_nat"] is not None
    assert seen["kappa"] is not None and ((seen["kappa"] >= 0) & (seen["kappa"] <= 3)).all()
    monkeypatch.setitem(weighting.NEEDS, "probe", weighting.Needs())
    train_step(model, opt, x, y, spec_for("at", "probe", steps=3), generator=torch.Generator().manual_seed(0))
    assert seen["kappa"] is None and seen["z_nat"] is None and seen["steps"] == 0


def test_non_gairat_has_no_kappa():
    model, _, x, y = setup()
    _, kappa = adversarial_examples(model, x, y, spec_for("at", "mail"), generator=torch.Generator().manual_seed(0))
    assert kappa is None


@pytest.mark.parametrize("defense,scheme", [("at", "mail"), ("trades", "vir"), ("mart", "gairat"),
                                            ("at", "margin_exp"), ("trades", "ewat")])
def test_step_loss_matches_recomputation(defense, scheme):
    """The reported loss is the weighted defense loss of the same attack, recomputed by hand."""
    model, opt, x, y = setup(seed=4)
    spec = spec_for(defense, scheme)
    twin = copy.deepcopy(model)
    x_adv, kappa = adversarial_examples(twin, x, y, spec, generator=torch.Generator().manual_seed(5))
    twin.train()
    z_nat = twin(x)
    z_adv = twin(x_adv)
    w = compute_weights(scheme, z_nat, z_adv, y, kappa, detach=spec.detach, **spec.scheme_hparams)
    expected, _ = defense_loss(defense, z_nat, z_adv, y, w, combine=spec.combine, **spec.defense_kwargs)
    out = train_step(model, opt, x, y, spec, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out["loss"], expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["w"], w.detach().float(), rtol=1e-5, atol=1e-6)


def test_trades_attack_uses_kl_to_natural_prediction():
    model, _, x, y = setup(seed=6)
    model.train()
    spec = spec_for("trades", "none", init="normal")
    x_adv, _ = adversarial_examples(model, x, y, spec, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.eval()
        ref = model(x)
        model.train()
    expected = pgd(model, x, y, eps=spec.eps, step=spec.step, steps=spec.steps, init="normal", objective="kl",
                   ref_logits=ref, generator=torch.Generator().manual_seed(2)).x_adv
    torch.testing.assert_close(x_adv, expected)
    assert (x_adv - x).abs().max() <= spec.eps + 1e-6


@pytest.mark.parametrize("defense,scheme", [("at", "none"), ("trades", "vir"), ("mart", "margin_exp"),
                                            ("at", "gairat"), ("trades", "ewat")])
def test_bf16_autocast_step(defense, scheme):
    model, opt, x, y = setup()
    before = params_of(model)
    out = train_step(model, opt, x, y, spec_for(defense, scheme, amp_dtype=torch.bfloat16),
                     generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out["loss"])
    assert out["w"].shape == (N,) and torch.isfinite(out["w"]).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, params_of(model)))
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("defense,weighted,expected", [
    ("at", False, "ce"), ("mart", False, "ce"), ("trades", False, "kl"),
    ("at", True, "weighted_ce"), ("mart", True, "weighted_ce"), ("trades", True, "weighted_kl"),
])
def test_attack_objective_property(defense, weighted, expected):
    assert StepSpec(defense=defense, weighted_attack=weighted).objective == expected


def test_stepspec_defaults():
    s = StepSpec()
    assert (s.defense, s.scheme, s.detach, s.combine, s.steps, s.bn_mode) == ("at", "none", True, "multiply", 10, "eval")
    assert abs(s.eps - 8 / 255) < 1e-12 and abs(s.step - 2 / 255) < 1e-12


def test_at_with_natural_reading_scheme():
    # AT + VIR needs p(x) for the weights only (an extra no-grad clean forward): the step runs and
    # the weights carry S_v * S_d on top of beta.
    model, opt, x, y = setup()
    out = train_step(model, opt, x, y, spec_for("at", "vir"), generator=torch.Generator().manual_seed(1))
    assert 0 <= out["correct_nat"].item() <= N
    assert (out["w"] > 0.007).all()
    assert not torch.allclose(out["w"], torch.full((N,), 0.007))


def test_weight_only_clean_forward_leaves_bn_running_stats_alone():
    """AT + VIR: the extra clean forward must not move BN's running statistics (AT's BN sees x' only)."""
    from advrw.training.step import frozen_bn_stats

    model, opt, x, y = setup()
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    model.train()
    with torch.no_grad(), frozen_bn_stats(model):
        model(x)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert torch.equal(bn.num_batches_tracked, before[2]) and bn.momentum == 0.1
    with torch.no_grad():
        model(x)
    assert not torch.equal(bn.running_mean, before[0])  # an ordinary train-mode forward does move them


def test_first_step_bn_momentum_replaces_the_running_stats_then_is_restored():
    """DeepMind's BN start: momentum 1.0 on the run's first step, so the running statistics are that
    batch's whatever they were before; the layers' own momentum afterwards."""
    spec = spec_for("at", "none", first_bn_momentum=1.0, bn_mode="train")  # the attack ignores running stats
    runs = []
    for first in (True, False):
        for start in (0.0, 5.0):
            model, opt, x, y = setup()
            model.bn.running_mean.fill_(start)
            train_step(model, opt, x, y, spec, first=first, generator=torch.Generator().manual_seed(0))
            runs.append(model.bn.running_mean.clone())
            assert model.bn.momentum == 0.1
    torch.testing.assert_close(runs[0], runs[1])  # first step: the old statistics are gone
    assert not torch.allclose(runs[2], runs[3])  # later steps: momentum 0.1 keeps 90% of them


@pytest.mark.parametrize("defense", ["at", "trades"])
def test_train_frozen_attack_uses_batch_stats_and_leaves_running_stats(defense):
    """DM-AT attacks with BN in train mode but ``track_bn_stats(False)``: the same x' as bn_mode=train,
    without the attack's forwards moving the running statistics."""
    outs = {}
    for mode in ("train", "train_frozen"):
        model, _, x, y = setup()
        before = (model.bn.running_mean.clone(), int(model.bn.num_batches_tracked))
        x_adv, _ = adversarial_examples(model, x, y, spec_for(defense, "none", bn_mode=mode),
                                        generator=torch.Generator().manual_seed(4))
        moved = not torch.equal(model.bn.running_mean, before[0])
        outs[mode] = (x_adv, moved, int(model.bn.num_batches_tracked) - before[1])
        assert model.training  # the model's own mode is restored
    torch.testing.assert_close(outs["train"][0], outs["train_frozen"][0])
    assert outs["train"][1] and outs["train"][2] > 0
    assert not outs["train_frozen"][1] and outs["train_frozen"][2] == 0
