"""FAT's early-stopped PGD (a mode of the one engine), its tau schedule, the start clamp knob and
GAIRAT's int(K/2) knob (issue 8, attack side)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrw.attacks import pgd
from advrw.attacks.fat import tau_at_epoch
from advrw.core.errors import AdvrwError
from advrw.training.step import StepSpec, adversarial_examples
from test_attacks import threshold_model


# y = 0, so CE ascent moves every x up by 0.01 per step: iterate t is x + 0.01 t (eps 0.1 caps it).
# First misclassified iterate k (x + 0.01 k >= 0.535): 0.50 -> 4, 0.52 -> 2, 0.40 -> never, 0.60 -> 0,
# 0.4455 -> 9 (the last iterate evaluated before the final step).
X = torch.tensor([[0.50], [0.52], [0.40], [0.60], [0.4455]])
FLIP = [4, 2, None, 0, 9]


@pytest.mark.parametrize("tau", [0, 1, 2, 3])
def test_fat_gives_exactly_tau_more_steps(tau):
    y = torch.zeros(len(X), dtype=torch.long)
    res = pgd(threshold_model(), X, y, eps=0.1, step=0.01, steps=10, init="none", tau=tau, track_kappa=True)
    expected = [10 if k is None else min(k + tau, 10) for k in FLIP]
    assert res.steps_taken.tolist() == expected
    torch.testing.assert_close(res.x_adv, X + 0.01 * torch.tensor(expected, dtype=torch.float32)[:, None],
                               atol=1e-6, rtol=0)
    # GAIRAT's kappa (still-correct iterates) is unchanged by stopping after the flip.
    assert res.kappa.tolist() == [4, 2, 10, 0, 9]


def conv_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5)).eval()


@pytest.mark.parametrize("objective", ["ce", "kl"])
def test_fat_tau_k_equals_plain_pgd_bitwise(objective):
    net = conv_net()
    x = torch.rand(16, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(2))
    ref = net(x).detach() if objective == "kl" else None
    kw = dict(eps=8 / 255, step=2 / 255, steps=7, init="uniform", objective=objective, ref_logits=ref,
              track_kappa=True)
    plain = pgd(net, x, y, generator=torch.Generator().manual_seed(3), **kw)
    for tau in (7, 50):
        early = pgd(net, x, y, generator=torch.Generator().manual_seed(3), tau=tau, **kw)
        assert torch.equal(plain.x_adv, early.x_adv) and torch.equal(plain.kappa, early.kappa)
        assert early.steps_taken.tolist() == [7] * 16
    # and a small tau really stops some of them (the net misclassifies most of these points)
    assert pgd(net, x, y, generator=torch.Generator().manual_seed(3), tau=0, **kw).steps_taken.min() < 7


def test_fat_omega_noise_stays_in_ball_and_box():
    x = torch.rand(8, 3, 6, 6)
    x[0] = 0.0
    res = pgd(conv_net(), x, torch.zeros(8, dtype=torch.long), eps=0.03, step=0.01, steps=5, tau=1, omega=0.05,
              generator=torch.Generator().manual_seed(0))
    assert (res.x_adv - x).abs().max() <= 0.03 + 1e-6 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1


@pytest.mark.parametrize("kwargs, bad", [({"tau": -1}, "attack.tau=-1"), ({"tau": 1.5}, "attack.tau=1.5"),
                                         ({"omega": -0.1}, "attack.omega=-0.1")])
def test_fat_bad_values(kwargs, bad):
    with pytest.raises(AdvrwError, match=bad.replace(".", r"\.")):
        pgd(threshold_model(), X, torch.zeros(5, dtype=torch.long), eps=0.1, step=0.01, steps=2, **kwargs)


def test_tau_schedule_matches_fat_code():
    # FAT.py: tau 0 for epochs 1..50, 1 for 51..90, 2 after; FAT_for_TRADES: 0/1/2/3 after 30/50/70.
    assert [tau_at_epoch(e, 0, [50, 90]) for e in (1, 50, 51, 90, 91, 120)] == [0, 0, 1, 1, 2, 2]
    assert [tau_at_epoch(e, 0, [30, 50, 70]) for e in (30, 31, 51, 71)] == [0, 1, 2, 3]
    assert tau_at_epoch(100, 3, []) == 3


def test_step_spec_reads_tau_for_the_epoch():
    spec = StepSpec(steps=10, step=0.01, eps=0.1, init="none", tau=0, tau_milestones=(50, 90))
    assert spec.current_tau == 0 and spec.at_epoch(50).current_tau == 1 and spec.at_epoch(90).current_tau == 2
    assert StepSpec().at_epoch(70).current_tau is None  # plain PGD: no tau at any epoch
    # the training attack follows the schedule: x = 0.50 flips at iterate 4, then takes tau more steps
    y = torch.zeros(1, dtype=torch.long)
    ends = [adversarial_examples(threshold_model(), X[:1], y, spec.at_epoch(e))[0].item() for e in (0, 60, 100)]
    assert ends == pytest.approx([0.54, 0.55, 0.56], abs=1e-6)


# ----------------------------------------------------------------------------- validation of the new keys


@pytest.mark.parametrize("overrides, bad", [
    (["attack=fat", "attack.tau=-2"], "attack.tau=-2"),
    (["attack=fat", "attack.tau_milestones=[90,50]"], "attack.tau_milestones=[90, 50]"),
    (["+attack.tau_milestones=[5]"], "attack.tau_milestones needs attack.tau"),
    (["attack=fat", "attack.omega=-1"], "attack.omega=-1"),
    (["attack.clamp_start=maybe"], "attack.clamp_start='maybe'"),
    (["weighting=gairat", "weighting.half_steps=int"], "weighting.half_steps='int'"),
])
def test_validation_names_the_key(overrides, bad):
    from conftest import compose_config

    from advrw.config.validation import validate_train

    cfg = compose_config("train", "experiment=smoke", *overrides)
    with pytest.raises(AdvrwError, match=r"^" + bad.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        validate_train(cfg)


def test_cli_fat_with_gairat_trains(run_cli, tmp_path):
    from conftest import ok, results

    run_dir = tmp_path / "fat"
    ok(run_cli("train", "experiment=smoke", "attack=fat", "weighting=gairat", "weighting.half_steps=code",
               "schedule.burn_in=0", "schedule.epochs=1", "attack.tau_milestones=[1]", "dataset.n_train=128",
               "dataset.val_size=0", "eval.n_eval=16", f"hydra.run.dir={run_dir}"))
    assert results(run_dir)["protocol"]["n_eval"] == 16
