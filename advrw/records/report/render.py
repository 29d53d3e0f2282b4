"""The table as text: Markdown, CSV and LaTeX."""

from __future__ import annotations

import csv
import io

from advrw.records.report.table import Row

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

