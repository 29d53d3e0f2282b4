"""Throughput of advrw's runtime variants against a loop written like the papers' code, per machine.

    python scripts/bench.py --quick                 # every case and variant, a few steps (minutes)
    python scripts/bench.py                          # the measurement (longer)
    python scripts/bench.py --cases preact --variants fp32,bf16,bf16+cl --steps 8

It prints this machine's capability first (what ``precision=auto``/``channels_last=auto``
resolve from, ``advrw.core.hardware``), then one row per (case, variant): the reference loop's and
advrw's images/s and their ratio. Variants are ``fp32``/``bf16`` with optional ``+cl``
(channels_last) and ``+compile`` (torch.compile; its compile time is shown apart from the timed
steps). ``auto`` is the variant ``precision=auto channels_last=auto`` resolves to here.

The reference training step does what the authors' scripts do: the batch moved from the host
every step, PGD in eval mode, fp32, a ``.item()`` per step. The reference evaluation is their
PGD-20 loop (eval mode, fp32, host batches); the AutoAttack reference is the library called
directly as their eval scripts do. Models are untrained; for the evaluation cases labels are the
model's own predictions so every example is attacked (nothing is skipped as already wrong).

Add a case: write ``def my_case(ctx) -> list[dict]`` and decorate it with ``@case("name")``;
use ``train_rows``/``timed`` and the ``Ctx`` settings. Not a test: speed depends on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a fresh clone without an install

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from advrw.core import hardware  # noqa: E402
from advrw.data import DeviceBatches  # noqa: E402
from advrw.models import build_model  # noqa: E402
from advrw.training.step import StepSpec, train_step  # noqa: E402
from advrw.evaluation.suite import white_box  # noqa: E402

CASES: dict = {}
ALL_VARIANTS = ("fp32", "bf16", "fp32+cl", "bf16+cl", "fp32+compile", "bf16+compile", "fp32+cl+compile",
                "bf16+cl+compile")


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


@dataclass
class Ctx:
    device: torch.device
    variants: list
    steps: int
    warmup: int
    batch: int | None  # None: the case's own batch size
    n_eval: int
    quick: bool
    capability: hardware.Capability = field(default=None)


def parse_variant(v: str, ctx: Ctx) -> hardware.Runtime:
    parts = v.split("+")
    prec = parts[0]
    if prec == "auto":
        return None  # resolved per case (depends on the model family)
    if prec not in ("fp32", "bf16") or not set(parts[1:]) <= {"cl", "compile"}:
        raise SystemExit(f"bench: variant {v!r} is invalid: fp32|bf16|auto with optional +cl, +compile")
    return hardware.Runtime(prec, "cl" in parts, "compile" in parts, ctx.capability)


def runtime_for(v: str, ctx: Ctx, model_name: str) -> hardware.Runtime:
    rt = parse_variant(v, ctx)
    if rt is None:
        rt = hardware.resolve_runtime({"precision": "auto", "channels_last": "auto", "compile": False,
                                       "model": {"name": model_name}}, ctx.device, probe_fn=lambda d: ctx.capability)
    return rt


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, n_warmup, n_steps, device) -> tuple[float, float]:
    """(seconds of the warm-up calls, seconds of the timed calls)."""
    t0 = time.perf_counter()
    for _ in range(n_warmup):
        fn()
    sync(device)
    t1 = time.perf_counter()
    for _ in range(n_steps):
        fn()
    sync(device)
    return t1 - t0, time.perf_counter() - t1


def peak_mib(device):
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def reference_step(model, opt, x_host, y_host, device, eps, step, steps):
    """Madry-style AT as in the authors' scripts (GAIRAT/MAIL/VIR train loops)."""
    x, y = x_host.to(device), y_host.to(device)  # per-batch host transfer
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    opt.zero_grad()
    loss = F.cross_entropy(model(x_adv), y)
    loss.backward()
    opt.step()
    return loss.item()  # the per-step sync their progress printing does


