"""The campaign's figures: alpha_test curves, the A_tr heatmap, a two-key grid heatmap."""

from __future__ import annotations

import math
from pathlib import Path

from advrw.records.report.render import _row_name
from advrw.records.report.table import Row, _sort_value

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
