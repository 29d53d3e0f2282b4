"""Training-step and evaluation throughput: advrw vs a loop written like the papers' code.

    python scripts/bench.py                       # both default cases, fp32 and the fast path
    python scripts/bench.py --case preact --steps 5 --precision bf16 --channels-last

The reference loop does what the authors' public scripts do: a host-side batch moved to the
device every step, PGD in eval mode, fp32 everywhere, a ``.item()`` per step for logging. advrw
runs its own ``train_step`` on device-resident uint8 data with batched augmentation, optionally
under bf16 autocast and channels_last. Same model, batch, attack and data, in one process;
the ratio is advrw images/s over reference images/s. Not a test: speed depends on the machine.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from advrw.data import DeviceBatches
from advrw.models import build_model
from advrw.step import StepSpec, train_step
from advrw.suite import white_box

CASES = {
    # name: (model, channels, size, eps, step, steps, batch)
    "preact": ("preact_resnet18", 3, 32, 8 / 255, 2 / 255, 10, 128),
    "smallcnn": ("smallcnn", 1, 28, 0.3, 0.01, 40, 128),
}


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


def timed(fn, n_warmup, n_steps, device):
    for _ in range(n_warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n_steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_case(name, device, steps, warmup, precision, channels_last, eval_too):
    model_name, c, size, eps, step, k, batch = CASES[name]
    torch.manual_seed(0)
    n = batch * 4
    x_u8 = torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    x_host = x_u8.float().div(255)
    ref_model = build_model(model_name, 10, in_channels=c, image_size=size).to(device)
    fast_model = build_model(model_name, 10, in_channels=c, image_size=size).to(device)
    fast_model.load_state_dict(ref_model.state_dict())
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9)
    fast_opt = torch.optim.SGD(fast_model.parameters(), lr=0.01, momentum=0.9)
    if channels_last:
        fast_model = fast_model.to(memory_format=torch.channels_last)
    spec = StepSpec(defense="at", eps=eps, step=step, steps=k, init="normal",
                    amp_dtype=torch.bfloat16 if precision == "bf16" else None)
    batches = DeviceBatches(x_u8.to(device), y.to(device), batch, shuffle=True, augment=(c == 3))
    it = iter(batches)

    def fast():
        nonlocal it
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(batches)
            xb, yb = next(it)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        train_step(fast_model, fast_opt, xb, yb, spec)

    i = [0]

    def ref():
        j = i[0] % 4
        i[0] += 1
        reference_step(ref_model, ref_opt, x_host[j * batch:(j + 1) * batch], y[j * batch:(j + 1) * batch],
                       device, eps, step, k)

    t_ref = timed(ref, warmup, steps, device)
    t_fast = timed(fast, warmup, steps, device)
    row = {"case": name, "model": model_name, "batch": batch, "pgd_steps": k, "device": str(device),
           "precision": precision, "channels_last": channels_last,
           "reference_img_s": steps * batch / t_ref, "advrw_img_s": steps * batch / t_fast}
    row["speedup"] = row["advrw_img_s"] / row["reference_img_s"]
    if eval_too:
        xe, ye = x_host[:batch].to(device), y[:batch].to(device)
        spec20 = {"kind": "pgd", "objective": "ce", "steps": 20, "step": eps / 10, "restarts": 1, "init": "uniform"}
        t_eval = timed(lambda: white_box(fast_model, xe, ye, spec20, eps, batch_size=batch, seed=0, progress=False),
                       1, max(1, steps // 2), device)
        row["eval_pgd20_img_s"] = max(1, steps // 2) * batch / t_eval
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--json", help="append rows to this JSON-lines file")
    args = ap.parse_args()
    device = torch.device(args.device)
    cases = list(CASES) if args.case == "all" else [args.case]
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print(f"{'case':<9} {'precision':<9} {'ch_last':<7} {'reference img/s':>15} {'advrw img/s':>12} {'ratio':>6} {'eval PGD-20 img/s':>18}")
    for case in cases:
        for prec in precisions:
            row = bench_case(case, device, args.steps, args.warmup, prec, args.channels_last, not args.no_eval)
            print(f"{case:<9} {prec:<9} {str(args.channels_last):<7} {row['reference_img_s']:>15.1f} "
                  f"{row['advrw_img_s']:>12.1f} {row['speedup']:>5.2f}x {row.get('eval_pgd20_img_s', float('nan')):>18.1f}")
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
