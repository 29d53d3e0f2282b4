"""The report as a ``job_type=report`` W&B run."""

from __future__ import annotations

import os
from pathlib import Path

from advrw.records.report.discovery import Job
from advrw.records.runlog import RunLog

def log_to_wandb(table_rows, head, pngs: list[Path], jobs: list[Job], name: str, out_dir: Path) -> None:
    """The table and figures as a job_type=report run in the campaign's W&B project and group."""
    logger = next((j.config.get("logger") for j in jobs if isinstance(j.config.get("logger"), dict)), None) or {}
    groups = {f"{j.dir.parent}" for j in jobs}
    cfg = {"name": "wandb", "project": logger.get("project", "advrw"), "entity": logger.get("entity"),
           "mode": os.environ.get("WANDB_MODE", "offline"),  # offline unless the user says otherwise
           "group": f"sweep-{Path(next(iter(groups))).name}" if len(groups) == 1 else "report",
           "tags": ["report"], "job_type": "report"}
    runlog = RunLog(out_dir, cfg, {"dirs": sorted(groups)}, name=name)

    def send(run):
        import wandb

        run.log({"report/table": wandb.Table(columns=head, data=table_rows)})
        for p in pngs:
            run.log({f"report/{p.stem}": wandb.Image(str(p))})

    runlog.call(send)
    runlog.finish()
