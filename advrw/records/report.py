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
import csv
import io
import json
import logging
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from advrw.core.keys import NOT_IDENTITY, matches, override_key, override_value
from advrw.records.runlog import RunLog

log = logging.getLogger("advrw.report")



@dataclass
class Job:
    dir: Path
    overrides: list[str]
    config: dict
    results: dict | None
    seed: object = None
    status: str = ""


@dataclass
class Group:
    key: tuple  # ((override key, value), ...) without the seed
    jobs: list[Job] = field(default_factory=list)

    def label(self, keys: list[str]) -> dict:
        d = dict(self.key)
        return {k: d.get(k, "") for k in keys}


def _load_yaml(path: Path):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _status(job_dir: Path) -> str:
    """What an unfinished job got to, from its own records."""
    metrics = job_dir / "metrics.jsonl"
    epochs = None
    try:
        cfg = _load_yaml(job_dir / ".hydra" / "config.yaml")
        epochs = (cfg.get("schedule") or {}).get("epochs")
    except Exception:
        pass
    if metrics.exists():
        lines = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
        if lines:
            last = json.loads(lines[-1]).get("epoch")
            return f"no results.json; trained {last}/{epochs} epochs" + (" (last.pt saved)" if (job_dir / "last.pt").exists() else "")
    return "no results.json; no epoch finished (failed at start, or still running)"


def find_jobs(dirs: list[Path]) -> list[Job]:
    jobs, seen = [], set()
    for d in dirs:
        d = Path(d)
        for cfg_path in sorted(d.rglob(".hydra/config.yaml")):
            job_dir = cfg_path.parent.parent
            if job_dir.resolve() in seen:
                continue
            seen.add(job_dir.resolve())
            ov_path = job_dir / ".hydra" / "overrides.yaml"
            overrides = [str(o) for o in (_load_yaml(ov_path) if ov_path.exists() else [])]
            config = _load_yaml(cfg_path)
            res_path = job_dir / "results.json"
            results = json.loads(res_path.read_text()) if res_path.exists() else None
            seed = next((o.split("=", 1)[1] for o in overrides if override_key(o) == "seed"), config.get("seed"))
            jobs.append(Job(job_dir, overrides, config, results, seed, "" if results else _status(job_dir)))
    return jobs


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _sort_value(v) -> tuple:
    """Numbers before strings, numbers by value (so 2 < 10), strings alphabetically."""
    n = _num(v)
    return (0, n, "") if n is not None else (1, 0.0, str(v))


# The papers' row order: baselines first, then the reweighting schemes (MAIL, VIR and EWAT tables).
SCHEME_ORDER = ("none", "gairat", "mail", "vir", "ewat", "margin_exp")
SCHEME_LABEL = {"gairat": "GAIRAT", "mail": "MAIL", "vir": "VIR", "ewat": "EW", "margin_exp": "margin_exp"}
DEFENSE_ORDER = ("at", "trades", "mart")
# VIR Table 1 lists VIR-TRADES before VIR-AT; every other table AT, TRADES, MART.
SCHEME_DEFENSE_ORDER = {"vir": ("trades", "at", "mart")}
# Override keys that change the method (a row's place in the table), not a hyperparameter of it.
METHOD_KEYS = ("experiment", "defense", "weighting", "attack", "minimizer")


def _choice(config: dict, group: str) -> str:
    return str((config.get(group) or {}).get("name") or "")


def method_label(config: dict) -> str:
    """``AT``, ``TRADES-AWP``, ``FAT``, ``MAIL-TRADES``, ``EW-AT``, ``GAIRAT`` ... from a job's config."""
    defense, scheme = _choice(config, "defense"), _choice(config, "weighting") or "none"
    fat, awp = _choice(config, "attack") == "fat", _choice(config, "minimizer") == "awp"
    base = defense.upper() if defense else "?"
    if fat:  # FAT is AT with early-stopped PGD; FAT-TRADES / FAT-MART name their defense
        base = "FAT" if defense == "at" else f"FAT-{base}"
    if scheme == "gairat" and defense == "at" and not fat:
        label = "GAIRAT"
    elif scheme != "none":
        label = f"{SCHEME_LABEL.get(scheme, scheme)}-{base}"
    else:
        label = base
    return label + ("-AWP" if awp else "")


