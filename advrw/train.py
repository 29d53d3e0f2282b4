"""``python -m advrw.train``: adversarial training with per-example weights, then evaluation.

Wires data, model, the shared PGD engine, a weighting scheme and a defense (all configured by
Hydra groups under ``conf/``) into one loop; records everything in the run dir.
"""

from __future__ import annotations

import logging
import platform
import sys
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
from advrw.cli import CONF_DIR, remove_stray_run_dir
from advrw.errors import AdvrwError
from advrw.lifecycle import RunState, exit_code, user_line, write_error
from advrw.runlog import RunLog, write_json
from advrw.attacks.fat import fat_spec_kwargs
from advrw.step import StepSpec, train_step

log = logging.getLogger("advrw.train")

# Settings of this invocation, not of the run: a resumed run takes them from the new command line.
INVOCATION_KEYS = ("resume", "stop_after", "device", "progress", "checkpoint_every")
# Keys a resumed run may change by override; anything else must match the checkpoint.
RESUME_MUTABLE = INVOCATION_KEYS + ("schedule.epochs", "logger", "eval", "dataset.root", "dataset.download",
                                    "dataset.cache_dir")


def step_spec(cfg: DictConfig, runtime=None) -> StepSpec:
    from advrw.awp import spec_fields as awp_spec_fields
    from advrw.weighting import scheme_hparams

    d = OmegaConf.to_container(cfg.defense, resolve=True)
    w = OmegaConf.to_container(cfg.weighting, resolve=True)
    hp = scheme_hparams(w)
    hp.pop("burn_in", None)
    return StepSpec(
        defense=d.pop("name"), defense_kwargs={k: v for k, v in d.items() if not k.startswith("attack_")},
        scheme=w["name"], scheme_hparams=hp, detach=bool(w["detach"]), combine=w["combine"],
        eps=float(cfg.attack.eps), step=float(cfg.attack.step), steps=int(cfg.attack.steps), init=cfg.attack.init,
        bn_mode=cfg.attack.bn_mode, attack_loss=cfg.attack.get("loss", "auto"), weighted_attack=bool(cfg.attack.weighted), attack_alpha=float(cfg.attack.alpha),
        amp_dtype=(runtime or hardware.resolve_runtime(cfg, resolve_device(cfg.device), warn=False)).amp_dtype,
        **fat_spec_kwargs(cfg.attack), **awp_spec_fields(cfg))


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
    from advrw.data.subsets import take
    from advrw.suite import predict, white_box

    idx = take(data.val_y, cfg.validation.n, seed=int(cfg.dataset.split_seed), key="validation.n")
    x, y = _as_float(data.val_x[idx.to(data.val_x.device)]), data.val_y[idx.to(data.val_y.device)]
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


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate; returns the results dict (also written to results.json)."""
    state = RunState.open(cfg, run_dir, _resume_config)
    with state.guard:  # from here a signal ends the run at a step boundary, with a checkpoint
        return _train_and_evaluate(state, run_dir)


def _train_and_evaluate(state: RunState, run_dir: Path) -> dict:
    from advrw.data import DeviceBatches, build_data, subsets
    from advrw.data.mixed import mixed_batches

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
            "choices": choices, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "resumed_from": resumed and resumed["path"], "start_epoch": state.start_epoch,
            "runtime": runtime.record()}
    state.attach(model, opt, sched, gen, data, config=config, choices=choices, info=info, spec=spec)
    write_json(run_dir / "run_info.json", info)
    from advrw.campaign import hydra_swept, logger_settings  # W&B name/group/job_type; a resume continues its run

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
        if runtime.compile and epoch == state.start_epoch:
            hardware.report_compile(info, run_dir / "run_info.json", record["epoch_time_s"])
        state.class_sums.append(record["class_weight_sum"])
        if len(data.val_y):
            record.update(validate_epoch(model, data, cfg, int(s.eval_batch_size)))
            if record["val_robust"] > state.best_robust:
                state.best_robust = record["val_robust"]
                record["best"] = True
                state.save("best.pt", state.payload(epoch + 1), epoch)
        runlog.epoch(record, weights=torch.cat(sums.ws) if cfg.logger.get("log_histograms", True) else None,
                     class_sums=state.class_sums, classes=data.classes)
        log.info("epoch %d/%d%s loss %.4f adv-acc %.3f w %.3f±%.3f [%.3f, %.3f]%s lr %.4g %.1fs",
                 epoch + 1, s.epochs, " (burn-in)" if burn_in else "", record["train_loss"], record["train_adv_acc"],
                 record["w_mean"], record["w_std"], record["w_min"], record["w_max"],
                 f" | val clean {record['val_clean']:.3f} PGD {record['val_robust']:.3f}" if "val_clean" in record else "",
                 record["lr"], record["epoch_time_s"])
        state.end_epoch(epoch)
    state.finished_training()

    if state.stop_epoch < int(s.epochs):
        log.info("stopped after epoch %d of %d (stop_after=%s); continue with resume=%s",
                 state.stop_epoch, s.epochs, cfg.stop_after, run_dir)
        runlog.finish()
        return {}
    if state.class_sums and cfg.eval.plots:
        try:
            from advrw import plots

            plots.plot_class_weight_sums(torch.tensor(state.class_sums), data.classes,
                                         run_dir / "class_weight_sums.png")
        except Exception as err:
            log.warning("class weight figure failed: %s", err)
    results = final_eval(cfg, model, data, run_dir, runlog, eval_subset, runtime=info["runtime"])
    runlog.finish()
    return results


def final_eval(cfg, model, data, run_dir: Path, runlog: RunLog, subset: tuple, runtime: dict | None = None) -> dict:
    """The evaluation suite on the test set with the configured checkpoint (last, best or both)."""
    from advrw import bestlast
    from advrw.awp import spec_fields as awp_spec_fields
    from advrw.results import write_report
    from advrw.suite import run_suite

    idx, picked = subset  # (indices, record) from advrw.data.subsets.eval_subset
    x, y = _as_float(data.test_x[idx.to(data.test_x.device)]), data.test_y[idx.to(data.test_y.device)]
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    def load(path):
        state = ckpt_io.read(path)
        model.load_state_dict(state["model"])
        return state

    def protocol_of(kind, path, state):
        out = {"checkpoint": bestlast.protocol(kind, path, state), "model": cfg.model.name,
               "dataset": cfg.dataset.name, "split": "test", "defense": cfg.defense.name,
               "weighting": cfg.weighting.name, "eval": cfg.eval.name, "train_seed": int(cfg.seed),
               "minimizer": awp_spec_fields(cfg), "subsets": {**data.subsets, "eval": picked}}
        if runtime is not None:  # eval itself runs fp32 and eager on this machine; training's settings as resolved
            out.update({"runtime": hardware.eval_runtime(x.device, runtime["channels_last"]), "train_runtime": runtime})
        return out

    results, arrays = bestlast.score(  # figures and W&B tables: the last scored (last with both)
        [(kind, run_dir / f"{kind}.pt") for kind in bestlast.kinds(cfg.eval.checkpoint)], load,
        lambda: run_suite(model, x, y, ev, num_classes=data.num_classes, progress=bool(cfg.progress)), protocol_of)
    write_report(run_dir, results, arrays, data.classes, runlog, plots=bool(cfg.eval.plots))
    return results


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run(cfg, run_dir)
    except AdvrwError as err:  # one line for the user, nothing else (no traceback, no log echo)
        print(user_line(err), file=sys.stderr)
        if exit_code(err) == 2:  # refused input: drop the run dir Hydra made if it holds nothing else
            remove_stray_run_dir(run_dir)
        sys.exit(exit_code(err))
    except OSError as err:  # a record write failed (disk full, read-only): one line, not a traceback
        line = write_error(err)
        if line is None:
            raise
        print(user_line(line), file=sys.stderr)
        sys.exit(exit_code(line))
    except KeyboardInterrupt:  # Ctrl-C before training started (no checkpoint yet): no traceback
        print("advrw: SIGINT before training started: nothing to save", file=sys.stderr)
        sys.exit(130)
    attacks = results.get("attacks", {})
    # The value a Hydra sweeper (e.g. optuna) optimises: the first attack's robust accuracy.
    return next(iter(attacks.values()))["robust_accuracy"] if attacks else None


def main() -> None:
    from advrw.cli import precheck

    precheck("train", validate_train)
    _hydra_main()


if __name__ == "__main__":
    # Call the importable module's copy: joblib/submitit launchers then pickle the task function by
    # reference (a function of ``__main__`` is pickled by value and drags unpicklable torch globals).
    from advrw.train import main as _main

    _main()
