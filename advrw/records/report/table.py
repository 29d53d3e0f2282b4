"""The table: groups of jobs (one per experiment, seeds pooled), rows and columns in the papers' order."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

from advrw.core.keys import NOT_IDENTITY, matches, override_key, override_value, without
from advrw.records.report.discovery import Job

@dataclass
class Group:
    key: str  # the identity of the config that ran (without seed and invocation keys)
    labels: dict  # what the user typed that sets this experiment apart (override key -> value)
    jobs: list[Job] = field(default_factory=list)

    def label(self, keys: list[str]) -> dict:
        return {k: self.labels.get(k, "") for k in keys}


def identity(config: dict) -> str:
    """Two jobs share a row exactly when this matches: the config that ran, seed and invocation keys out."""
    return json.dumps(without(config, NOT_IDENTITY), sort_keys=True, default=str)


def _leaves(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix[:-1]: json.dumps(node, default=str) if isinstance(node, (list, dict)) else node}
    out = {}
    for k, v in node.items():
        out.update(_leaves(v, f"{prefix}{k}."))
    return out


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
    elif scheme == "margin_exp":  # Zeng et al. name the curve by its alpha (AT unless said)
        alpha = (config.get("weighting") or {}).get("alpha")
        label = "margin_exp" + ("" if base == "AT" else f"-{base}") + (f" (alpha={alpha:g})" if isinstance(
            alpha, (int, float)) else "")
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


# Group choices the method name already says (VIR-TRADES-AWP): no column of their own beside it.
NAMED_BY_METHOD = ("defense", "weighting", "attack", "minimizer")


def label_keys(varying: list[str]) -> list[str]:
    """The row-label columns: a ``method`` column (AT, FAT, MAIL-AT ...) first when the method varies,
    in place of the raw group choices it names."""
    if not _method_varies(varying):
        return list(varying)
    return ["method", *(k for k in varying if k not in NAMED_BY_METHOD)]


def group_jobs(jobs: list[Job]) -> tuple[list[Group], list[str], list[str]]:
    """Groups (one per config that ran) sorted numerically; the label keys that vary across groups
    (the typed overrides, plus config keys where typed ones cannot tell two groups apart); the common ones."""
    groups: dict[str, Group] = {}
    for job in jobs:
        key = identity(job.config)
        labels = {override_key(o): override_value(o) for o in job.overrides
                  if not override_key(o).startswith("hydra") and not matches(override_key(o), NOT_IDENTITY)}
        groups.setdefault(key, Group(key, labels)).jobs.append(job)
    keys = list(dict.fromkeys(k for g in groups.values() for k in g.labels))
    varying = [k for k in keys if len({g.labels.get(k) for g in groups.values()}) > 1]
    if len({tuple(g.label(varying).values()) for g in groups.values()}) < len(groups):
        # same command line, different experiments (e.g. two resumed runs): name what differs in the config
        leaves = {g.key: _leaves(without(g.jobs[0].config, NOT_IDENTITY)) for g in groups.values()}
        all_keys = list(dict.fromkeys(k for lv in leaves.values() for k in lv))
        differ = [k for k in all_keys if len({str(lv.get(k)) for lv in leaves.values()}) > 1 and k not in varying]
        for g in groups.values():
            g.labels.update({k: leaves[g.key].get(k, "") for k in differ})
        varying += differ
    common = [f"{k}={next(iter(groups.values())).labels[k]}" for k in keys if k not in varying and groups]
    by_method = _method_varies(varying)

    def order(g: Group) -> tuple:
        first = method_rank(g.jobs[0].config) if by_method and g.jobs else ()
        return (first, *(_sort_value(g.labels.get(k, "")) for k in varying))

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


def job_columns(res: dict, label_last: bool = False) -> list[tuple[str, float, tuple, tuple[str, str]]]:
    """(column, accuracy in %, sort key, (title, budget)) for one results.json. A results.json of
    ``eval.checkpoint=both`` gives a ``best ...`` and a ``last ...`` column per number; a single-
    checkpoint one is prefixed when it scored best.pt (or last.pt, where ``label_last``)."""
    if "checkpoints" in res:
        return [c for kind in ("best", "last") if kind in res["checkpoints"]
                for c in _columns(res["checkpoints"][kind], kind + " ")]
    kind = ((res.get("protocol") or {}).get("checkpoint") or {}).get("kind", "last")
    return _columns(res, "best " if kind == "best" else "last " if label_last else "")


# How the papers head their columns (VIR Table 1, MAIL Table 2, EWAT Table 2, Zeng et al.)
_TITLE = {"fgsm": "FGSM", "apgd_ce": "APGD-CE", "cw": "CW", "autoattack": "AA", "mde": "MDE"}


def _title(kind: str, name: str, proto: dict) -> str:
    if kind in ("pgd", "fmn") and proto.get("steps"):
        return f"{kind.upper()}-{proto['steps']}"
    return _TITLE.get(kind, name)


def _columns(res: dict, prefix: str) -> list[tuple[str, float, tuple, tuple[str, str]]]:
    c = _CKPT_RANK[prefix.strip()]
    tail = f" ({prefix.strip()})" if prefix else ""
    out = [(prefix + "clean", 100 * res["clean"]["accuracy"], (0, 0, "", c), ("Clean" + tail, ""))]
    for name, e in res.get("attacks", {}).items():
        proto = e.get("protocol", {})
        kind = _attack_kind(name, proto)
        steps = int(proto.get("steps", 0) or 0) if kind in ("pgd", "cw") else 0
        rank = (_KIND_RANK[kind], steps, "", c) if kind else (8, 0, "", c)
        out.append((f"{prefix}{name} ({budget(proto)})", 100 * e["robust_accuracy"], rank,
                    (_title(kind, name, proto) + tail, budget(proto))))
    if "worst_case" in res:
        out.append((prefix + "worst case", 100 * res["worst_case"]["robust_accuracy"], (9, 0, "", c),
                    ("Worst case" + tail, "per example, over the attacks")))
    nu = res.get("nonuniform")
    if nu:
        out.append((prefix + "A_rob", 100 * nu["A_rob"], (10, 0, "", c), ("A_rob" + tail, "")))
        for a in sorted(nu.get("alpha_test", {}), key=float):
            for m in ("A_sa", "A_tr"):
                out.append((f"{prefix}{m}@{float(a):g}", 100 * nu["alpha_test"][a][m], (11, float(a), m[2:], c),
                            (f"{m} (α={float(a):g})" + tail, "")))
    return out


def titles_of(columns: list[str], found: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Readable, unique headers: ``PGD-20``, ``AA``, ``A_sa (α=1)``; the budget added where two share one."""
    short = {c: found[c][0] for c in columns}
    clash = {t for t in short.values() if list(short.values()).count(t) > 1}
    return {c: f"{t} [{found[c][1]}]" if t in clash and found[c][1] else t for c, t in short.items()}


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
    keys = {override_key(o) for o in group.jobs[0].overrides
            if not override_key(o).startswith("hydra") and not matches(override_key(o), NOT_IDENTITY)}
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
    config: dict = field(default_factory=dict)  # one job's config that ran (what the figures split by)
    audit: str = ""  # the seeds' gradient-masking audit verdicts (eval.audit), '' when none ran