def method_rank(config: dict) -> tuple:
    """Where a method sits in the papers' tables (unknown schemes after the known ones, by name)."""
    defense, scheme = _choice(config, "defense"), _choice(config, "weighting") or "none"
    order = SCHEME_DEFENSE_ORDER.get(scheme, DEFENSE_ORDER)
    variant = (_choice(config, "attack") == "fat") + 2 * (_choice(config, "minimizer") == "awp")
    return (SCHEME_ORDER.index(scheme) if scheme in SCHEME_ORDER else len(SCHEME_ORDER), scheme, variant,
            order.index(defense) if defense in order else len(order), defense)


def _method_varies(varying: list[str]) -> bool:
    return any(k in METHOD_KEYS for k in varying)


def label_keys(varying: list[str]) -> list[str]:
    """The row-label columns: a ``method`` column (AT, FAT, MAIL-AT ...) first when rows are presets."""
    return ["method", *varying] if "experiment" in varying else list(varying)


def group_jobs(jobs: list[Job]) -> tuple[list[Group], list[str], list[str]]:
    """Groups sorted numerically; the override keys that vary across groups; the common ones."""
    groups: dict[tuple, Group] = {}
    for job in jobs:
        key = tuple((override_key(o), override_value(o)) for o in job.overrides
                    if not override_key(o).startswith("hydra") and not matches(override_key(o), NOT_IDENTITY))
        groups.setdefault(tuple(sorted(key)), Group(tuple(sorted(key)))).jobs.append(job)
    keys = list(dict.fromkeys(k for g in groups for k, _ in g))
    varying = [k for k in keys if len({dict(g).get(k) for g in groups}) > 1]
    common = [f"{k}={dict(next(iter(groups)))[k]}" for k in keys if k not in varying and groups]
    by_method = _method_varies(varying)

    def order(g: Group) -> tuple:
        first = method_rank(g.jobs[0].config) if by_method and g.jobs else ()
        return (first, *(_sort_value(dict(g.key).get(k, "")) for k in varying))

    return sorted(groups.values(), key=order), varying, common


def _fmt_255(x: float) -> str:
    """8/255-style for the usual image budgets (0.8/255 for PGD-20's step), else the number (MNIST's 0.3)."""
    k = x * 255
    return f"{k:.3g}/255" if x < 0.1 and abs(k - round(k, 1)) < 1e-6 else f"{x:.4g}"


def budget(proto: dict) -> str:
    """An attack's budget for a column header, e.g. ``eps 8/255, 20 x 0.8/255``."""
    parts = [f"eps {_fmt_255(float(proto['eps']))}"] if "eps" in proto else []
    if "steps" in proto and "step" in proto:
        parts.append(f"{proto['steps']} x {_fmt_255(float(proto['step']))}")
    elif "steps" in proto:  # FMN: steps without a fixed step size
        parts.append(f"{proto['steps']} steps")
    if "n_iter" in proto and proto.get("attack") == "apgd_ce":
        parts.append(f"{proto['n_iter']} iter")
    if "md_steps" in proto:  # MDE: the margin-decomposition stages' budget
        parts.append(f"MD {proto['md_steps']} steps, change point {proto.get('change_point')}")
    if isinstance(proto.get("restarts"), int) and proto["restarts"] > 1:
        parts.append(f"{proto['restarts']} restarts")
    for k in ("version", "n_queries", "nb_iter"):
        if k in proto:
            parts.append(f"{k} {proto[k]}")
    return ", ".join(parts)


# The papers' column order (VIR Table 1, MAIL Table 2, EWAT Table 2): clean, FGSM, PGD-k (by k),
# APGD-CE, CW, FMN, AA, MDE, then attacks no table shares, the worst case, Zeng's metrics.
_KIND_RANK = {"fgsm": 1, "pgd": 2, "apgd_ce": 3, "cw": 4, "fmn": 5, "autoattack": 6, "mde": 7}
_CKPT_RANK = {"": 0, "best": 0, "last": 1}


