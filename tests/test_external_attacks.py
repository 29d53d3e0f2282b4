"""advrw.attacks.{autoattack,blackbox,fmn}: AutoAttack / Square / SPSA adapters end to end on tiny CPU models."""

import logging

import pytest
import torch
from torch import nn

from advrw.attacks.autoattack import run_autoattack
from advrw.attacks.blackbox import run_spsa, run_square
from advrw.attacks.common import AttackResult, AutoAttackResult
from advrw.attacks.fmn import fmn_available, run_fmn
from advrw.core.errors import AdvrwError

EPS = 8 / 255




class TinyNet(nn.Module):
    """Small conv net with BatchNorm and Dropout (mode-dependent layers), 10 classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Dropout(0.5))
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class NoisyNet(TinyNet):
    """A randomized defense: fresh input noise at every forward, in any mode."""

    def forward(self, x):
        return super().forward((x + 0.2 * torch.randn_like(x)).clamp(0, 1))


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyNet()
    x = torch.rand(n, 3, 8, 8, generator=g)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    # labels = the model's own prediction for most points, a wrong class for a few, so clean
    # accuracy is high but not 1
    y = logits.argmax(1)
    y[:3] = (y[:3] + 1) % 10
    return model, x, y


def _linf(a, b):
    return (a - b).flatten(1).abs().amax(1)


def _check_common(res: AttackResult, model, x, y, eps):
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == torch.float32
    assert float(_linf(res.x_adv, x).max()) <= eps + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert res.robust.dtype == torch.bool and res.robust.shape == (x.shape[0],)
    assert res.robust_accuracy == pytest.approx(res.robust.float().mean().item())
    assert res.robust_accuracy <= res.clean_accuracy
    assert res.clean_accuracy == pytest.approx(13 / 16)
    # robust exactly means: correct on x and on the returned point (checked with our own forward)
    model.eval()
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
        clean_ok = model(x).argmax(1) == y
    assert torch.equal(res.robust, (pred == y) & clean_ok)
    assert res.protocol["n"] == x.shape[0] and res.protocol["eps"] == pytest.approx(eps)


def test_autoattack_end_to_end(capsys):
    model, x, y = _data()
    model.train()  # must come back in train mode
    model.head.eval()  # ... with mixed modes kept per module
    rng_before = torch.get_rng_state()
    res = run_autoattack(model, x, y, eps=EPS, batch_size=16)
    assert isinstance(res, AutoAttackResult)
    assert model.training and model.features[1].training and not model.head.training
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    _check_common(res, model, x, y, EPS)
    p = res.protocol
    assert p["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert p["n_iter"] == 100 and p["fab_n_iter"] == 100 and p["square_queries"] == 5000
    assert p["target_classes"] == {"apgd-t": 9, "fab-t": 9} and not p["target_classes_capped"]
    assert p["restarts"] == {"apgd-ce": 1, "apgd-t": 1, "fab-t": 1, "square": 1}
    assert p["norm"] == "Linf" and p["version"] == "standard" and p["seed"] == 0
    # the cascade is monotone and ends at the worst case
    seq = [res.per_attack[k] for k in ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]]
    assert seq[0] == pytest.approx(res.clean_accuracy)
    assert all(a >= b for a, b in zip(seq, seq[1:]))
    assert seq[-1] == pytest.approx(res.robust_accuracy)
    assert res.robust_accuracy < res.clean_accuracy  # an untrained net is not robust at 8/255
    assert res.warnings == []
    assert capsys.readouterr().out == ""  # nothing printed


def test_autoattack_flags_randomized_model():
    torch.manual_seed(1)
    model = NoisyNet()
    x = torch.rand(8, 3, 8, 8)
    with torch.no_grad():
        y = TinyNet.forward(model.eval(), x).argmax(1)  # noise-free prediction as label
    res = run_autoattack(model, x, y, eps=EPS, batch_size=8)
    assert any("randomized defense" in w for w in res.warnings), res.warnings
    # the handler is gone and the logger is as before
    aa = logging.getLogger("auto-attack")
    assert aa.propagate and not aa.handlers


def test_autoattack_few_classes_caps_targets():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = run_autoattack(model, x, y, eps=1 / 255, batch_size=6)
    assert res.clean_accuracy == 1.0
    assert res.protocol["target_classes"] == {"apgd-t": 4, "fab-t": 4}
    assert res.protocol["target_classes_capped"]
    assert float(_linf(res.x_adv, x).max()) <= 1 / 255 + 1e-6
    assert res.robust_accuracy < 1.0  # the targeted stages ran with 4 targets without crashing


def test_autoattack_rejects_bad_input():
    model, x, y = _data(4)
    with pytest.raises(AdvrwError, match="eps"):
        run_autoattack(model, x, y, eps=-0.1)
    with pytest.raises(AdvrwError, match=r"\[0, 1\]"):
        run_autoattack(model, x * 2, y, eps=EPS)
    with pytest.raises(AdvrwError, match="norm"):
        run_autoattack(model, x, y, eps=EPS, norm="L3")
    with pytest.raises(AdvrwError, match="labels must lie"):
        run_autoattack(model, x, y + 20, eps=EPS)


def test_empty_subset_is_not_an_error():
    """Callers attack 'the still-robust subset', which can be empty."""
    model, x, y = _data(4)
    for fn, kw in ((run_autoattack, {}), (run_square, {"n_queries": 5}), (run_spsa, {"nb_iter": 1})):
        res = fn(model, x[:0], y[:0], eps=EPS, **kw)
        assert res.x_adv.shape == (0, 3, 8, 8) and res.robust.shape == (0,)
        assert res.protocol["n"] == 0 and res.robust_accuracy != res.robust_accuracy  # NaN


def test_square_small_budget_deterministic():
    model, x, y = _data()
    model.train()
    a = run_square(model, x, y, eps=EPS, n_queries=60, batch_size=8, seed=3)
    b = run_square(model, x, y, eps=EPS, n_queries=60, batch_size=8, seed=3)
    assert model.training
    _check_common(a, model, x, y, EPS)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.robust, b.robust)
    assert a.protocol["attack"] == "square" and a.protocol["n_queries"] == 60
    assert a.protocol["p_init"] == 0.8 and a.protocol["library"] == "torchattacks"


def test_spsa_small_budget_deterministic():
    model, x, y = _data()
    rng_before = torch.get_rng_state()
    kw = dict(eps=EPS, nb_iter=4, nb_sample=16, max_batch_size=8, batch_size=8, seed=5)
    a = run_spsa(model, x, y, **kw)
    b = run_spsa(model, x, y, **kw)
    assert torch.equal(torch.get_rng_state(), rng_before)
    _check_common(a, model, x, y, EPS)
    assert torch.equal(a.x_adv, b.x_adv)
    c = run_spsa(model, x, y, **dict(kw, seed=6))
    assert not torch.equal(a.x_adv, c.x_adv)  # the seed does drive the random directions
    assert a.protocol["delta"] == 0.001 and a.protocol["nb_iter"] == 4 and a.protocol["lr"] == 0.01


def test_fmn_runs():
    model, x, y = _data(8)
    assert fmn_available()  # foolbox is a dependency of advrw
    res = run_fmn(model, x, y, eps=EPS, steps=20, batch_size=8)
    assert float(_linf(res.x_adv, x).max()) <= EPS + 1e-6
    assert res.robust_accuracy <= res.clean_accuracy


def test_library_attacks_on_saturated_images_return_valid_points_and_agree():
    """Real-image statistics: a third of the pixels at 0 and a third at 1. Every library attack's
    returned point is in the ball and [0, 1], and AutoAttack's per_attack ends at robust_accuracy."""
    model, _, _ = _data()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(16, 3, 8, 8, generator=g)
    u = torch.rand(x.shape, generator=g)
    x[u < 1 / 3], x[u > 2 / 3] = 0.0, 1.0
    with torch.no_grad():
        y = model(x).argmax(1)
    aa = run_autoattack(model, x, y, eps=EPS, batch_size=16)
    sq = run_square(model, x, y, eps=EPS, n_queries=50, batch_size=16)
    for res in (aa, sq):
        assert float(_linf(res.x_adv, x).max()) <= EPS + 1e-6
        assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
        with torch.no_grad():
            assert torch.equal(res.robust, model(res.x_adv).argmax(1) == y)
    assert aa.per_attack[aa.protocol["attacks"][-1]] == pytest.approx(aa.robust_accuracy)
