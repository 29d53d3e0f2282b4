"""Run records: ``metrics.jsonl`` on disk, Weights & Biases when configured, Python logging.

W&B is optional and can never stop training: every call into it is guarded, and the first
failure switches it off with one warning. Offline by default (``WANDB_MODE``); sync later with
``wandb sync``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from advrw.core.files import jsonable as _jsonable

log = logging.getLogger(__name__)


WANDB_TIMEOUT_S = 5


def _writable_dir(path: Path) -> bool:
    """Can files be created in ``path`` (made if missing)? Tried for real: root ignores mode bits."""
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


def wandb_init_kwargs(cfg: dict, config: dict, name: str | None, run_dir: Path) -> dict:
    """``wandb.init`` arguments from the logger config: name, group, job_type and, to continue a run, its id.

    ``cfg`` is the resolved ``logger`` group plus what the entry point adds: ``job_type`` (train /
    eval / report), ``id`` (a resumed run's W&B id, from its checkpoint), ``name`` and ``group``
    (derived from the config by ``advrw.records.identity.wandb_identity`` unless the user set them).
    """
    kwargs = {"project": cfg.get("project"), "entity": cfg.get("entity"), "group": cfg.get("group"),
              "job_type": cfg.get("job_type"), "tags": [str(t) for t in (cfg.get("tags") or [])],
              "mode": cfg.get("mode") or "offline", "dir": str(cfg.get("dir") or run_dir), "config": config,
              "name": cfg.get("run_name") or name, "reinit": "finish_previous"}
    if cfg.get("id"):
        kwargs.update(id=cfg["id"], resume="allow")
    return kwargs


def wandb_metrics(record: dict, classes=None) -> dict:
    """metrics.jsonl's flat names as W&B's prefixes: ``val_robust`` -> ``val/robust``, ``train_loss`` ->
    ``train/loss``, the rest of an epoch's numbers (lr, weights, timing) under ``train/``; the panels
    group by prefix. ``class_weight_sum`` -> ``train/class_weight_sum/<class>``."""
    out = {}
    for k, v in record.items():
        if k == "class_weight_sum" and isinstance(v, (list, tuple)):
            names = [str(c) for c in (classes or range(len(v)))]
            out.update({f"train/class_weight_sum/{n}": float(x) for n, x in zip(names, v)})
        elif not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        elif k == "epoch":
            out[k] = v
        elif k.startswith("val_"):
            out["val/" + k[4:]] = v
        else:
            out["train/" + (k[6:] if k.startswith("train_") else k)] = v
    return out


class RunLog:
    def __init__(self, run_dir: Path, logger_cfg: dict | None, config: dict, name: str | None = None):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.wandb = None
        if logger_cfg and logger_cfg.get("name") == "wandb":
            self._start_wandb(logger_cfg, config, name)

    def _start_wandb(self, cfg, config, name):
        try:
            import wandb

            kwargs = wandb_init_kwargs(cfg, config, name, self.run_dir)
            wdir = Path(kwargs["dir"])
            if not _writable_dir(wdir):  # wandb would silently fall back to /tmp/wandb
                log.warning("W&B: logger.dir=%s is not writable; its files go to the run dir %s instead",
                            wdir, self.run_dir)
                kwargs["dir"] = str(self.run_dir)
            mode = kwargs["mode"]
            if mode == "online":  # an unreachable server or a bad key gives up in seconds, not wandb's 90 s
                kwargs["settings"] = wandb.Settings(
                    init_timeout=WANDB_TIMEOUT_S, login_timeout=WANDB_TIMEOUT_S,
                    x_graphql_timeout_seconds=WANDB_TIMEOUT_S, x_graphql_retry_max=1,
                    x_graphql_retry_wait_max_seconds=1)
            try:
                self.wandb = wandb.init(**kwargs)
            except Exception as err:
                if mode != "online":
                    raise
                log.warning("W&B online start failed (%s: %s); logging offline in %s instead (wandb sync later)",
                            type(err).__name__, str(err).splitlines()[0] if str(err) else "", kwargs["dir"])
                kwargs.pop("settings", None)
                self.wandb = wandb.init(**{**kwargs, "mode": "offline"})
            if cfg.get("job_type") == "train":  # per-epoch metrics plotted against the epoch, also across a resume
                self.wandb.define_metric("epoch")
                self.wandb.define_metric("*", step_metric="epoch")
        except Exception as err:  # W&B trouble must never stop a run
            log.warning("W&B disabled: %s: %s", type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            self.wandb = None

    def identity(self) -> dict | None:
        """What a checkpoint stores so a resume continues this W&B run and an evaluation joins its group."""
        if self.wandb is None:
            return None
        return {"id": self.wandb.id, "name": self.wandb.name, "group": self.wandb.group,
                "project": self.wandb.project}

    def _wandb_call(self, fn):
        if self.wandb is None:
            return
        try:
            fn(self.wandb)
        except Exception as err:
            log.warning("W&B logging failed, continuing without it: %s: %s", type(err).__name__, err)
            self.wandb = None

    def epoch(self, record: dict, weights: torch.Tensor | None = None, classes=None) -> None:
        """One line in metrics.jsonl and the same numbers in W&B under ``train/`` and ``val/`` (plus the
        weight histogram); the per-class weight sums as one scalar per class and epoch (cheap: no table
        re-sent every epoch)."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

        def send(run):
            import wandb

            data = wandb_metrics(record, classes)
            if weights is not None and weights.numel():
                data["train/weights"] = wandb.Histogram(weights.float().cpu().numpy())
            run.log(data)
            if record.get("best"):  # the validation checkpoint best.pt was taken from
                run.summary.update({"best/val_robust": record.get("val_robust"), "best/epoch": record["epoch"],
                                    "best/val_clean": record.get("val_clean")})

        self._wandb_call(send)

    def artifact(self, name: str, paths, kind: str = "model") -> None:
        """Files (checkpoints) as one W&B artifact of this run (``logger.log_checkpoints``)."""
        def send(run):
            import wandb

            art = wandb.Artifact(name, type=kind)
            for p in paths:
                art.add_file(str(p))
            run.log_artifact(art)

        if paths:
            self._wandb_call(send)

    def summary(self, values: dict) -> None:
        self._wandb_call(lambda run: run.summary.update(_jsonable(values)))

    def images(self, paths, prefix: str = "figures") -> None:
        """PNG figures as W&B images."""
        def send(run):
            import wandb

            run.log({f"{prefix}/{Path(p).stem}": wandb.Image(str(p)) for p in paths})

        if paths:
            self._wandb_call(send)

    def call(self, fn) -> None:
        """Run an arbitrary W&B call guarded (tables, plots)."""
        self._wandb_call(fn)

    def best_summary(self) -> dict:
        """Best validation robust accuracy and its epoch over the whole run (metrics.jsonl also holds a
        resumed run's earlier epochs, which this process never logged)."""
        best = None
        if self.metrics_path.exists():
            for line in self.metrics_path.read_text().splitlines():
                rec = json.loads(line) if line.strip() else {}
                if rec.get("best"):
                    best = rec
        if best is None:
            return {}
        return {"best/val_robust": best.get("val_robust"), "best/epoch": best["epoch"],
                "best/val_clean": best.get("val_clean")}

    def finish(self) -> None:
        if self.wandb is not None and self.metrics_path.exists():
            self.summary(self.best_summary())
        self._wandb_call(lambda run: run.finish())