def build_rows(groups: list[Group], varying: list[str]) -> tuple[list[Row], list[str], dict[str, tuple[str, str]]]:
    """One row per group (in the groups' order); columns in the papers' order (``_columns``); each
    column's (title, budget)."""
    per_group = []
    ranks: dict[str, tuple] = {}
    found: dict[str, tuple[str, str]] = {}
    label_last = any("checkpoints" in j.results for g in groups for j in g.jobs if j.results)
    for g in groups:
        done = [j for j in g.jobs if j.results]
        if not done:
            continue
        ms = []
        for j in done:
            cols = job_columns(j.results, label_last)
            for col, _, rank, title in cols:
                ranks.setdefault(col, rank)
                found.setdefault(col, title)
            ms.append({col: v for col, v, _, _ in cols})
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
        rows.append(Row(label, len(done), seeds, stats, (paper or {}).get("source") if paper_vals else None,
                        done[0].config, audit_cell([j.results for j in done])))
    return rows, columns, found


def audit_cell(results: list[dict]) -> str:
    """One row's audit column: ``reliable`` when every audited seed passed, else how many were flagged
    and for what (the union of their failed checks); '' when no seed ran the audit."""
    audited = [r["audit"] for r in results if r.get("audit")]
    if not audited:
        return ""
    flagged = [a for a in audited if a.get("reasons")]
    if not flagged:
        return "reliable" + (f" ({len(audited)}/{len(results)} audited)" if len(audited) < len(results) else "")
    reasons = sorted({reason for a in flagged for reason in a["reasons"]})
    return f"flagged {len(flagged)}/{len(audited)}: {', '.join(reasons)}"
