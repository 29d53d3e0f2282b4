"""``python -m advrw.train``: adversarial training with per-example weights, then evaluation.

Wires data, model, the shared PGD engine, a weighting scheme and a defense (all configured by
Hydra groups under ``conf/``) into one loop; records everything in the run dir.
"""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from advrw import checkpoint as ckpt_io
from advrw import hardware
from advrw.config import (check_writable, git_commit, resolve_device, seed_everything,
                          validate_train)
from advrw.cli import CONF_DIR
from advrw.errors import AdvrwError
from advrw.runlog import RunLog, write_json
from advrw.step import StepSpec, train_step

log = logging.getLogger("advrw.train")

# Settings of this invocation, not of the run: a resumed run takes them from the new command line.
INVOCATION_KEYS = ("resume", "stop_after", "device", "progress", "checkpoint_every")
# Keys a resumed run may change by override; anything else must match the checkpoint.
RESUME_MUTABLE = INVOCATION_KEYS + ("schedule.epochs", "logger", "eval", "dataset.root", "dataset.download",
                                    "dataset.cache_dir")


def step_spec(cfg: DictConfig, runtime=None) -> StepSpec:
    from advrw.weighting import scheme_hparams

    d = OmegaConf.to_container(cfg.defense, resolve=True)
    w = OmegaConf.to_container(cfg.weighting, resolve=True)
    hp = scheme_hparams(w)
    hp.pop("burn_in", None)
    return StepSpec(
        defense=d.pop("name"), defense_kwargs={k: v for k, v in d.items() if k != "attack_init"},
        scheme=w["name"], scheme_hparams=hp, detach=bool(w["detach"]), combine=w["combine"],
        eps=float(cfg.attack.eps), step=float(cfg.attack.step), steps=int(cfg.attack.steps), init=cfg.attack.init,
        bn_mode=cfg.attack.bn_mode, attack_loss=cfg.attack.get("loss", "auto"), weighted_attack=bool(cfg.attack.weighted), attack_alpha=float(cfg.attack.alpha),
        amp_dtype=(runtime or hardware.resolve_runtime(cfg, resolve_device(cfg.device), warn=False)).amp_dtype)


def build_model_for(cfg: DictConfig, data, device, channels_last=None):
    from advrw.models import build_model

    norm = (data.mean, data.std) if cfg.dataset.get("normalize") else (None, None)
    model = build_model(cfg.model.name, data.num_classes, in_channels=data.channels, image_size=data.image_size,
                        mean=norm[0], std=norm[1]).to(device)
    if channels_last is None:  # callers without a resolved runtime (tests, notebooks)
        channels_last = hardware.resolve_runtime(cfg, device, warn=False).channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def optimizer_and_scheduler(model, s):
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                          nesterov=bool(s.nesterov))
    if s.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(s.epochs))
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(s.milestones), gamma=s.lr_gamma)
    return opt, sched


@torch.no_grad()
def _as_float(x_uint8):
    return x_uint8.float().div_(255)


def validate_epoch(model, data, cfg, batch_size) -> dict:
    """Clean and PGD accuracy on the held-out split (its own seeded RNG: training's is untouched)."""
    from advrw.suite import predict, white_box

    n = cfg.validation.n or len(data.val_y)
    x, y = _as_float(data.val_x[:n]), data.val_y[:n]
    spec = {"kind": "pgd", "objective": "ce", "steps": int(cfg.validation.steps), "step": float(cfg.validation.step),
            "restarts": 1, "init": "uniform"}
    clean = predict(model, x, batch_size)
    out = white_box(model, x, y, spec, float(cfg.attack.eps), batch_size=batch_size, seed=cfg.seed,
                    only=None, desc="val PGD", progress=False, clean_logits=clean)
    return {"val_clean": (clean.argmax(1) == y).float().mean().item(),
            "val_robust": out.robust.float().mean().item(), "val_protocol": out.protocol}


