"""Build a table from the results.json files under one or more dirs (a sweep, a set of runs).

    python scripts/collect.py outputs/multirun/2026-11-25/10-00-00 [--csv table.csv]

One row per run: its Hydra overrides (from .hydra/overrides.yaml), clean accuracy, every
attack's robust accuracy and the non-uniform metrics, each column named with its budget.
Reads only results.json and the run's .hydra folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def row_for(results_path: Path) -> dict:
    res = json.loads(results_path.read_text())
    run = results_path.parent
    overrides_file = run / ".hydra" / "overrides.yaml"
    overrides = []
    if overrides_file.exists():
        overrides = [ln[2:].strip() for ln in overrides_file.read_text().splitlines() if ln.startswith("- ")]
    row = {"run": str(run), "overrides": " ".join(o for o in overrides if not o.startswith("hydra.")),
           "checkpoint": res["protocol"].get("checkpoint", {}).get("kind"), "n_eval": res["protocol"]["n_eval"],
           "clean": res["clean"]["accuracy"]}
    for name, e in res.get("attacks", {}).items():
        p = e["protocol"]
        label = name if "steps" not in p else f"{name} (eps {p['eps']:.4g}, {p['steps']} steps)"
        row[label] = e["robust_accuracy"]
    if "worst_case" in res:
        row["worst case"] = res["worst_case"]["robust_accuracy"]
    for a, v in res.get("nonuniform", {}).get("alpha_test", {}).items():
        row[f"A_sa@{a}"], row[f"A_tr@{a}"] = v["A_sa"], v["A_tr"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--csv", type=Path, help="also write the table as CSV")
    args = ap.parse_args(argv)
    paths = sorted(p for d in args.dirs for p in d.rglob("results.json"))
    if not paths:
        print(f"error: no results.json under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    rows = [row_for(p) for p in paths]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    if args.csv:
        with args.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    show = [c for c in cols if c != "run"]
    print(" | ".join(show))
    for r in rows:
        print(" | ".join(f"{100 * r[c]:.2f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in show))
    return 0


if __name__ == "__main__":
    sys.exit(main())