def reference_pgd20(model, x_host, y_host, device, eps, batch):
    """The papers' eval loop: eval mode, fp32, uniform start, host batches, PGD-20 step eps/10."""
    model.eval()
    correct = 0
    for i in range(0, len(x_host), batch):
        x, y = x_host[i:i + batch].to(device), y_host[i:i + batch].to(device)
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(20):
            x_adv.requires_grad_()
            with torch.enable_grad():
                loss = F.cross_entropy(model(x_adv), y)
            grad = torch.autograd.grad(loss, [x_adv])[0]
            x_adv = torch.min(torch.max(x_adv.detach() + eps / 10 * grad.sign(), x - eps), x + eps).clamp(0, 1)
        with torch.no_grad():
            correct += (model(x_adv).argmax(1) == y).sum().item()
    return correct


def data(n, c, size, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_u8 = torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x_u8, y


def cycling_steps(batches, rt: hardware.Runtime, step):
    """A no-argument callable that runs ``step(x, y)`` on the next batch, cycling over the epoch."""
    it = iter(batches)

    def one():
        nonlocal it
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(batches)
            xb, yb = next(it)
        if rt.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        step(xb, yb)
    return one


def train_rows(ctx: Ctx, name, model_name, c, size, eps, step, k, batch) -> list[dict]:
    """Reference AT step once, then advrw's train_step under every variant, same model/data/attack."""
    batch = ctx.batch or batch
    torch.manual_seed(0)
    x_u8, y = data(batch * 4, c, size, ctx.device)
    x_host = x_u8.float().div(255)
    init = build_model(model_name, 10, in_channels=c, image_size=size).state_dict()

    def fresh():
        m = build_model(model_name, 10, in_channels=c, image_size=size)
        m.load_state_dict(init)
        m = m.to(ctx.device)
        return m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    ref_model, ref_opt = fresh()
    i = [0]

    def ref():
        j = i[0] % 4
        i[0] += 1
        reference_step(ref_model, ref_opt, x_host[j * batch:(j + 1) * batch], y[j * batch:(j + 1) * batch],
                       ctx.device, eps, step, k)

    reset_peak(ctx.device)
    _, t_ref = timed(ref, ctx.warmup, ctx.steps, ctx.device)
    ref_ips = ctx.steps * batch / t_ref
    rows = [{"case": name, "variant": "reference (authors' loop, fp32)", "img_s": ref_ips, "ratio": 1.0,
             "peak_mib": peak_mib(ctx.device)}]
    batches = DeviceBatches(x_u8.to(ctx.device), y.to(ctx.device), batch, shuffle=True, augment=(c == 3),
                            generator=torch.Generator(device=ctx.device).manual_seed(0))
    for v in ctx.variants:
        rt = runtime_for(v, ctx, model_name)
        model, opt = fresh()
        if rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        step_model = hardware.compile_model(model, rt)
        spec = StepSpec(defense="at", eps=eps, step=step, steps=k, init="normal", amp_dtype=rt.amp_dtype)
        fast = cycling_steps(batches, rt, lambda xb, yb: train_step(step_model, opt, xb, yb, spec))

        reset_peak(ctx.device)
        # compiled variants get one extra warm-up step: the first compiles eval- and train-mode graphs
        t_warm, t = timed(fast, ctx.warmup + rt.compile, ctx.steps, ctx.device)
        label = v if not v.startswith("auto") else f"auto ({rt.precision}{'+cl' if rt.channels_last else ''})"
        ips = ctx.steps * batch / t
        rows.append({"case": name, "variant": label, "img_s": ips, "ratio": ips / ref_ips,
                     "compile_s": t_warm if rt.compile else None, "peak_mib": peak_mib(ctx.device)})
    return rows


@case("preact")
def preact_pgd10(ctx):
    """PreActResNet-18, 3x32x32, AT with PGD-10 (eps 8/255, step 2/255), batch 128."""
    return train_rows(ctx, "PreActResNet-18 PGD-10 train", "preact_resnet18", 3, 32, 8 / 255, 2 / 255, 10,
                      32 if ctx.quick else 128)


@case("smallcnn")
def smallcnn_pgd40(ctx):
    """SmallCNN, 1x28x28, AT with PGD-40 (PGD-10 with --quick; eps 0.3, step 0.01), batch 128 (Zeng's MNIST setup)."""
    k = 10 if ctx.quick else 40
    return train_rows(ctx, f"SmallCNN PGD-{k} train", "smallcnn", 1, 28, 0.3, 0.01, k,
                      32 if ctx.quick else 128)


# The training-side baselines of the papers' tables (issue 8), priced against plain AT in the same
# process, same model, data, attack budget and runtime (the first --variants entry, default auto).
BASELINES = {
    "AT": {},
    "FAT (tau 2)": {"tau": 2, "clamp_start": True},
    "AT-AWP (gamma 0.01)": {"minimizer": "awp", "awp_gamma": 0.01},
}


def baseline_rows(ctx: Ctx, name, model_name, c, size, eps, step, k, batch) -> list[dict]:
    batch = ctx.batch or batch
    x_u8, y = data(batch * 4, c, size, ctx.device)
    init = build_model(model_name, 10, in_channels=c, image_size=size).state_dict()
    rt = runtime_for(ctx.variants[0], ctx, model_name)
    batches = DeviceBatches(x_u8.to(ctx.device), y.to(ctx.device), batch, shuffle=True, augment=(c == 3),
                            generator=torch.Generator(device=ctx.device).manual_seed(0))
    rows, base = [], None
    for label, fields in BASELINES.items():
        torch.manual_seed(0)
        model = build_model(model_name, 10, in_channels=c, image_size=size)
        model.load_state_dict(init)
        model = model.to(ctx.device, memory_format=torch.channels_last if rt.channels_last else torch.contiguous_format)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        spec = StepSpec(defense="at", eps=eps, step=step, steps=k, init="uniform", amp_dtype=rt.amp_dtype, **fields)
        one = cycling_steps(batches, rt, lambda xb, yb: train_step(model, opt, xb, yb, spec, epoch=0))

        reset_peak(ctx.device)
        _, t = timed(one, ctx.warmup, ctx.steps, ctx.device)
        ips = ctx.steps * batch / t
        base = base or ips
        rows.append({"case": name, "variant": f"{label} [{rt.precision}{'+cl' if rt.channels_last else ''}]",
                     "img_s": ips, "ratio": ips / base, "peak_mib": peak_mib(ctx.device)})
    return rows


@case("baselines")
def baselines(ctx):
    """FAT and AT-AWP per step relative to plain AT (ratio < 1: slower), PreActResNet-18 PGD-10 and SmallCNN."""
    rows = baseline_rows(ctx, "PreActResNet-18 PGD-10: FAT/AWP vs AT", "preact_resnet18", 3, 32, 8 / 255, 2 / 255,
                         10, 32 if ctx.quick else 128)
    k = 10 if ctx.quick else 40
    return rows + baseline_rows(ctx, f"SmallCNN PGD-{k}: FAT/AWP vs AT", "smallcnn", 1, 28, 0.3, 0.01, k,
                                32 if ctx.quick else 128)


@case("ema")
def ema_cost(ctx):
    """EMA of the weights after every step (ema=standard) next to plain AT, PreActResNet-18 PGD-10: the
    whole step with the update, and the update alone (advrw's ModelEMA and swa_utils.AveragedModel)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from advrw.methods.ema import ModelEMA

    batch = ctx.batch or (32 if ctx.quick else 128)
    name = "PreActResNet-18 PGD-10: AT + EMA"
    x_u8, y = data(batch * 4, 3, 32, ctx.device)
    rt = runtime_for(ctx.variants[0], ctx, "preact_resnet18")
    batches = DeviceBatches(x_u8.to(ctx.device), y.to(ctx.device), batch, shuffle=True, augment=True,
                            generator=torch.Generator(device=ctx.device).manual_seed(0))
    torch.manual_seed(0)
    model = build_model("preact_resnet18", 10).to(ctx.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    spec = StepSpec(defense="at", steps=10, init="uniform", amp_dtype=rt.amp_dtype)
    ours = ModelEMA(model, decay=0.995, warmup_steps=10)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.995))
    step = cycling_steps(batches, rt, lambda xb, yb: train_step(model, opt, xb, yb, spec))

    def with_ema():
        step()
        ours.update()

    _, t_at = timed(step, ctx.warmup, ctx.steps, ctx.device)
    _, t_ema = timed(with_ema, ctx.warmup, ctx.steps, ctx.device)
    n = 20 if ctx.quick else 100
    _, t_ours = timed(ours.update, 2, n, ctx.device)
    _, t_theirs = timed(lambda: theirs.update_parameters(model), 2, n, ctx.device)
    per_step = t_at / ctx.steps
    tag = f"[{rt.precision}{'+cl' if rt.channels_last else ''}]"
    rows = [{"case": name, "variant": f"AT {tag}", "img_s": ctx.steps * batch / t_at, "ratio": 1.0},
            {"case": name, "variant": f"AT + EMA (ModelEMA) {tag}", "img_s": ctx.steps * batch / t_ema,
             "ratio": t_at / t_ema}]
    for label, t in (("ModelEMA", t_ours), ("AveragedModel", t_theirs)):
        ms = 1000 * t / n
        rows.append({"case": name, "variant": f"update alone, {label}: {ms:.2f} ms = "
                                              f"{100 * ms / (1000 * per_step):.2f}% of a step",
                     "img_s": n / t, "ratio": per_step / (t / n), "update_ms": ms,
                     "pct_of_step": 100 * ms / (1000 * per_step)})
    return rows


def _eval_model(ctx, model_name="preact_resnet18", c=3, size=32):
    torch.manual_seed(0)
    model = build_model(model_name, 10, in_channels=c, image_size=size).to(ctx.device).eval()
    x_u8, _ = data(ctx.n_eval, c, size, ctx.device, seed=1)
    x = x_u8.float().div(255)
    with torch.no_grad():  # labels = the model's predictions: every example is attacked
        y = model(x.to(ctx.device)).argmax(1).cpu()
    return model, x, y


@case("eval_pgd20")
def eval_pgd20(ctx):
    """advrw's PGD-20 evaluation (fp32, eval mode) vs the papers' loop, PreActResNet-18, n_eval images."""
    model, x, y = _eval_model(ctx)
    eps, n, bs = 8 / 255, len(x), min(128, len(x))
    reset_peak(ctx.device)
    _, t_ref = timed(lambda: reference_pgd20(model, x, y, ctx.device, eps, bs), 0, 1, ctx.device)
    xd, yd = x.to(ctx.device), y.to(ctx.device)
    spec = {"kind": "pgd", "objective": "ce", "steps": 20, "step": eps / 10, "restarts": 1, "init": "uniform"}
    _, t = timed(lambda: white_box(model, xd, yd, spec, eps, batch_size=bs, seed=0, progress=False), 0, 1, ctx.device)
    return [{"case": f"PreActResNet-18 eval PGD-20 (n={n})", "variant": "reference (authors' loop, fp32)",
             "img_s": n / t_ref, "ratio": 1.0},
            {"case": f"PreActResNet-18 eval PGD-20 (n={n})", "variant": "advrw (fp32)", "img_s": n / t,
             "ratio": t_ref / t, "peak_mib": peak_mib(ctx.device)}]


@case("autoattack")
def autoattack(ctx):
    """AutoAttack standard (pyautoattack) on n_eval images: advrw's adapter vs the library called directly."""
    from pyautoattack import AutoAttack

    from advrw.attacks import external

    model, x, y = _eval_model(ctx)
    n = min(len(x), 16 if ctx.quick else len(x))
    x, y = x[:n].to(ctx.device), y[:n].to(ctx.device)
    eps = 8 / 255

    def direct():
        adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=ctx.device, seed=0)
        adversary.run_standard_evaluation(x, y, batch_size=n)

    _, t_ref = timed(direct, 0, 1, ctx.device)
    reset_peak(ctx.device)
    _, t = timed(lambda: external.run_autoattack(model, x, y, eps=eps, batch_size=n), 0, 1, ctx.device)
    label = f"PreActResNet-18 AutoAttack standard (n={n}, untrained model)"
    return [{"case": label, "variant": "library called directly", "img_s": n / t_ref, "ratio": 1.0},
            {"case": label, "variant": "advrw adapter", "img_s": n / t, "ratio": t_ref / t,
             "peak_mib": peak_mib(ctx.device)}]


