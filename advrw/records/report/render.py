"""The table as text: Markdown (with each attack's budget in its header), CSV (one column per
statistic, for scripts) and LaTeX (booktabs, papers' headers, the protocol in the caption)."""

from __future__ import annotations

import csv
import io

from advrw.records.report.discovery import Job, Skipped
from advrw.records.report.table import Row, titles_of

# Greek hyperparameters as the papers print them (LaTeX row labels)
_GREEK = {"alpha": "\\alpha", "beta": "\\beta", "gamma": "\\gamma", "tau": "\\tau", "kappa": "\\kappa",
          "lambda": "\\lambda", "lam": "\\lambda", "rho": "\\rho"}


def _cell(stat, bold: bool = False, paper_too: bool = True) -> str:
    if stat is None:
        return ""
    mean, sd, n, paper = stat
    s = f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")
    if bold:
        s = f"**{s}**"
    if paper is not None and paper_too:
        s += f" (paper {paper:.2f}, Δ {mean - paper:+.2f})"
    return s


def best_cells(rows: list[Row], columns: list[str]) -> set[tuple[int, str]]:
    """(row index, column) of the highest mean per column (accuracies: higher is better); ties all bold."""
    out = set()
    for c in columns:
        means = [(i, r.stats[c][0]) for i, r in enumerate(rows) if c in r.stats]
        if len(means) > 1:
            top = max(m for _, m in means)
            out |= {(i, c) for i, m in means if abs(m - top) < 5e-3}
    return out


def header(shown: list[str], columns: list[str], found: dict | None = None) -> list[str]:
    """Row-label keys, ``seeds``, then each column as ``PGD-20 (eps 8/255, 20 x 0.8/255)``."""
    titles = titles_of(columns, found) if found else {c: c for c in columns}
    budgets = {c: found[c][1] for c in columns} if found else {}
    heads = [titles[c] + (f" ({budgets[c]})" if budgets.get(c) and "[" not in titles[c]
                          and not budgets[c].startswith("per example") else "") for c in columns]
    return [*(shown or ["run"]), "seeds", *heads]


def row_cells(row: Row, shown: list[str], columns: list[str], bold: set | None = None, index: int = -1) -> list[str]:
    label = [str(row.label[k]) for k in shown] or ["all"]
    return [*label, f"n={row.n}", *(_cell(row.stats.get(c), (index, c) in (bold or ())) for c in columns)]


def _row_name(row: Row, varying: list[str]) -> str:
    return ", ".join(f"{k}={row.label[k]}" for k in varying) or "all"


def markdown(rows, shown, columns, common, failed, skipped: list[Skipped] = (), found=None, bold=False) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    audited = any(r.audit for r in rows)
    head = header(shown, columns, found) + (["Audit"] if audited else [])
    best = best_cells(rows, columns) if bold else set()
    lines = []
    if common:
        lines += [f"Common overrides: `{' '.join(common)}`", ""]
    lines += ["| " + " | ".join(esc(h) for h in head) + " |",
              "|" + "|".join("---" if i < len(shown or ["run"]) + 1 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row_cells(r, shown, columns, best, i) + ([r.audit or "-"] if audited
                                                                                        else [])) + " |"
              for i, r in enumerate(rows)]
    lines += ["", "Accuracy in %, mean ± std over seeds (n = seeds with results)."]
    if audited:
        lines += ["Audit: the gradient-masking audit of each seed (eval.audit; see README \"Is it robust?\"): "
                  "`reliable` when every audited seed passed every check, else the failed checks."]
    if any(c.startswith(("best ", "last ")) for c in columns):
        lines += ["`best`: best.pt, the epoch with the highest PGD accuracy on the validation split (never the "
                  "test set); `last`: last.pt (eval.checkpoint=both scores both in one evaluation)."]
    sources = [(_row_name(r, shown), r.paper_source) for r in rows if r.paper_source]
    if sources:
        lines += ["", "Paper numbers:", ""] + [f"- {esc(name)}: {esc(src)}" for name, src in sources]
    if failed:
        lines += ["", f"Jobs without results ({len(failed)}):", ""]
        lines += [f"- `{j.dir}`: {j.status}" for j in failed]
    if skipped:
        lines += ["", f"Files skipped ({len(skipped)}):", ""]
        lines += [f"- `{s.path}`: {s.why}" for s in skipped]
    return "\n".join(lines) + "\n"


