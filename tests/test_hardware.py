"""advrw.core.hardware: precision/channels_last resolved from an injected capability, the slow-bf16
warning, validation, a compiled step against the eager one, and the records of real CLI runs."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from advrw.core import hardware
from advrw.core.errors import AdvrwError
from conftest import ok, results


def fake(name):
    return lambda device: hardware.FAKE_PRESETS[name]


def cfg(precision="auto", channels_last="auto", compile=False, model="preact_resnet18"):
    return {"precision": precision, "channels_last": channels_last, "compile": compile, "model": {"name": model}}


@pytest.mark.parametrize("preset, device, expected", [
    ("avx2", "cpu", "fp32"),
    ("avx512", "cpu", "fp32"),  # AVX512 without the bf16 extension is still emulated bf16
    ("avx512_bf16", "cpu", "bf16"),
    ("amx", "cpu", "bf16"),
    ("cuda_bf16", "cuda", "bf16"),
    ("cuda_no_bf16", "cuda", "fp32"),
])
def test_precision_auto_follows_native_bf16(preset, device, expected, caplog):
    with caplog.at_level(logging.WARNING, logger="advrw.core.hardware"):
        rt = hardware.resolve_runtime(cfg(), device, probe_fn=fake(preset))
    assert rt.precision == expected
    assert rt.amp_dtype == (torch.bfloat16 if expected == "bf16" else None)
    assert rt.record()["requested"]["precision"] == "auto" and rt.record()["native_bf16"] == (expected == "bf16")
    assert not caplog.records  # auto never warns


def test_explicit_bf16_without_native_support_runs_but_warns_once(caplog):
    with caplog.at_level(logging.WARNING, logger="advrw.core.hardware"):
        rt = hardware.resolve_runtime(cfg("bf16"), "cpu", probe_fn=fake("avx2"))
    assert rt.precision == "bf16"  # honoured
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "AVX2" in msg and "avx512_bf16" in msg and "20x slower" in msg and "precision=auto" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="advrw.core.hardware"):
        hardware.resolve_runtime(cfg("bf16"), "cpu", probe_fn=fake("amx"))
        hardware.resolve_runtime(cfg("fp32"), "cpu", probe_fn=fake("avx2"))
    assert not caplog.records


@pytest.mark.parametrize("model, preset, device, precision, expected", [
    ("preact_resnet18", "avx512_bf16", "cpu", "auto", True),   # measured faster (table)
    ("wrn34_10", "avx512_bf16", "cpu", "auto", True),          # same family
    ("smallcnn", "avx512_bf16", "cpu", "auto", True),
    ("tiny", "avx512_bf16", "cpu", "auto", False),             # never measured: off
    ("preact_resnet18", "avx2", "cpu", "auto", False),         # fp32 measured faster only on AVX512
    ("preact_resnet18", "avx512", "cpu", "auto", True),        # fp32 on AVX512: measured faster
    ("tiny", "avx512", "cpu", "auto", False),
    ("preact_resnet18", "cuda_bf16", "cuda", "auto", False),   # no GPU measurement: off
])
def test_channels_last_auto_uses_the_measured_table(model, preset, device, precision, expected):
    rt = hardware.resolve_runtime(cfg(precision, "auto", model=model), device, probe_fn=fake(preset))
    assert rt.channels_last is expected
    assert hardware.resolve_runtime(cfg(precision, True, model=model), device, probe_fn=fake(preset)).channels_last


@pytest.mark.parametrize("key, value, expected", [
    ("precision", "fp16", "precision='fp16' is unknown: choose auto, fp32 or bf16"),
    ("channels_last", "yes", "channels_last='yes' is invalid: choose auto, true or false"),
    ("compile", "auto", "compile='auto' is invalid: choose true or false"),
])
def test_bad_values_are_one_line_errors(key, value, expected):
    c = cfg()
    c[key] = value
    with pytest.raises(AdvrwError, match=expected):
        hardware.validate_runtime(c)


def test_real_probe_and_the_test_hook(monkeypatch):
    cap = hardware.probe("cpu")
    assert cap.cpu_capability == torch.backends.cpu.get_cpu_capability() and cap.source == "probed"
    monkeypatch.setenv(hardware.FAKE_ENV, "avx2")
    cap = hardware.probe("cpu")
    assert cap.cpu_capability == "AVX2" and not cap.native_bf16 and "test hook" in cap.source
    monkeypatch.setenv(hardware.FAKE_ENV, "avx3")
    with pytest.raises(AdvrwError, match="ADVRW_FAKE_CAPABILITY='avx3' is unknown"):
        hardware.probe("cpu")


def test_compiled_step_matches_the_eager_step():
    """Same shapes as the smoke preset (tiny CNN, 16x16, batch 64, PGD-3), so the CLI test below
    reuses the compiled graphs from inductor's cache."""
    from advrw.models import build_model
    from advrw.training.step import StepSpec, train_step

    torch.manual_seed(0)
    eager = build_model("tiny", 10, in_channels=3, image_size=16)
    other = copy.deepcopy(eager)
    before = copy.deepcopy(eager.state_dict())
    rt = hardware.resolve_runtime(cfg("fp32", False, True, "tiny"), "cpu")
    compiled = hardware.compile_model(other, rt)
    assert compiled is not other and rt.compile
    x, y = torch.rand(64, 3, 16, 16), torch.randint(0, 10, (64,))
    # The compiled forward/backward itself: float tolerance.
    for m in (eager, compiled):
        m.eval()
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ze, zc = eager(xe), compiled(xc)
    assert torch.allclose(ze, zc, rtol=1e-5, atol=1e-5)
    (ge,), (gc,) = torch.autograd.grad(ze.logsumexp(1).sum(), xe), torch.autograd.grad(zc.logsumexp(1).sum(), xc)
    assert torch.allclose(ge, gc, rtol=1e-4, atol=1e-6)
    # One whole step (attack + loss + SGD): PGD's sign() can flip on a last-ulp gradient
    # difference, so the step agrees to a looser bound than the forward.
    spec = StepSpec(defense="at", eps=8 / 255, step=4 / 255, steps=3, init="normal", scheme="gairat",
                    scheme_hparams={"lam": 0.0})
    outs = []
    for m, target in ((eager, eager), (compiled, other)):
        opt = torch.optim.SGD(target.parameters(), lr=0.1, momentum=0.9)
        outs.append(train_step(m, opt, x, y, spec, generator=torch.Generator().manual_seed(1)))
    assert torch.allclose(outs[0]["loss"], outs[1]["loss"], rtol=1e-3)
    assert torch.allclose(outs[0]["w"], outs[1]["w"], rtol=1e-3, atol=1e-4)
    assert list(other.state_dict()) == list(eager.state_dict())  # no _orig_mod. prefix
    moved = 0
    for (k, a), b in zip(eager.state_dict().items(), other.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), k
        moved += not torch.equal(a, before[k])
    assert moved > 0  # the step did update the weights both ways compared


