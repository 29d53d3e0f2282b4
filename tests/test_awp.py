"""AWP (minimizer=awp): gamma = 0 is the plain step, per-layer norms, exact restore, the authors' update."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import compose_config
from test_step import setup, spec_for

from advrw.methods import awp
from advrw.config.validation import validate_train
from advrw.core.errors import AdvrwError
from advrw.training.step import _weighted_loss, adversarial_examples, train_step
from advrw.training.build import step_spec

COMBOS = [("at", "none"), ("trades", "vir"), ("mart", "margin_exp"), ("at", "gairat"), ("trades", "ewat")]


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fresh(seed=0, wd=5e-4):
    model, _, x, y = setup(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=wd)
    return model, opt, x, y


@pytest.mark.parametrize("defense,scheme", COMBOS)
def test_gamma_zero_is_the_plain_step_bitwise(defense, scheme):
    results = []
    for minimizer in ("sgd", "awp"):
        model, opt, x, y = fresh()
        spec = spec_for(defense, scheme, minimizer=minimizer, awp_gamma=0.0)
        out = None
        for _ in range(2):  # two steps: momentum buffers and BN statistics carry over
            out = train_step(model, opt, x, y, spec, generator=torch.Generator().manual_seed(1), epoch=3)
        results.append((out, state(model)))
    (a, sa), (b, sb) = results
    assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["w"], b["w"])
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_perturbation_is_gamma_times_each_layer_norm_along_the_gradient():
    model, _, x, y = setup(seed=3)
    spec = spec_for("trades", "none")
    x_adv, kappa = adversarial_examples(model, x, y, spec, generator=torch.Generator().manual_seed(0))
    model.train()
    before = state(model)
    loss = _weighted_loss(model, x, x_adv, y, kappa, spec, False)[0]
    named = dict(awp.perturbed_parameters(model))
    grads = dict(zip(named, torch.autograd.grad(loss, list(named.values()), retain_graph=True)))
    gamma = 0.02
    pert = awp.perturb(model, loss, gamma)
    assert set(named) == {"conv.weight", "fc.weight"}  # biases and BN parameters stay put
    for name, p in model.named_parameters():
        if name not in named:
            assert torch.equal(p, before[name]), name
            continue
        v = p.detach() - before[name]
        torch.testing.assert_close(v.norm(), gamma * before[name].norm(), rtol=1e-5, atol=0)
        cos = torch.nn.functional.cosine_similarity(v.flatten(), grads[name].flatten(), dim=0)
        assert cos > 1 - 1e-5, name  # the ascent direction of the training loss
    assert len(pert.params) == 2


@pytest.mark.parametrize("wd", [0.0, 5e-4])
def test_restore_is_exact_and_moves_weight_decay_to_the_perturbed_point(wd):
    model, opt, x, y = fresh(seed=5, wd=wd)
    spec = spec_for("at", "none")
    x_adv, kappa = adversarial_examples(model, x, y, spec, generator=torch.Generator().manual_seed(0))
    model.train()
    before = state(model)
    pert = awp.perturb(model, _weighted_loss(model, x, x_adv, y, kappa, spec, False)[0], 0.05)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    loss = _weighted_loss(model, x, x_adv, y, kappa, spec, False)[0]
    opt.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    awp.restore(pert, opt)
    after = state(model)
    for k in before:
        assert torch.equal(before[k], after[k]) or k.endswith(("running_mean", "running_var", "num_batches_tracked")), k
    for (n, p), v in zip(awp.perturbed_parameters(model), pert.diffs):
        torch.testing.assert_close(p.grad, grads[n] + wd * v, rtol=0, atol=1e-12)


def authors_step(model, opt, x, y, spec, gamma, proxy_lr=0.01):
    """csdongxian/AWP's scheme, written independently: proxy SGD ascent, normalised diff, perturb,
    descend at the perturbed weights, subtract the diff."""
    x_adv, kappa = adversarial_examples(model, x, y, spec, generator=torch.Generator().manual_seed(1))
    model.train()
    proxy = copy.deepcopy(model)
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    popt = torch.optim.SGD(proxy.parameters(), lr=proxy_lr)
    popt.zero_grad()
    (-_weighted_loss(proxy, x, x_adv, y, kappa, spec, False)[0]).backward()
    popt.step()
    new, old = proxy.state_dict(), model.state_dict()
    diff = {}
    for k in old:
        if old[k].dim() > 1 and "weight" in k:
            d = new[k] - old[k]
            diff[k] = old[k].norm() / (d.norm() + 1e-20) * d
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, d in diff.items():
            params[k].add_(gamma * d)
    loss = _weighted_loss(model, x, x_adv, y, kappa, spec, False)[0]
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        for k, d in diff.items():
            params[k].sub_(gamma * d)
    return loss


@pytest.mark.parametrize("defense,scheme", COMBOS)
def test_awp_step_matches_the_authors_update(defense, scheme):
    gamma = 0.05
    ref_model, ref_opt, x, y = fresh(seed=7)
    model = copy.deepcopy(ref_model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    spec = spec_for(defense, scheme, minimizer="awp", awp_gamma=gamma)
    plain = copy.deepcopy(ref_model)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        ref_loss = authors_step(ref_model, ref_opt, x, y, spec, gamma)
        out = train_step(model, opt, x, y, spec, generator=torch.Generator().manual_seed(1))
        train_step(plain, plain_opt, x, y, spec_for(defense, scheme), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(out["loss"], ref_loss.detach(), rtol=1e-5, atol=1e-6)
    ref, got, base = state(ref_model), state(model), state(plain)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(got[k].float(), base[k].float(), atol=1e-5) for k in got)  # AWP changed the step


def test_warmup_epochs_are_plain_steps():
    outs = []
    for minimizer, epoch in (("sgd", 0), ("awp", 1), ("awp", 2)):
        model, opt, x, y = fresh()
        spec = spec_for("at", "none", minimizer=minimizer, awp_gamma=0.05, awp_warmup=2)
        train_step(model, opt, x, y, spec, generator=torch.Generator().manual_seed(1), epoch=epoch)
        outs.append(state(model))
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])  # epoch 1 < warmup 2
    assert not all(torch.equal(outs[0][k], outs[2][k]) for k in outs[0])  # epoch 2: AWP on


def compose_train(*overrides):
    return compose_config("train", *overrides)


@pytest.mark.parametrize("overrides,gamma,warmup", [
    (["minimizer=awp"], 0.01, 0),
    (["minimizer=awp", "defense=trades"], 0.005, 9),
    (["minimizer=awp", "defense=trades", "minimizer.gamma=0.02"], 0.02, 9),
    (["experiment=at_awp_rn18_cifar10"], 0.01, 0),
    (["experiment=trades_awp_rn18_cifar10"], 0.005, 9),
])
def test_author_defaults_per_defense(overrides, gamma, warmup):
    cfg = compose_train(*overrides)
    validate_train(cfg)
    spec = step_spec(cfg)
    assert (spec.minimizer, spec.awp_gamma, spec.awp_warmup) == ("awp", gamma, warmup)


def test_plain_minimizer_is_the_default():
    assert step_spec(compose_train()).minimizer == "sgd"


@pytest.mark.parametrize("override,needle", [
    ("minimizer.gamma=-0.1", "minimizer.gamma=-0.1 is invalid: must be a number >= 0"),
    ("minimizer.warmup=1.5", "minimizer.warmup=1.5 is invalid: must be an integer >= 0"),
])
def test_bad_awp_values(override, needle):
    with pytest.raises(AdvrwError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        validate_train(compose_train("minimizer=awp", override))