def describe(cap: hardware.Capability, device) -> str:
    load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if hasattr(os, "getloadavg") else ""
    s = (f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads{load}\n"
         f"CPU: {cap.cpu_model or '?'}; capability {cap.cpu_capability}; bf16 flags: "
         f"{', '.join(cap.cpu_flags) or 'none'}")
    if cap.device_type == "cuda":
        s += f"\nGPU: {cap.gpu_name}; bf16 {cap.cuda_bf16}; TF32 matmul {cap.tf32_matmul}, cuDNN {cap.tf32_cudnn}"
    s += f"\nnative bf16: {cap.native_bf16} -> precision=auto resolves to {'bf16' if cap.native_bf16 else 'fp32'}"
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="all", help=f"comma list of {', '.join(CASES)} (default all)")
    ap.add_argument("--variants", default="all", help=f"comma list, default: auto and {', '.join(ALL_VARIANTS)}")
    ap.add_argument("--no-compile", action="store_true", help="skip the +compile variants (they compile first)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="batch 32, 2 timed steps, PGD-10 for SmallCNN, n_eval 16")
    ap.add_argument("--steps", type=int, help="timed steps per variant (default 5, quick 2)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, help="override every training case's batch size")
    ap.add_argument("--n-eval", type=int, help="images for the evaluation cases (default 128, quick 32)")
    ap.add_argument("--threads", type=int, help="torch threads (on a shared box 1 avoids oversubscription)")
    ap.add_argument("--json", help="append every row (with the capability) to this JSON-lines file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = ["auto", *ALL_VARIANTS] if args.variants == "all" else args.variants.split(",")
    if args.no_compile:
        variants = [v for v in variants if "compile" not in v]
    cases = list(CASES) if args.cases == "all" else args.cases.split(",")
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"bench: case {c!r} is unknown: choose from {', '.join(CASES)}")
    ctx = Ctx(device, variants, args.steps or (2 if args.quick else 5), args.warmup, args.batch,
              args.n_eval or (32 if args.quick else 128), args.quick, hardware.probe(device))
    for v in variants:
        parse_variant(v, ctx)  # fail on a typo before any timing
    print(describe(ctx.capability, device), flush=True)
    print(f"{'case':<62} {'variant':<34} {'img/s':>8} {'ratio':>7} {'compile s':>9} {'peak MiB':>8}", flush=True)
    for c in cases:
        for row in CASES[c](ctx):
            print(f"{row['case']:<62} {row['variant']:<34} {row['img_s']:>8.1f} {row['ratio']:>6.2f}x "
                  f"{'' if row.get('compile_s') is None else format(row['compile_s'], '.1f'):>9} "
                  f"{'' if row.get('peak_mib') is None else format(row['peak_mib'], '.0f'):>8}", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({**row, "capability": ctx.capability.record(), "device": str(device),
                                        "steps": ctx.steps, "torch": torch.__version__}) + "\n")


if __name__ == "__main__":
    main()