def _resume_config(cfg: DictConfig, saved: dict) -> DictConfig:
    """The checkpoint's config with the command line's allowed changes applied."""
    saved_cfg = OmegaConf.create(saved["config"])
    choices = saved.get("choices", {})
    now = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key.startswith("hydra"):
            continue
        if key in choices:  # a group selection, e.g. model=wrn34_10
            if key in RESUME_MUTABLE:
                saved_cfg[key] = cfg[key]
            elif now.get(key) != choices[key]:
                raise AdvrwError(f"resume: {key}={now.get(key)} does not match the checkpoint's {key}={choices[key]}; "
                                 "a resumed run keeps its config (start a new run instead)")
            continue
        if any(key == m or key.startswith(m + ".") for m in RESUME_MUTABLE):
            OmegaConf.update(saved_cfg, key, OmegaConf.select(cfg, key), force_add=True)
        elif OmegaConf.select(saved_cfg, key) != OmegaConf.select(cfg, key):
            raise AdvrwError(f"resume: {key}={value} does not match the checkpoint's {key}="
                             f"{OmegaConf.select(saved_cfg, key)}; a resumed run keeps its config")
    for key in INVOCATION_KEYS:
        saved_cfg[key] = cfg[key]
    return saved_cfg


def _resume_path(resume: str) -> Path:
    p = Path(resume).expanduser()
    if p.is_dir():
        p = p / "last.pt"
    if not p.exists():
        raise AdvrwError(f"resume={resume} has no checkpoint: expected a run dir with last.pt or a .pt file")
    return p


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate; returns the results dict (also written to results.json)."""
    from advrw.data import DeviceBatches, build_data

    resumed = None
    if cfg.resume:
        path = _resume_path(cfg.resume)
        resumed = ckpt_io.read(path)
        if "config" not in resumed or "optimizer" not in resumed:
            raise AdvrwError(f"resume={cfg.resume}: {path} is not an advrw training checkpoint (no config/optimizer)")
        cfg = _resume_config(cfg, resumed)
        resumed["path"] = str(path)
    validate_train(cfg)
    check_writable(run_dir)
    if resumed is None and (run_dir / "last.pt").exists():
        raise AdvrwError(f"{run_dir} already holds a run (last.pt): pass resume={run_dir} or choose a new dir")
    device = resolve_device(cfg.device)
    runtime = hardware.resolve_runtime(cfg, device)  # precision/channels_last=auto, compile; warns before work
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    data = build_data(cfg.dataset, device)
    n_eval = cfg.eval.n_eval or len(data.test_y)
    if n_eval > len(data.test_y):
        raise AdvrwError(f"eval.n_eval={n_eval} is larger than the test set ({len(data.test_y)} examples)")
    model = build_model_for(cfg, data, device, runtime.channels_last)
    step_model = hardware.compile_model(model, runtime)  # checkpoints keep saving the eager `model`
    s = cfg.schedule
    opt, sched = optimizer_and_scheduler(model, s)
    spec = step_spec(cfg, runtime)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(cfg.seed))
    start_epoch, best_robust, history_class_sums = 0, -1.0, []
    if resumed is not None:
        ckpt_io.load_model_state(model, resumed["model"], resumed["path"], cfg.model.name, data.num_classes)
        opt.load_state_dict(resumed["optimizer"])
        sched.load_state_dict(resumed["scheduler"])
        ckpt_io.restore_rng(resumed["rng"], gen)
        start_epoch, best_robust = int(resumed["epoch"]), float(resumed.get("best_robust", -1.0))
        history_class_sums = list(resumed.get("class_weight_sums", []))
        old_metrics = Path(resumed["path"]).parent / "metrics.jsonl"
        if old_metrics.exists() and old_metrics.resolve() != (run_dir / "metrics.jsonl").resolve():
            (run_dir / "metrics.jsonl").write_text(old_metrics.read_text())  # the new dir is a full record
        log.info("resumed from %s at epoch %d", resumed["path"], start_epoch)
    config = OmegaConf.to_container(cfg, resolve=True)
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    if resumed is not None:  # the run's groups are the checkpoint's, except the ones a resume may change
        choices = {**resumed.get("choices", {}), **{k: v for k, v in choices.items() if k in RESUME_MUTABLE}}
    info = {"seed": int(cfg.seed), "git_commit": git_commit(), "command": " ".join(sys.argv),
            "choices": choices, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "resumed_from": resumed and resumed["path"], "start_epoch": start_epoch,
            "runtime": runtime.record()}
    write_json(run_dir / "run_info.json", info)
    logger_cfg = dict(config["logger"])
    logger_cfg["dir"] = logger_cfg.get("dir") or str(run_dir)
    runlog = RunLog(run_dir, logger_cfg, {**config, "run_info": info}, name=run_dir.name)
    log.info("run dir %s | %s + %s on %s/%s | device %s | git %s", run_dir, cfg.defense.name, cfg.weighting.name,
             cfg.dataset.name, cfg.model.name, device, info["git_commit"])

    batches = DeviceBatches(data.train_x, data.train_y, int(s.batch_size), shuffle=True, augment=data.augment,
                            generator=gen)
    end_epoch = int(s.epochs) if cfg.stop_after is None else min(int(s.epochs), start_epoch + int(cfg.stop_after))

    def payload(epoch):
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": ckpt_io.rng_state(gen), "epoch": epoch, "best_robust": best_robust, "config": config,
                "choices": choices, "run_info": info, "class_weight_sums": history_class_sums,
                "num_classes": data.num_classes, "classes": data.classes}

    for epoch in range(start_epoch, end_epoch):
        burn_in = epoch < int(s.burn_in)
        t0 = time.time()
        sums = {"loss": torch.zeros((), device=device), "correct_adv": torch.zeros((), device=device, dtype=torch.long)}
        class_w = torch.zeros(data.num_classes, device=device)
        ws, seen = [], 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{s.epochs}{' (burn-in)' if burn_in else ''}",
                   disable=not cfg.progress, leave=False)
        for i, (x, y) in enumerate(bar):
            if runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = train_step(step_model, opt, x, y, spec, burn_in=burn_in, generator=gen)
            sums["loss"] += out["loss"] * len(y)
            sums["correct_adv"] += out["correct_adv"]
            class_w.index_add_(0, y, out["w"])
            ws.append(out["w"])
            seen += len(y)
            if cfg.progress and i % 20 == 0:  # the only host sync inside the epoch
                w = out["w"]
                bar.set_postfix(loss=f"{out['loss'].item():.3f}", adv_acc=f"{out['correct_adv'].item() / len(y):.2f}",
                                w=f"{w.mean().item():.2f}±{w.std().item() if len(w) > 1 else 0:.2f}")
        lr = opt.param_groups[0]["lr"]  # the rate this epoch trained with
        sched.step()
        w_all = torch.cat(ws)
        record = {"epoch": epoch + 1, "lr": lr, "burn_in": burn_in,
                  "train_loss": (sums["loss"] / seen).item(), "train_adv_acc": sums["correct_adv"].item() / seen,
                  "w_mean": w_all.mean().item(), "w_std": w_all.std().item() if len(w_all) > 1 else 0.0,
                  "w_min": w_all.min().item(), "w_max": w_all.max().item(),
                  "epoch_time_s": time.time() - t0, "images_per_s": seen / (time.time() - t0)}
        if runtime.compile and epoch == start_epoch:
            hardware.report_compile(info, run_dir / "run_info.json", record["epoch_time_s"])
        history_class_sums.append(class_w.tolist())
        record["class_weight_sum"] = class_w.tolist()
        if not math.isfinite(record["train_loss"]):
            raise RuntimeError(f"training loss became {record['train_loss']} at epoch {epoch + 1}")
        if len(data.val_y):
            record.update(validate_epoch(model, data, cfg, int(s.eval_batch_size)))
            if record["val_robust"] > best_robust:
                best_robust = record["val_robust"]
                record["best"] = True
                ckpt_io.save(run_dir / "best.pt", payload(epoch + 1))
        runlog.epoch(record, weights=w_all if cfg.logger.get("log_histograms", True) else None,
                     class_sums=record["class_weight_sum"], classes=data.classes)
        log.info("epoch %d/%d%s loss %.4f adv-acc %.3f w %.3f±%.3f [%.3f, %.3f]%s lr %.4g %.1fs",
                 epoch + 1, s.epochs, " (burn-in)" if burn_in else "", record["train_loss"], record["train_adv_acc"],
                 record["w_mean"], record["w_std"], record["w_min"], record["w_max"],
                 f" | val clean {record['val_clean']:.3f} PGD {record['val_robust']:.3f}" if "val_clean" in record else "",
                 record["lr"], record["epoch_time_s"])
        if (epoch + 1) % int(cfg.checkpoint_every) == 0 or epoch + 1 == end_epoch:
            ckpt_io.save(run_dir / "last.pt", payload(epoch + 1))

    if end_epoch < int(s.epochs):
        log.info("stopped after epoch %d of %d (stop_after=%s); continue with resume=%s",
                 end_epoch, s.epochs, cfg.stop_after, run_dir)
        runlog.finish()
        return {}
    if history_class_sums and cfg.eval.plots:
        try:
            from advrw import plots

            plots.plot_class_weight_sums(torch.tensor(history_class_sums), data.classes,
                                         run_dir / "class_weight_sums.png")
        except Exception as err:
            log.warning("class weight figure failed: %s", err)
    results = final_eval(cfg, model, data, run_dir, runlog, n_eval, runtime=info["runtime"])
    runlog.finish()
    return results


def final_eval(cfg, model, data, run_dir: Path, runlog: RunLog, n_eval: int, runtime: dict | None = None) -> dict:
    """The evaluation suite on the test set with the configured checkpoint (last or best)."""
    from advrw.report import write_report
    from advrw.suite import run_suite

    kind = cfg.eval.checkpoint
    path = run_dir / f"{kind}.pt"
    state = ckpt_io.read(path)
    model.load_state_dict(state["model"])
    x, y = _as_float(data.test_x[:n_eval]), data.test_y[:n_eval]
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    results, arrays = run_suite(model, x, y, ev, num_classes=data.num_classes, progress=bool(cfg.progress))
    results["protocol"].update({"checkpoint": {"path": str(path), "kind": kind, "epoch": state["epoch"]},
                                "model": cfg.model.name, "dataset": cfg.dataset.name, "split": "test",
                                "defense": cfg.defense.name, "weighting": cfg.weighting.name,
                                "eval": cfg.eval.name, "train_seed": int(cfg.seed)})
    if runtime is not None:  # eval itself runs fp32 and eager on this machine; training's settings as resolved
        results["protocol"].update({"runtime": hardware.eval_runtime(x.device, runtime["channels_last"]),
                                    "train_runtime": runtime})
    write_report(run_dir, results, arrays, data.classes, runlog, plots=bool(cfg.eval.plots))
    return results


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run(cfg, run_dir)
    except AdvrwError as err:  # one line for the user, nothing else (no traceback, no log echo)
        print(f"advrw: error: {err}", file=sys.stderr)
        sys.exit(2)
    attacks = results.get("attacks", {})
    # The value a Hydra sweeper (e.g. optuna) optimises: the first attack's robust accuracy.
    return next(iter(attacks.values()))["robust_accuracy"] if attacks else None


def main() -> None:
    from advrw.cli import precheck

    precheck("train", validate_train)
    _hydra_main()


if __name__ == "__main__":
    main()
