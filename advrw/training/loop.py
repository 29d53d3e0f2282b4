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
from advrw.core.lock import RunLock
from advrw.data import DeviceBatches, build_data, subsets
from advrw.data.mixed import mixed_batches
from advrw.data.subsets import take
from advrw.evaluation.runner import as_float, final_eval
from advrw.evaluation.suite import predict, white_box
from advrw.methods import ema as weight_avg
from advrw.records.identity import hydra_campaign, hydra_swept, logger_settings, wandb_config
from advrw.records.provenance import git_state, job_command, record_continuation
from advrw.records.runlog import RunLog
from advrw.training.build import build_model_for, optimizer_and_scheduler, per_iteration, step_spec
from advrw.training.lifecycle import RunState
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
    gen = torch.Generator(device=device)
    gen.manual_seed(int(cfg.seed))
    batches = DeviceBatches(data.train_x, data.train_y, int(s.batch_size), shuffle=True, augment=data.augment,
                            generator=gen)
    if cfg.dataset.get("extra_fraction") is not None:  # a fixed share of extra images in every batch
        batches = mixed_batches(data, cfg, gen, state.start_epoch)
    opt, sched = optimizer_and_scheduler(model, s, len(batches))  # per-iteration schedules count batches
    spec = step_spec(cfg, runtime)
    config = OmegaConf.to_container(cfg, resolve=True)
    info, choices, campaign = _run_info(state, cfg, run_dir, device, runtime, config)
    state.attach(model, opt, sched, gen, data, config=config, choices=choices, info=info, spec=spec)
    runlog, run_name = _open_runlog(state, cfg, run_dir, config, info, choices, campaign)
    log.info("run dir %s | %s + %s on %s/%s | device %s | git %s", run_dir, cfg.defense.name, cfg.weighting.name,
             cfg.dataset.name, cfg.model.name, device, info["git_commit"])

    ema = weight_avg.build(cfg, model, int(s.epochs) * len(batches))
    state.attach_ema(ema)
    val_model = ema.module if ema is not None and weight_avg.selects_on_ema(cfg) else model
    for epoch in state.epoch_range():
        burn_in = epoch < int(s.burn_in)
        sums, order, first = state.begin_epoch(epoch, device)
        bar = tqdm(batches.batches(order, first), desc=f"epoch {epoch + 1}/{s.epochs}{' (burn-in)' if burn_in else ''}",
                   disable=not cfg.progress, leave=False, initial=first, total=len(batches))
        for i, (x, y) in enumerate(bar, start=first):
            if runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = train_step(step_model, opt, x, y, spec.at_epoch(epoch), burn_in=burn_in, generator=gen, epoch=epoch,
                             first=epoch == 0 and i == 0)
            if ema is not None:
                ema.update()
            if per_iteration(s):
                sched.step()
            sums.add(out, y)
            sync = bool(cfg.progress and i % 20 == 0)  # the only host sync inside the epoch
            if sync:
                w = out["w"]
                bar.set_postfix(loss=f"{out['loss'].item():.3f}", adv_acc=f"{out['correct_adv'].item() / len(y):.2f}",
                                w=f"{w.mean().item():.2f}±{w.std().item() if len(w) > 1 else 0:.2f}")
            state.after_step(epoch, i, out, sums, batches.order, len(batches), sync)
        state.check_finite(epoch)
        if ema is not None:
            ema.end_epoch()  # BN statistics from the live model, before validation and the checkpoint
        lr = opt.param_groups[0]["lr"]  # the rate this epoch (its last step) trained with
        if not per_iteration(s):
            sched.step()
        record = sums.record(epoch, lr, burn_in)
        state.check_weights(epoch, record)
        if runtime.compile and epoch == state.start_epoch:
            hardware.report_compile(info, run_dir / "run_info.json", record["epoch_time_s"])
        state.class_sums.append(record["class_weight_sum"])
        if len(data.val_y):
            record.update(validate_epoch(val_model, data, cfg, int(s.eval_batch_size)))
            if ema is not None:
                record["val_weights"] = "ema" if val_model is ema.module else "raw"
            if state.is_best(record["val_robust"]):
                record["best"] = True
        runlog.epoch(record, weights=torch.cat(sums.ws) if cfg.logger.get("log_histograms", True) else None,
                     classes=data.classes)
        _log_epoch(record, epoch, int(s.epochs), burn_in)
        state.end_epoch(epoch, record.get("val_robust"))
    state.finished_training()

    if state.stop_epoch < int(s.epochs):
        log.info("stopped after epoch %d of %d (stop_after=%s); continue with resume=%s",
                 state.stop_epoch, s.epochs, cfg.stop_after, run_dir)
        state.guard.defer("W&B finishing", "finish")
        runlog.finish()
        state.guard.check()  # a signal meanwhile still ends with 75 (last.pt is saved)
        return {}
    return _final_phase(state, cfg, model, data, run_dir, runlog, run_name, eval_subset, info["runtime"])


