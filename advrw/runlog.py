"""Run records: ``metrics.jsonl`` on disk, Weights & Biases when configured, Python logging.

W&B is optional and can never stop training: every call into it is guarded, and the first
failure switches it off with one warning. Offline by default (``WANDB_MODE``); sync later with
``wandb sync``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


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


def write_json(path: Path, obj) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2))
    tmp.replace(path)


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

            wdir = Path(cfg.get("dir") or self.run_dir)
            if not _writable_dir(wdir):  # wandb would silently fall back to /tmp/wandb
                log.warning("W&B: logger.dir=%s is not writable; its files go to the run dir %s instead",
                            wdir, self.run_dir)
                wdir = self.run_dir
            kwargs = dict(project=cfg.get("project"), entity=cfg.get("entity"), group=cfg.get("group"),
                          tags=list(cfg.get("tags") or []), dir=str(wdir), config=config, name=name,
                          reinit="finish_previous")
            mode = cfg.get("mode", "offline")
            if mode == "online":  # an unreachable server or a bad key gives up in seconds, not wandb's 90 s
                kwargs["settings"] = wandb.Settings(
                    init_timeout=WANDB_TIMEOUT_S, login_timeout=WANDB_TIMEOUT_S,
                    x_graphql_timeout_seconds=WANDB_TIMEOUT_S, x_graphql_retry_max=1,
                    x_graphql_retry_wait_max_seconds=1)
            try:
                self.wandb = wandb.init(mode=mode, **kwargs)
            except Exception as err:
                if mode != "online":
                    raise
                log.warning("W&B online start failed (%s: %s); logging offline in %s instead (wandb sync later)",
                            type(err).__name__, str(err).splitlines()[0] if str(err) else "", wdir)
                kwargs.pop("settings", None)
                self.wandb = wandb.init(mode="offline", **kwargs)
        except Exception as err:  # W&B trouble must never stop a run
            log.warning("W&B disabled: %s: %s", type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            self.wandb = None

    def _wandb_call(self, fn):
        if self.wandb is None:
            return
        try:
            fn(self.wandb)
        except Exception as err:
            log.warning("W&B logging failed, continuing without it: %s: %s", type(err).__name__, err)
            self.wandb = None

    def epoch(self, record: dict, weights: torch.Tensor | None = None, class_sums=None, classes=None) -> None:
        """One line in metrics.jsonl and the same scalars (plus weight histogram) in W&B."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

        def send(run):
            import wandb

            data = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if weights is not None and weights.numel():
                data["weights/hist"] = wandb.Histogram(weights.float().cpu().numpy())
            if class_sums is not None:
                for c, s in zip(classes or range(len(class_sums)), class_sums):
                    data[f"class_weight_sum/{c}"] = float(s)
            run.log(data, step=int(record["epoch"]))

        self._wandb_call(send)

    def summary(self, values: dict) -> None:
        self._wandb_call(lambda run: run.summary.update(_jsonable(values)))

    def call(self, fn) -> None:
        """Run an arbitrary W&B call guarded (tables, plots)."""
        self._wandb_call(fn)

    def finish(self) -> None:
        self._wandb_call(lambda run: run.finish())