def _attack_kind(name: str, proto: dict) -> str:
    """fgsm / pgd (on CE) / apgd_ce / cw / fmn / autoattack / mde, or '' for the rest; from the protocol,
    from the attack's name for results.json files written before protocols named it."""
    kind = proto.get("attack")
    if kind == "pgd":
        objective = proto.get("objective", "ce")
        return {"ce": "pgd", "cw": "cw"}.get(objective, "")
    if kind:
        return kind if kind in _KIND_RANK else ""
    low = name.lower()
    return next((k for k in ("apgd_ce", "autoattack", "mde", "fmn", "fgsm", "cw", "pgd") if low.startswith(k)), "")


def job_columns(res: dict, label_last: bool = False) -> list[tuple[str, float, tuple]]:
    """(column, accuracy in %, sort key) for one results.json. A results.json of
    ``eval.checkpoint=both`` gives a ``best ...`` and a ``last ...`` column per number; a single-
    checkpoint one is prefixed when it scored best.pt (or last.pt, where ``label_last``)."""
    if "checkpoints" in res:
        return [c for kind in ("best", "last") if kind in res["checkpoints"]
                for c in _columns(res["checkpoints"][kind], kind + " ")]
    kind = ((res.get("protocol") or {}).get("checkpoint") or {}).get("kind", "last")
    return _columns(res, "best " if kind == "best" else "last " if label_last else "")


def _columns(res: dict, prefix: str) -> list[tuple[str, float, tuple]]:
    c = _CKPT_RANK[prefix.strip()]
    out = [(prefix + "clean", 100 * res["clean"]["accuracy"], (0, 0, "", c))]
    for name, e in res.get("attacks", {}).items():
        proto = e.get("protocol", {})
        kind = _attack_kind(name, proto)
        steps = int(proto.get("steps", 0) or 0) if kind in ("pgd", "cw") else 0
        rank = (_KIND_RANK[kind], steps, "", c) if kind else (8, 0, "", c)
        out.append((f"{prefix}{name} ({budget(proto)})", 100 * e["robust_accuracy"], rank))
    if "worst_case" in res:
        out.append((prefix + "worst case", 100 * res["worst_case"]["robust_accuracy"], (9, 0, "", c)))
    nu = res.get("nonuniform")
    if nu:
        out.append((prefix + "A_rob", 100 * nu["A_rob"], (10, 0, "", c)))
        for a in sorted(nu.get("alpha_test", {}), key=float):
            out.append((f"{prefix}A_sa@{float(a):g}", 100 * nu["alpha_test"][a]["A_sa"], (11, float(a), "sa", c)))
            out.append((f"{prefix}A_tr@{float(a):g}", 100 * nu["alpha_test"][a]["A_tr"], (11, float(a), "tr", c)))
    return out


def paper_metrics(paper: dict, columns: list[str]) -> dict[str, float]:
    """The preset's ``paper:`` numbers mapped onto our column names (the unprefixed ones: a paper's
    number is compared with the checkpoint a plain evaluation scores)."""
    out = {}
    if paper.get("clean") is not None:
        out["clean"] = float(paper["clean"])
    for name, v in (paper.get("attacks") or {}).items():
        col = next((c for c in columns if c == name or c.startswith(name + " (")), None)
        if col:
            out[col] = float(v)
    if paper.get("A_rob") is not None:
        out["A_rob"] = float(paper["A_rob"])
    for a, v in (paper.get("alpha_test") or {}).items():
        for m in ("A_sa", "A_tr"):
            if v.get(m) is not None:
                out[f"{m}@{float(a):g}"] = float(v[m])
    return out


def _paper_of(group: Group, varying: list[str]) -> dict | None:
    """A group compares with the paper only when it *is* the preset (nothing else changed, no debug)."""
    keys = {k for k, _ in group.key}
    papers = [j.config.get("paper") for j in group.jobs]
    if not papers or any(p is None or p != papers[0] for p in papers):
        return None
    if "experiment" not in keys or keys - {"experiment", "eval"}:  # e.g. debug=fast, or a changed key
        return None
    return papers[0]


@dataclass
class Row:
    label: dict
    n: int
    seeds: list
    stats: dict  # column -> (mean, std or None, n, paper or None)
    paper_source: str | None = None