def _run_info(state: RunState, cfg, run_dir: Path, device, runtime, config: dict) -> tuple[dict, dict, str | None]:
    """run_info.json (the job's own command, git state, lineage, the resolved config), written now."""
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    resumed = state.resumed
    if resumed is not None:  # the run's groups are the checkpoint's, except the ones a resume may change
        choices = {**resumed.get("choices", {}), **{k: v for k, v in choices.items() if k in RESUME_MUTABLE}}
    campaign = hydra_campaign() or (resumed and (resumed.get("run_info") or {}).get("campaign"))
    git = git_state()
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    source = resumed and Path(resumed["path"]).resolve().parent
    info = {"seed": int(cfg.seed), "git_commit": git["commit"], "git_dirty": git["dirty"],
            "git_diff_sha1": git["diff_sha1"], "command": job_command("advrw.train", overrides),
            "launched_with": " ".join(sys.argv), "choices": choices, "torch": str(torch.__version__),
            "python": platform.python_version(), "device": str(device),
            "resumed_from": resumed and str(Path(resumed["path"]).resolve()), "start_epoch": state.start_epoch,
            "continues": str(source) if source and source != run_dir.resolve() else None,
            "campaign": campaign, "runtime": runtime.record(), "config": config}
    write_json(run_dir / "run_info.json", info)
    if info["continues"]:  # lineage both ways: the continued run points here (advrw.report follows it)
        record_continuation(source, run_dir)
    return info, choices, campaign


def _open_runlog(state: RunState, cfg, run_dir: Path, config: dict, info: dict, choices: dict, campaign):
    """metrics.jsonl and W&B (a resume continues its W&B run); a debug run says what it shrank."""
    s, resumed = cfg.schedule, state.resumed
    logger_cfg, run_name = logger_settings(config["logger"], config, run_dir, "train",
                                           resumed and resumed.get("wandb"), hydra_swept(), campaign=campaign,
                                           debug=choices.get("debug"))
    runlog = RunLog(run_dir, logger_cfg, {**wandb_config(config), "campaign": campaign,
                                          "run_info": {k: v for k, v in info.items() if k != "config"}}, name=run_name)
    state.extra["wandb"] = runlog.identity()  # a resume continues this W&B run
    if choices.get("debug"):  # a quick check must never read as a result: say what it shrank
        awp = f", AWP warm-up {cfg.minimizer.warmup}" if cfg.minimizer.name == "awp" else ""
        log.info("debug=%s: %s training images, %d epochs (burn-in %s%s), training attack %s steps, validation on "
                 "%s images, eval=%s on %s test images: a pipeline check, not the preset's numbers",
                 choices["debug"], cfg.dataset.get("n_train"), int(s.epochs), s.burn_in, awp, cfg.attack.steps,
                 cfg.validation.n if cfg.dataset.get("val_size") else 0, cfg.eval.name, cfg.eval.n_eval)
    return runlog, run_name


def _log_epoch(record: dict, epoch: int, epochs: int, burn_in: bool) -> None:
    log.info("epoch %d/%d%s loss %.4f adv-acc %.3f w %.3f±%.3f [%.3f, %.3f]%s lr %.4g %.1fs",
             epoch + 1, epochs, " (burn-in)" if burn_in else "", record["train_loss"], record["train_adv_acc"],
             record["w_mean"], record["w_std"], record["w_min"], record["w_max"],
             f" | val clean {record['val_clean']:.3f} PGD {record['val_robust']:.3f}" if "val_clean" in record else "",
             record["lr"], record["epoch_time_s"])


def _final_phase(state: RunState, cfg, model, data, run_dir: Path, runlog, run_name: str, eval_subset,
                 runtime: dict) -> dict:
    """The final evaluation, figures and W&B finishing: a signal stops after the current attack or
    figure, and a resume redoes only what is missing."""
    guard = state.guard
    try:
        guard.defer("the final evaluation", "eval")
        results = final_eval(cfg, model, data, run_dir, runlog, eval_subset, runtime=runtime,
                             between_attacks=guard.between_attacks)
        guard.defer("the figures", "figures")
        if state.class_sums and cfg.eval.plots:
            figure = run_dir / "figures" / "class_weight_sums.png"
            class_weight_figure(state.class_sums, data.classes, figure)
            if figure.exists():
                runlog.images([figure])
        guard.check()
    except (Interrupted, CheckpointWriteError):  # a signal or a full disk: a resume finishes the evaluation
        (run_dir / "results.json").unlink(missing_ok=True)  # and its figures (results.json marks it complete)
        raise
    guard.defer("W&B finishing", "finish")
    if cfg.logger.get("log_checkpoints"):  # last.pt (and best.pt) as a W&B model artifact
        runlog.artifact(f"model-{run_name}".replace("=", "_"), [p for p in (run_dir / "last.pt", run_dir / "best.pt")
                                                              if p.exists()])
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
