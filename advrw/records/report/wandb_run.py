"""The report as a ``job_type=report`` W&B run."""

from __future__ import annotations

import os
from pathlib import Path

from advrw.records.identity import campaign_tags
from advrw.records.report.discovery import Job, run_info
from advrw.records.runlog import RunLog


def log_to_wandb(table_rows, head, pngs: list[Path], jobs: list[Job], name: str, out_dir: Path) -> None:
    """The table and figures as a job_type=report run in the campaign's W&B project and group."""
    logger = next((j.config.get("logger") for j in jobs if isinstance(j.config.get("logger"), dict)), None) or {}
    groups = {f"{(j.lineage or [j.dir])[0].parent}" for j in jobs}  # a continued job's sweep is its origin's
    # the campaign (sweep id) its training runs carry, so one W&B filter shows the sweep and its report
    campaigns = sorted({c for j in jobs for c in [run_info((j.lineage or [j.dir])[0]).get("campaign")] if c})
    if not campaigns and len(groups) == 1:  # runs recorded before the campaign field: the sweep dir's name
        campaigns = [Path(next(iter(groups))).name]
    cfg = {"name": "wandb", "project": logger.get("project", "advrw"), "entity": logger.get("entity"),
           "mode": os.environ.get("WANDB_MODE", "offline"),  # offline unless the user says otherwise
           "group": f"sweep-{Path(next(iter(groups))).name}" if len(groups) == 1 else "report",
           "tags": ["report", *(t for c in campaigns for t in campaign_tags(c, None))], "job_type": "report"}
    runlog = RunLog(out_dir, cfg, {"dirs": sorted(groups), "campaign": campaigns[0] if len(campaigns) == 1
                                   else campaigns}, name=name)

    def send(run):
        import wandb

        run.log({"report/table": wandb.Table(columns=head, data=table_rows)})
        for p in pngs:
            run.log({f"report/{p.stem}": wandb.Image(str(p))})

    runlog.call(send)
    runlog.finish()
