"""The campaign's figures: alpha_test curves (one panel per defense, as Zeng et al. plot them), the
A_tr heatmap, a two-key grid heatmap. Written whole (temp file + rename): never a 0-byte PNG."""

from __future__ import annotations

import math
from pathlib import Path

from advrw.records.report.render import _row_name
from advrw.records.report.table import Row, _choice, _sort_value

# colour x line style x marker: 10 colours of tab10, then the next style, so no two curves look alike
_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def line_style(i: int) -> dict:
    return {"color": f"C{i % 10}", "linestyle": _STYLES[(i // 10) % len(_STYLES)], "marker": _MARKERS[i % len(_MARKERS)]}


def _text_colour(value: float, lo: float, hi: float) -> str:
    """Dark digits on viridis' light (yellow/green) cells, white on its dark (purple/blue) ones."""
    frac = 0.5 if hi <= lo else (value - lo) / (hi - lo)
    return "black" if frac > 0.55 else "white"


def _save(fig, out: Path, name: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib, only for figures

    FigureCanvasAgg(fig)
    path = out / name
    tmp = out / f".{name}.tmp"
    try:
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")  # bbox: legends outside the axes stay in
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _heat(ax, grid, xt, yt, title, xlabel, ylabel):
    import numpy as np  # deferred: numpy/matplotlib, only for figures

    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(xt)), [str(x) for x in xt], rotation=45, ha="right")
    ax.set_yticks(range(len(yt)), [str(y) for y in yt])
    finite = grid[np.isfinite(grid)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for (i, j), v in np.ndenumerate(grid):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color=_text_colour(v, lo, hi), fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.figure.colorbar(im, ax=ax)


def _panels(rows: list[Row]) -> dict[str, list[Row]]:
    """Rows by defense (AT, TRADES, MART), in the rows' order."""
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(_choice(r.config, "defense").upper() or "all", []).append(r)
    return out


def alpha_curves(rows: list[Row], varying: list[str], alphas: list[float], out: Path) -> Path:
    """A_sa and A_tr against alpha_test: one row of panels per metric, one column per defense."""
    from matplotlib.figure import Figure  # deferred: matplotlib, only for figures

    panels = _panels(rows)
    shown = [k for k in varying if k != "defense"] or varying
    fig = Figure(figsize=(4.6 * len(panels) + 2.5, 7.5))
    for col, (defense, prs) in enumerate(panels.items()):
        for m, metric in enumerate(("A_sa", "A_tr")):
            ax = fig.add_subplot(2, len(panels), m * len(panels) + col + 1)
            for i, r in enumerate(prs):
                xs = [a for a in alphas if f"{metric}@{a:g}" in r.stats]
                ys = [r.stats[f"{metric}@{a:g}"][0] for a in xs]
                es = [r.stats[f"{metric}@{a:g}"][1] or 0.0 for a in xs]
                ax.errorbar(xs, ys, yerr=es, capsize=3, markersize=4, label=_row_name(r, shown), **line_style(i))
            ax.set_xlabel("alpha_test")
            ax.set_ylabel(f"{metric} (%)")
            ax.set_title(f"{defense}: {metric} against alpha_test")
            ax.grid(alpha=0.3)
            if m == 0:  # one legend per defense, outside the data
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -1.45), ncol=2, frameon=False)
    fig.subplots_adjust(hspace=0.45, bottom=0.3)
    return _save(fig, out, "alpha_test_curves.png")


def figures(rows: list[Row], varying: list[str], columns: list[str], out: Path) -> list[Path]:
    """alpha_test curves, the A_tr heatmap over group x alpha_test, and a two-key grid heatmap."""
    import numpy as np  # deferred: numpy/matplotlib, only for figures
    from matplotlib.figure import Figure

    written = []
    alphas = sorted({float(c.split("@")[1]) for c in columns if c.startswith("A_sa@")})
    nu_rows = [r for r in rows if any(f"A_sa@{a:g}" in r.stats for a in alphas)]
    if alphas and nu_rows:
        written.append(alpha_curves(nu_rows, varying, alphas, out))
        grid = np.array([[r.stats.get(f"A_tr@{a:g}", (math.nan,))[0] for a in alphas] for r in nu_rows])
        fig = Figure(figsize=(1.2 * len(alphas) + 4, 0.4 * len(nu_rows) + 2))
        _heat(fig.add_subplot(1, 1, 1), grid, [f"{a:g}" for a in alphas], [_row_name(r, varying) for r in nu_rows],
              "A_tr (%)", "alpha_test", "")
        written.append(_save(fig, out, "heatmap_A_tr_alpha_test.png"))
    if len(varying) == 2 and rows:
        kx, ky = varying
        xs = sorted({r.label.get(kx, "") for r in rows}, key=_sort_value)
        ys = sorted({r.label.get(ky, "") for r in rows}, key=_sort_value)
        metrics = ["clean"] + [c for c in columns if c != "clean"][:1]
        fig = Figure(figsize=(5.5 * len(metrics), 0.5 * len(ys) + 3))
        for i, m in enumerate(metrics):
            grid = np.full((len(ys), len(xs)), math.nan)
            for r in rows:
                if m in r.stats:
                    grid[ys.index(r.label.get(ky, "")), xs.index(r.label.get(kx, ""))] = r.stats[m][0]
            _heat(fig.add_subplot(1, len(metrics), i + 1), grid, xs, ys, f"{m} (%)", kx, ky)
        written.append(_save(fig, out, f"heatmap_{kx}_x_{ky}.png".replace("/", "_")))
    return written
