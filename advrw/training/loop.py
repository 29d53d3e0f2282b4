"""The training loop: epochs of steps, validation, checkpoints through :class:`RunState`, then the
final evaluation (:mod:`advrw.evaluation.runner`, the same one ``advrw.eval`` runs)."""

from __future__ import annotations

import logging
import platform
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from advrw.config.validation import validate_train
from advrw.core import hardware
from advrw.core.errors import CheckpointWriteError, Interrupted
from advrw.core.files import check_writable, write_json
from advrw.core.hardware import resolve_device, seed_everything
from advrw.core.keys import RESUME_MUTABLE
from advrw.data import DeviceBatches, build_data, subsets
from advrw.data.mixed import mixed_batches
from advrw.data.subsets import take
from advrw.evaluation.runner import as_float, final_eval
from advrw.evaluation.suite import predict, white_box
from advrw.records.identity import hydra_swept, logger_settings
from advrw.records.provenance import git_commit
from advrw.records.runlog import RunLog
from advrw.training.build import build_model_for, optimizer_and_scheduler, step_spec
from advrw.training.lifecycle import RunState
from advrw.training.rundir import RunLock
from advrw.training.step import train_step

log = logging.getLogger("advrw.train")


def validate_epoch(model, data, cfg, batch_size) -> dict:
    """Clean and PGD accuracy on the held-out split (its own seeded RNG: training's is untouched)."""
    idx = take(data.val_y, cfg.validation.n, seed=int(cfg.dataset.split_seed), key="validation.n")
    x, y = as_float(data.val_x[idx.to(data.val_x.device)]), data.val_y[idx.to(data.val_y.device)]
    spec = {"kind": "pgd", "objective": "ce", "steps": int(cfg.validation.steps), "step": float(cfg.validation.step),
            "restarts": 1, "init": "uniform"}
    clean = predict(model, x, batch_size)
    out = white_box(model, x, y, spec, float(cfg.attack.eps), batch_size=batch_size, seed=cfg.seed,
                    only=None, desc="val PGD", progress=False, clean_logits=clean)
    return {"val_clean": (clean.argmax(1) == y).float().mean().item(),
            "val_robust": out.robust.float().mean().item(), "val_protocol": out.protocol}


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate; returns the results dict (also written to results.json)."""
    with RunLock(run_dir):  # one run per dir, before anything is written
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
        state = RunState.open(cfg, run_dir, overrides, choices)
        with state.guard:  # from here a signal ends the run at a safe point, with a checkpoint
            return _train_and_evaluate(state, run_dir)


def _train_and_evaluate(state: RunState, run_dir: Path) -> dict:
    cfg = state.cfg
    validate_train(cfg)
    check_writable(run_dir)
    state.prepare_dir()
    done = state.completed_results()
    if done is not None:
        return done
    device = resolve_device(cfg.device)
    runtime = hardware.resolve_runtime(cfg, device)  # precision/channels_last=auto, compile; warns before work
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    data = build_data(cfg.dataset, device)
    eval_subset = subsets.eval_subset(data.test_y, cfg.eval)  # checked now, not after training
    state.check_batches(len(data.train_y))
    model = build_model_for(cfg, data, device, runtime.channels_last)
    step_model = hardware.compile_model(model, runtime)  # checkpoints keep saving the eager `model`
    s = cfg.schedule
    opt, sched = optimizer_and_scheduler(model, s)
    spec = step_spec(cfg, runtime)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(cfg.seed))
    config = OmegaConf.to_container(cfg, resolve=True)
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    resumed = state.resumed
    if resumed is not None:  # the run's groups are the checkpoint's, except the ones a resume may change
        choices = {**resumed.get("choices", {}), **{k: v for k, v in choices.items() if k in RESUME_MUTABLE}}
    info = {"seed": int(cfg.seed), "git_commit": git_commit(), "command": " ".join(sys.argv),
            "choices": choices, "torch": str(torch.__version__), "python": platform.python_version(),
            "device": str(device), "resumed_from": resumed and resumed["path"], "start_epoch": state.start_epoch,
            "runtime": runtime.record()}
    state.attach(model, opt, sched, gen, data, config=config, choices=choices, info=info, spec=spec)
    write_json(run_dir / "run_info.json", info)
    logger_cfg, run_name = logger_settings(config["logger"], config, run_dir, "train",
                                           resumed and resumed.get("wandb"), hydra_swept())
    runlog = RunLog(run_dir, logger_cfg, {**config, "run_info": info}, name=run_name)
    state.extra["wandb"] = runlog.identity()  # a resume continues this W&B run
    log.info("run dir %s | %s + %s on %s/%s | device %s | git %s", run_dir, cfg.defense.name, cfg.weighting.name,
             cfg.dataset.name, cfg.model.name, device, info["git_commit"])

    batches = DeviceBatches(data.train_x, data.train_y, int(s.batch_size), shuffle=True, augment=data.augment,
                            generator=gen)
    if cfg.dataset.get("extra_fraction") is not None:  # a fixed share of extra images in every batch
        batches = mixed_batches(data, cfg, gen, state.start_epoch)
    for epoch in state.epoch_range():
        burn_in = epoch < int(s.burn_in)
        sums, order, first = state.begin_epoch(epoch, device)
        bar = tqdm(batches.batches(order, first), desc=f"epoch {epoch + 1}/{s.epochs}{' (burn-in)' if burn_in else ''}",
                   disable=not cfg.progress, leave=False, initial=first, total=len(batches))
        for i, (x, y) in enumerate(bar, start=first):
            if runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = train_step(step_model, opt, x, y, spec.at_epoch(epoch), burn_in=burn_in, generator=gen, epoch=epoch)
            sums.add(out, y)
            sync = bool(cfg.progress and i % 20 == 0)  # the only host sync inside the epoch
            if sync:
                w = out["w"]
                bar.set_postfix(loss=f"{out['loss'].item():.3f}", adv_acc=f"{out['correct_adv'].item() / len(y):.2f}",
                                w=f"{w.mean().item():.2f}±{w.std().item() if len(w) > 1 else 0:.2f}")
            state.after_step(epoch, i, out, sums, batches.order, len(batches), sync)
        state.check_finite(epoch)
        lr = opt.param_groups[0]["lr"]  # the rate this epoch trained with
        sched.step()
        record = sums.record(epoch, lr, burn_in)
        state.check_weights(epoch, record)
        if runtime.compile and epoch == state.start_epoch:
            hardware.report_compile(info, run_dir / "run_info.json", record["epoch_time_s"])
        state.class_sums.append(record["class_weight_sum"])
        if len(data.val_y):
            record.update(validate_epoch(model, data, cfg, int(s.eval_batch_size)))
            if state.is_best(record["val_robust"]):
                record["best"] = True
        runlog.epoch(record, weights=torch.cat(sums.ws) if cfg.logger.get("log_histograms", True) else None,
                     class_sums=state.class_sums, classes=data.classes)
        log.info("epoch %d/%d%s loss %.4f adv-acc %.3f w %.3f±%.3f [%.3f, %.3f]%s lr %.4g %.1fs",
                 epoch + 1, s.epochs, " (burn-in)" if burn_in else "", record["train_loss"], record["train_adv_acc"],
                 record["w_mean"], record["w_std"], record["w_min"], record["w_max"],
                 f" | val clean {record['val_clean']:.3f} PGD {record['val_robust']:.3f}" if "val_clean" in record else "",
                 record["lr"], record["epoch_time_s"])
        state.end_epoch(epoch, record.get("val_robust"))
    state.finished_training()

    if state.stop_epoch < int(s.epochs):
        log.info("stopped after epoch %d of %d (stop_after=%s); continue with resume=%s",
                 state.stop_epoch, s.epochs, cfg.stop_after, run_dir)
        state.guard.defer("W&B finishing", "finish")
        runlog.finish()
        state.guard.check()  # a signal meanwhile still ends with 75 (last.pt is saved)
        return {}
    guard = state.guard
    try:  # a signal now stops after the current attack or figure; resume redoes what is missing
        guard.defer("the final evaluation", "eval")
        results = final_eval(cfg, model, data, run_dir, runlog, eval_subset, runtime=info["runtime"],
                             between_attacks=guard.between_attacks)
        guard.defer("the figures", "figures")
        if state.class_sums and cfg.eval.plots:
            class_weight_figure(state.class_sums, data.classes, run_dir / "class_weight_sums.png")
        guard.check()
    except (Interrupted, CheckpointWriteError):  # a signal or a full disk: a resume finishes the evaluation
        (run_dir / "results.json").unlink(missing_ok=True)  # and its figures (results.json marks it complete)
        raise
    guard.defer("W&B finishing", "finish")
    runlog.finish()
    guard.check()
    return results


def class_weight_figure(sums: list, classes: list[str], path: Path) -> None:
    try:
        from advrw.evaluation import plots  # deferred: matplotlib, only when figures are made

        plots.plot_class_weight_sums(torch.tensor(sums), classes, path)
    except CheckpointWriteError:  # disk full: one line naming the PNG, exit 4
        raise
    except Exception as err:  # a figure must not lose the run (a signal is a BaseException: not caught)
        log.warning("class weight figure failed: %s", err)