def build_rows(groups: list[Group], varying: list[str]) -> tuple[list[Row], list[str]]:
    """One row per group (in the groups' order); columns in the papers' order (``_columns``)."""
    per_group = []
    ranks: dict[str, tuple] = {}
    label_last = any("checkpoints" in j.results for g in groups for j in g.jobs if j.results)
    for g in groups:
        done = [j for j in g.jobs if j.results]
        if not done:
            continue
        ms = []
        for j in done:
            cols = job_columns(j.results, label_last)
            for col, _, rank in cols:
                ranks.setdefault(col, rank)
            ms.append({col: v for col, v, _ in cols})
        per_group.append((g, done, ms))
    # attacks no table shares (logit scaling, Square, SPSA) keep the results' order, best before last
    base = {c: c.split(" ", 1)[1] if c.startswith(("best ", "last ")) else c for c in ranks}
    first_seen: dict[str, int] = {}
    for c in ranks:
        first_seen.setdefault(base[c], len(first_seen))
    columns = sorted(ranks, key=lambda c: (*ranks[c][:2], ranks[c][2] if ranks[c][0] != 8 else "",
                                           first_seen[base[c]], ranks[c][3]))
    rows = []
    for g, done, ms in per_group:
        paper = _paper_of(g, varying)
        paper_vals = paper_metrics(paper, columns) if paper else {}
        stats = {}
        for c in columns:
            vals = [m[c] for m in ms if c in m and m[c] is not None]
            if vals:
                sd = statistics.stdev(vals) if len(vals) > 1 else None
                stats[c] = (statistics.fmean(vals), sd, len(vals), paper_vals.get(c))
        seeds = sorted((j.seed for j in done), key=_sort_value)
        label = g.label(varying)
        if "method" in label_keys(varying):
            label = {"method": method_label(done[0].config), **label}
        rows.append(Row(label, len(done), seeds, stats, (paper or {}).get("source") if paper_vals else None))
    return rows, columns


def _cell(stat, plain: bool = False) -> str:
    if stat is None:
        return ""
    mean, sd, n, paper = stat
    s = f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")
    if paper is not None and not plain:
        s += f" (paper {paper:.2f}, Δ {mean - paper:+.2f})"
    return s


def _header(varying: list[str], columns: list[str]) -> list[str]:
    return [*(varying or ["run"]), "seeds", *columns]


def _row_cells(row: Row, varying: list[str], columns: list[str]) -> list[str]:
    label = [str(row.label[k]) for k in varying] or ["all"]
    return [*label, f"n={row.n}", *(_cell(row.stats.get(c)) for c in columns)]


def markdown(rows, varying, columns, common, failed) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    head = _header(varying, columns)
    lines = []
    if common:
        lines += [f"Common overrides: `{' '.join(common)}`", ""]
    lines += ["| " + " | ".join(esc(h) for h in head) + " |",
              "|" + "|".join("---" if i < len(varying or ["run"]) + 1 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in _row_cells(r, varying, columns)) + " |" for r in rows]
    lines += ["", "Accuracy in %, mean ± std over seeds (n = seeds with results)."]
    if any(c.startswith(("best ", "last ")) for c in columns):
        lines += ["`best`: best.pt, the epoch with the highest PGD accuracy on the validation split (never the "
                  "test set); `last`: last.pt (eval.checkpoint=both scores both in one evaluation)."]
    sources = [(_row_name(r, varying), r.paper_source) for r in rows if r.paper_source]
    if sources:
        lines += ["", "Paper numbers:", ""] + [f"- {esc(name)}: {esc(src)}" for name, src in sources]
    if failed:
        lines += ["", f"Jobs without results ({len(failed)}):", ""]
        lines += [f"- `{j.dir}`: {j.status}" for j in failed]
    return "\n".join(lines) + "\n"


def csv_text(rows, varying, columns) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    head = [*varying, "n", "seeds"]
    for c in columns:
        head += [f"{c} mean", f"{c} std", f"{c} paper", f"{c} diff"]
    w.writerow(head)
    for r in rows:
        line = [r.label[k] for k in varying] + [r.n, " ".join(map(str, r.seeds))]
        for c in columns:
            mean, sd, n, paper = r.stats.get(c, (None, None, 0, None))
            line += ["" if mean is None else f"{mean:.4f}", "" if sd is None else f"{sd:.4f}",
                     "" if paper is None else f"{paper:.2f}",
                     "" if paper is None or mean is None else f"{mean - paper:+.4f}"]
        w.writerow(line)
    return buf.getvalue()


