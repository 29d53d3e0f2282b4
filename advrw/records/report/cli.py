"""``python -m advrw.report DIR...``: one table (and figures) from a campaign's ``results.json`` files.

    python -m advrw.report outputs/multirun/2026-11-25/10-00-00-3fa2c1 [--csv | --latex] [--out DIR] [--wandb]

Jobs are found as dirs holding ``.hydra/config.yaml``; they are grouped by their command-line
overrides with ``seed`` (and invocation settings such as ``resume``) removed, and every number is
reported as mean ± std over the group's seeds (sample std, n-1) with n. Rows and columns follow
the papers' tables: rows by method (AT, TRADES, MART, FAT, AWP, GAIRAT, MAIL, VIR, EWAT, margin_exp)
when the method varies, swept numbers numerically; columns clean, FGSM, PGD-k, APGD-CE, CW, FMN,
AA, MDE, other attacks, worst case (each attack with its budget), then A_rob and A_sa / A_tr per
alpha_test. A run evaluated with ``eval.checkpoint=both`` gives a ``best`` and a ``last`` column
per number (EWAT Table 2's Best / Last PGD-10).
Where a group is a paper preset as is (``experiment=...`` with a ``paper:`` block, no other
change but the seed), the paper's number and our difference sit next to ours. Jobs without
``results.json`` are listed by dir with what they got to. Figures (PNG, beside the table):
A_sa / A_tr against alpha_test with one curve per group (Zeng's figures), a heatmap of A_tr over
group x alpha_test, and a heatmap of clean / robust accuracy for any two-key grid.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from advrw.records.report.discovery import find_jobs
from advrw.records.report.figures import figures
from advrw.records.report.render import _header, _row_cells, csv_text, latex, markdown
from advrw.records.report.table import build_rows, group_jobs, label_keys
from advrw.records.report.wandb_run import log_to_wandb

log = logging.getLogger("advrw.report")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="advrw-report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path, help="sweep or run dirs (searched recursively)")
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="print CSV (mean, std, paper, diff columns)")
    fmt.add_argument("--latex", action="store_true", help="print a LaTeX tabular")
    ap.add_argument("--out", type=Path, help="where report.{md,csv,tex} and the PNGs go (default: the first dir)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--wandb", action="store_true", help="also log the table and figures to W&B (offline unless WANDB_MODE)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for d in args.dirs:
        if not d.is_dir():
            print(f"advrw: error: {d} is not a directory", file=sys.stderr)
            return 2
    jobs = find_jobs(args.dirs)
    if not jobs:
        print(f"advrw: error: no runs (.hydra/config.yaml) under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    groups, varying, common = group_jobs(jobs)
    rows, columns = build_rows(groups, varying)
    shown = label_keys(varying)  # the row-label columns (a method column for presets)
    failed = [j for j in jobs if not j.results]
    out = args.out or args.dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    if args.csv:
        text, name = csv_text(rows, shown, columns), "report.csv"
    elif args.latex:
        text, name = latex(rows, shown, columns), "report.tex"
    else:
        text, name = markdown(rows, shown, columns, common, failed), "report.md"
    (out / name).write_text(text)
    sys.stdout.write(text)
    if failed and (args.csv or args.latex):
        for j in failed:
            log.warning("no results: %s: %s", j.dir, j.status)
    pngs = []
    if not args.no_plots and rows:
        try:
            pngs = figures(rows, varying, columns, out)
        except Exception as err:  # a figure must not cost the table
            log.warning("figures failed: %s: %s", type(err).__name__, err)
    log.info("%d jobs (%d without results) in %d rows -> %s%s", len(jobs), len(failed), len(rows), out / name,
             "".join(f", {p.name}" for p in pngs))
    if args.wandb:
        head = _header(shown, columns)
        log_to_wandb([_row_cells(r, shown, columns) for r in rows], head, pngs, jobs, f"report-{out.name}", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