def test_explicit_slow_bf16_warns_and_runs_are_recorded(run_cli, tmp_path):
    """A smoke run with a faked AVX2 probe: explicit bf16 warns once before any work, runs, and the
    resolved settings land in run_info.json and results.json (training and a later advrw.eval)."""
    env = {hardware.FAKE_ENV: "avx2"}
    proc = ok(run_cli("train", "experiment=smoke", "precision=bf16", "eval.n_eval=32",
                      f"hydra.run.dir={tmp_path / 'r'}", env=env))
    out = proc.stdout + proc.stderr
    assert out.count("precision=bf16 without native bf16") == 1 and "CPU capability AVX2" in out
    assert out.index("without native bf16") < out.index("epoch 1/2")
    info = json.loads((tmp_path / "r" / "run_info.json").read_text())["runtime"]
    assert info["precision"] == "bf16" and info["compile"] is False and info["cpu_capability"] == "AVX2"
    assert info["channels_last"] is False and info["requested"]["channels_last"] == "auto"
    assert "test hook" in info["capability_source"] and info["native_bf16"] is False
    proto = results(tmp_path / "r")["protocol"]
    assert proto["train_runtime"]["precision"] == "bf16" and proto["runtime"]["precision"] == "fp32"
    assert proto["runtime"]["cpu_capability"] == "AVX2" and proto["runtime"]["compile"] is False

    ok(run_cli("eval", f"ckpt={tmp_path / 'r'}", "eval=quick", "n_eval=16", "logger=none",
               f"hydra.run.dir={tmp_path / 'ev'}"))
    proto = results(tmp_path / "ev")["protocol"]
    assert proto["runtime"]["precision"] == "fp32" and proto["runtime"]["capability_source"] == "probed"
    assert proto["runtime"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert proto["train_runtime"]["precision"] == "bf16" and proto["train_runtime"]["cpu_capability"] == "AVX2"


@pytest.mark.slow
def test_compiled_run_resumes_exactly(run_cli, tmp_path):
    """compile=true through the CLI: compile time logged once and recorded, checkpoints without
    the _orig_mod. prefix, and a run resumed after one epoch ends with the uninterrupted run's weights."""
    common = ["experiment=smoke", "compile=true", "weighting=gairat", "eval.n_eval=16", "eval.plots=false"]
    full = ok(run_cli("train", *common, f"hydra.run.dir={tmp_path / 'full'}"))
    assert (full.stdout + full.stderr).count("torch.compile:") == 1
    info = json.loads((tmp_path / "full" / "run_info.json").read_text())["runtime"]
    assert info["compile"] is True and info["compile_time_s"] > 0
    ok(run_cli("train", *common, "stop_after=1", f"hydra.run.dir={tmp_path / 'part'}"))
    ok(run_cli("train", f"resume={tmp_path / 'part'}", f"hydra.run.dir={tmp_path / 'resumed'}"))
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["model"]
    assert list(a) == list(b) and not any(k.startswith("_orig_mod") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
