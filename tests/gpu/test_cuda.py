"""GPU readiness of the modern recipe: runs only where CUDA is present (skipped with the reason elsewhere,
so a CPU machine reports them as skipped, not passed). ../shared/gpu/check.sh runs this directory.

One step of every scheme x defense in bf16 autocast; no host sync inside the step or the EMA update
(``torch.cuda.set_sync_debug_mode("error")`` turns a sync into an error); EMA state on the device;
a mid-epoch resume with ``deterministic=true`` bitwise equal to an uninterrupted run.
"""

from __future__ import annotations

import pytest
import torch

from advrw.methods.ema import ModelEMA
from advrw.models import build_model
from advrw.training.step import StepSpec, train_step
from conftest import cli, ok

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")

DEFENSES = ("at", "trades", "mart")
SCHEMES = ("none", "gairat", "mail", "vir", "ewat", "margin_exp")


def spec(defense, scheme):
    hp = {"gairat": {"lam": -1.0}, "mail": {"gamma": 2.0, "beta": 0.0, "pm": "nat"}}.get(scheme, {})
    return StepSpec(defense=defense, scheme=scheme, scheme_hparams=hp, steps=3, amp_dtype=torch.bfloat16,
                    combine="add" if scheme == "ewat" else "multiply", detach=scheme != "margin_exp",
                    weighted_attack=scheme == "margin_exp", clip_grad_norm=10.0, bn_mode="train_frozen")


@pytest.mark.parametrize("defense", DEFENSES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_one_bf16_step_without_a_host_sync(defense, scheme):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = build_model("preact_resnet18", 10).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    ema = ModelEMA(model, decay=0.995, warmup_steps=2)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.rand(32, 3, 32, 32, device=dev, generator=g).contiguous(memory_format=torch.channels_last)
    x[:4] = 0.0
    x[4:8] = 1.0  # pixels at both ends of the range
    y = torch.randint(0, 10, (32,), device=dev, generator=g)
    train_step(model, opt, x, y, spec(defense, scheme), generator=g, epoch=0)  # warm-up: cuDNN plans, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = train_step(model, opt, x, y, spec(defense, scheme), generator=g, epoch=0)
        ema.update()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out["loss"]).item() and out["w"].device.type == "cuda"
    assert ema.t.device.type == "cuda" and next(ema.module.parameters()).device.type == "cuda"
    assert int(ema.t) == 1


def test_deterministic_mid_epoch_resume_with_ema_is_bitwise(tmp_path):
    run = ["experiment=smoke", "device=cuda", "deterministic=true", "ema=standard", "dataset.n_train=512",
           "schedule.lr_schedule=warmup_cosine", "schedule.step_per=iteration", "schedule.warmup=1",
           "eval.n_eval=64", "precision=bf16"]
    ok(cli("train", *run, f"hydra.run.dir={tmp_path / 'full'}", cwd=tmp_path))  # advrw sets CUBLAS_WORKSPACE_CONFIG
    proc = cli("train", *run, f"hydra.run.dir={tmp_path / 'part'}", cwd=tmp_path,
               env={"ADVRW_FAULT_SIGNAL": "SIGTERM@2:2"})
    assert proc.returncode == 75, proc.stderr[-3000:]
    ok(cli("train", f"resume={tmp_path / 'part'}", f"hydra.run.dir={tmp_path / 'res'}", cwd=tmp_path))
    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=False, map_location="cpu") for d in ("full", "res"))
    for key in ("model",):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert all(torch.equal(a["ema"]["model"][k], b["ema"]["model"][k]) for k in a["ema"]["model"])
