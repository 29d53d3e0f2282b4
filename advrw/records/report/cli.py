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
import os
import sys
from pathlib import Path

from advrw.records.report.discovery import find_jobs
from advrw.records.report.figures import figures
from advrw.records.report.render import csv_text, header, latex, markdown, protocol_caption, row_cells
from advrw.records.report.table import build_rows, group_jobs, label_keys
from advrw.records.report.wandb_run import log_to_wandb

log = logging.getLogger("advrw.report")


def _write_atomic(path: Path, data: bytes) -> None:
    """Whole or not at all: a temp file beside ``path``, renamed over it; never a 0-byte report."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _out_problem(out: Path) -> str | None:
    """Why ``--out`` cannot take the report (checked before any work), or None."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"--out {out}: {probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"--out {out}: {probe} is not writable"
    return None


def _fail(message: str, code: int = 2) -> int:
    print(f"advrw: error: {message}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="advrw-report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path, help="sweep or run dirs (searched recursively)")
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="print CSV (mean, std, paper, diff columns)")
    fmt.add_argument("--latex", action="store_true",
                     help="print a LaTeX table (needs \\usepackage{booktabs}; the caption names the protocol)")
    ap.add_argument("--bold", action="store_true", help="bold the best mean of each column (Markdown, LaTeX)")
    ap.add_argument("--out", type=Path, help="where report.{md,csv,tex} and the PNGs go (default: the first dir)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--wandb", action="store_true", help="also log the table and figures to W&B (offline unless WANDB_MODE)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for d in args.dirs:
        if not d.is_dir():
            return _fail(f"{d} is not a directory")
    out = args.out or args.dirs[0]
    problem = _out_problem(out)
    if problem:
        return _fail(problem)
    jobs, skipped = find_jobs(args.dirs)
    for s in skipped:  # listed by path, then left out: one bad file must not cost the table
        log.warning("skipped %s: %s", s.path, s.why)
    if not jobs:
        return _fail(f"no runs (.hydra/config.yaml) under {', '.join(map(str, args.dirs))}")
    groups, varying, common = group_jobs(jobs)
    rows, columns, found = build_rows(groups, varying)
    shown = label_keys(varying)  # the row-label columns (a method column for presets)
    failed = [j for j in jobs if not j.results]
    if args.csv:
        text, name = csv_text(rows, shown, columns), "report.csv"
    elif args.latex:
        text, name = latex(rows, shown, columns, protocol_caption(jobs), found, bold=args.bold), "report.tex"
    else:
        text, name = markdown(rows, shown, columns, common, failed, skipped, found, bold=args.bold), "report.md"
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(out / name, text.encode())
    except OSError as err:
        return _fail(f"cannot write {out / name}: {err.strerror or err}", 4)
    sys.stdout.write(text)
    if failed and (args.csv or args.latex):
        for j in failed:
            log.warning("no results: %s: %s", j.dir, j.status)
    pngs = []
    if not args.no_plots and rows:
        try:
            pngs = figures(rows, varying, columns, out)
        except OSError as err:
            return _fail(f"cannot write the figures to {out}: {err.strerror or err}", 4)
        except Exception as err:  # noqa: BLE001 -- a figure bug must not cost the table (interrupts pass)
            log.warning("figures failed: %s: %s", type(err).__name__, err)
    log.info("%d jobs (%d without results) in %d rows -> %s%s", len(jobs), len(failed), len(rows), out / name,
             "".join(f", {p.name}" for p in pngs))
    if args.wandb:
        head = header(shown, columns, found)
        log_to_wandb([row_cells(r, shown, columns) for r in rows], head, pngs, jobs, f"report-{out.name}", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