def csv_text(rows, shown, columns) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    head = [*shown, "n", "seeds"]
    for c in columns:
        head += [f"{c} mean", f"{c} std", f"{c} paper", f"{c} diff"]
    audited = any(r.audit for r in rows)
    w.writerow(head + (["audit"] if audited else []))
    for r in rows:
        line = [r.label[k] for k in shown] + [r.n, " ".join(map(str, r.seeds))]
        for c in columns:
            mean, sd, n, paper = r.stats.get(c, (None, None, 0, None))
            line += ["" if mean is None else f"{mean:.4f}", "" if sd is None else f"{sd:.4f}",
                     "" if paper is None else f"{paper:.2f}",
                     "" if paper is None or mean is None else f"{mean - paper:+.4f}"]
        w.writerow(line + ([r.audit] if audited else []))
    return buf.getvalue()


def tex_escape(s: str) -> str:
    out = []
    for ch in str(s):
        out.append({"\\": "\\textbackslash{}", "_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#", "$": "\\$",
                    "{": "\\{", "}": "\\}", "±": "$\\pm$", "α": "$\\alpha$", "~": "\\textasciitilde{}",
                    "^": "\\textasciicircum{}"}.get(ch, ch))
    return "".join(out)


def _tex_key(key: str) -> str:
    """``weighting.alpha`` -> ``$\\alpha$``; other keys by their last part."""
    if key == "method":
        return "Method"
    last = key.split(".")[-1]
    return f"${_GREEK[last]}$" if last in _GREEK else tex_escape(last)


def protocol_caption(jobs: list[Job]) -> str:
    """What the numbers were measured on: data set, test examples, seeds (the attacks' budgets follow)."""
    datasets = sorted({str((j.config.get("dataset") or {}).get("name")) for j in jobs if j.results})
    n_eval = sorted({str((j.results.get("protocol") or {}).get("n_eval", "?")) for j in jobs if j.results
                     and "protocol" in j.results} | {str(((r.get("protocol") or {}).get("n_eval", "?")))
                                                      for j in jobs if j.results
                                                      for r in (j.results.get("checkpoints") or {}).values()})
    return (f"Test accuracy (\\%) on {tex_escape('/'.join(datasets) or '?')} "
            f"({tex_escape('/'.join(n_eval) or '?')} test examples), mean $\\pm$ std over seeds")


def latex(rows, shown, columns, caption: str, found=None, bold=False) -> str:
    """A ``table`` with booktabs rules (``\\usepackage{booktabs}``), headers as the papers write them and
    the protocol (data, examples, each attack's budget) in the caption; paper numbers as (paper, Δ)."""
    titles = titles_of(columns, found) if found else {c: c for c in columns}
    budgets = [f"{tex_escape(titles[c])}: {tex_escape(found[c][1])}" for c in columns
               if found and found[c][1] and not found[c][1].startswith("per example")]
    best = best_cells(rows, columns) if bold else set()
    seeds = sorted({r.n for r in rows})
    cap = caption + f" (n={'/'.join(map(str, seeds))})"
    cap += (". " + "; ".join(dict.fromkeys(budgets)) if budgets else "") + "."
    if any(r.paper_source for r in rows):
        cap += " In brackets: the paper's number and our difference."

    def cell(stat, strong):
        if stat is None:
            return ""
        mean, sd, n, paper = stat
        s = f"{mean:.2f}" + (f" \\pm {sd:.2f}" if sd is not None else "")
        s = f"\\mathbf{{{s}}}" if strong else s
        s = f"${s}$"
        if paper is not None:
            s += f" ({paper:.2f}, ${mean - paper:+.2f}$)"
        return s

    keys = shown or ["run"]
    head = [_tex_key(k) for k in keys] + [tex_escape(titles[c]) for c in columns]
    lines = ["% needs \\usepackage{booktabs} in the preamble", "\\begin{table}[t]", "\\centering",
             f"\\caption{{{cap}}}", "\\begin{tabular}{" + "l" * len(keys) + "r" * len(columns) + "}", "\\toprule",
             " & ".join(head) + " \\\\", "\\midrule"]
    for i, r in enumerate(rows):
        label = [tex_escape(str(r.label[k])) for k in shown] or ["all"]
        lines.append(" & ".join([*label, *(cell(r.stats.get(c), (i, c) in best) for c in columns)]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"