def latex(rows, varying, columns) -> str:
    def esc(s: str) -> str:
        out = []
        for ch in str(s):
            out.append({"\\": "\\textbackslash{}", "_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#",
                        "$": "\\$", "{": "\\{", "}": "\\}", "±": "$\\pm$"}.get(ch, ch))
        return "".join(out)

    def cell(stat):
        if stat is None:
            return ""
        mean, sd, n, paper = stat
        s = f"${mean:.2f}" + (f" \\pm {sd:.2f}" if sd is not None else "") + "$"
        if paper is not None:
            s += f" ({paper:.2f}, ${mean - paper:+.2f}$)"
        return s

    head = _header(varying, columns)
    lines = ["\\begin{tabular}{" + "l" * (len(varying or ["run"]) + 1) + "r" * len(columns) + "}", "\\toprule",
             " & ".join(esc(h) for h in head) + " \\\\", "\\midrule"]
    for r in rows:
        label = [esc(str(r.label[k])) for k in varying] or ["all"]
        lines.append(" & ".join([*label, f"$n={r.n}$", *(cell(r.stats.get(c)) for c in columns)]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _row_name(row: Row, varying: list[str]) -> str:
    return ", ".join(f"{k}={row.label[k]}" for k in varying) or "all"


def figures(rows: list[Row], varying: list[str], columns: list[str], out: Path) -> list[Path]:
    """alpha_test curves, the A_tr heatmap over group x alpha_test, and a two-key grid heatmap."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def save(fig, name):
        FigureCanvasAgg(fig)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=120)
        return path

    def heat(ax, grid, xt, yt, title, xlabel, ylabel):
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(xt)), [str(x) for x in xt], rotation=45, ha="right")
        ax.set_yticks(range(len(yt)), [str(y) for y in yt])
        for (i, j), v in np.ndenumerate(grid):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=7)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.figure.colorbar(im, ax=ax)

    written = []
    alphas = sorted({float(c.split("@")[1]) for c in columns if c.startswith("A_sa@")})
    nu_rows = [r for r in rows if any(f"A_sa@{a:g}" in r.stats for a in alphas)]
    if alphas and nu_rows:
        fig = Figure(figsize=(11, 4.5))
        for i, metric in enumerate(("A_sa", "A_tr")):
            ax = fig.add_subplot(1, 2, i + 1)
            for r in nu_rows:
                xs = [a for a in alphas if f"{metric}@{a:g}" in r.stats]
                ys = [r.stats[f"{metric}@{a:g}"][0] for a in xs]
                es = [r.stats[f"{metric}@{a:g}"][1] or 0.0 for a in xs]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=_row_name(r, varying))
            ax.set_xlabel("alpha_test")
            ax.set_ylabel(f"{metric} (%)")
            ax.set_title(f"{metric} against alpha_test")
            ax.grid(alpha=0.3)
        fig.axes[-1].legend(fontsize=7, loc="best")
        written.append(save(fig, "alpha_test_curves.png"))
        grid = np.array([[r.stats.get(f"A_tr@{a:g}", (math.nan,))[0] for a in alphas] for r in nu_rows])
        fig = Figure(figsize=(1.2 * len(alphas) + 4, 0.4 * len(nu_rows) + 2))
        heat(fig.add_subplot(1, 1, 1), grid, [f"{a:g}" for a in alphas], [_row_name(r, varying) for r in nu_rows],
             "A_tr (%)", "alpha_test", "")
        written.append(save(fig, "heatmap_A_tr_alpha_test.png"))
    if len(varying) == 2 and rows:
        kx, ky = varying
        xs = sorted({r.label[kx] for r in rows}, key=_sort_value)
        ys = sorted({r.label[ky] for r in rows}, key=_sort_value)
        metrics = ["clean"] + [c for c in columns if c != "clean"][:1]
        fig = Figure(figsize=(5.5 * len(metrics), 0.5 * len(ys) + 3))
        for i, m in enumerate(metrics):
            grid = np.full((len(ys), len(xs)), math.nan)
            for r in rows:
                if m in r.stats:
                    grid[ys.index(r.label[ky]), xs.index(r.label[kx])] = r.stats[m][0]
            heat(fig.add_subplot(1, len(metrics), i + 1), grid, xs, ys, f"{m} (%)", kx, ky)
        written.append(save(fig, f"heatmap_{kx}_x_{ky}.png".replace("/", "_")))
    return written


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
