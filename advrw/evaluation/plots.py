"""PNG figures for the SPEC 6 diagnostics: plain tensors/arrays in, a PNG path out.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through
``pyplot``: nothing is registered in pyplot's global figure list (so nothing leaks across an
evaluation that writes hundreds of plots) and no interactive backend is ever selected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from advrw.core.errors import AdvrwError
from advrw.core.files import atomic_write
from advrw.evaluation.metrics import histogram

__all__ = ["plot_class_weight_sums", "plot_confusion", "plot_entropy_hist", "plot_per_class",
           "plot_weight_hists"]

_DPI = 120


def _np(a, name: str, ndim: int | None = None) -> np.ndarray:
    arr = a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=float)
    if ndim is not None and arr.ndim != ndim:
        raise AdvrwError(f"{name} has shape {arr.shape}: must be {ndim}-D")
    if arr.size == 0:
        raise AdvrwError(f"{name} is empty: nothing to plot")
    return arr


def _classes(classes: Sequence | None, n: int) -> list[str]:
    if classes is None:
        return [str(i) for i in range(n)]
    names = [str(c) for c in classes]
    if len(names) != n:
        raise AdvrwError(f"classes has {len(names)} names: the data has {n} classes")
    return names


def _new(figsize) -> Figure:
    fig = Figure(figsize=figsize, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise AdvrwError(f"path={str(path)!r} is invalid: plots are written as .png files")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_write(out, "figure") as f:  # never a partial PNG (disk full: one line, exit 4)
        fig.savefig(f, format="png")
    fig.clf()  # drop artists now; the Figure itself is garbage once we return
    return out


def plot_confusion(cm, classes: Sequence | None, path, title: str = "Confusion matrix") -> Path:
    """Row-normalised confusion matrix (rows true, columns predicted); counts annotated when
    there are at most 20 classes."""
    m = _np(cm, "cm", ndim=2)
    if m.shape[0] != m.shape[1]:
        raise AdvrwError(f"cm has shape {m.shape}: must be square [C, C]")
    names = _classes(classes, m.shape[0])
    row = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, row, out=np.zeros_like(m), where=row > 0)
    c = m.shape[0]
    fig = _new((max(4.0, 0.45 * c + 2), max(3.5, 0.45 * c + 1.5)))
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(c), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(c), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=6,
                        color="white" if frac[i, j] > 0.5 else "black")
    return _save(fig, path)


def plot_per_class(clean_acc, robust_acc, classes: Sequence | None, path,
                   title: str = "Per-class accuracy") -> Path:
    """Grouped bars of clean and robust accuracy per class (NaN classes drawn empty)."""
    clean = _np(clean_acc, "clean_acc", ndim=1)
    robust = _np(robust_acc, "robust_acc", ndim=1)
    if clean.shape != robust.shape:
        raise AdvrwError(f"clean_acc {clean.shape} and robust_acc {robust.shape} must have the same length")
    names = _classes(classes, clean.shape[0])
    idx = np.arange(len(names))
    fig = _new((max(5.0, 0.5 * len(names) + 2), 3.8))
    ax = fig.add_subplot()
    ax.bar(idx - 0.2, np.nan_to_num(clean), width=0.4, label="clean")
    ax.bar(idx + 0.2, np.nan_to_num(robust), width=0.4, label="robust")
    ax.set_xticks(idx, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_entropy_hist(entropy, path, threshold: float = 1.5, bins: int = 50,
                      title: str = "Entropy of adversarial predictions") -> Path:
    """Histogram of prediction entropies with the EWAT threshold and the share above it."""
    e = _np(entropy, "entropy").ravel()
    counts, edges = histogram(e, bins=bins, range=(0.0, max(float(e.max()), threshold) * 1.02 + 1e-9))
    share = float((e > threshold).mean())
    fig = _new((5.5, 3.6))
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, alpha=0.7)
    ax.axvline(threshold, color="red", linestyle="--", label=f"> {threshold:g}: {share:.1%}")
    ax.set_xlabel("entropy (nats)")
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_weight_hists(weights_by_alpha: Mapping, path, bins: int = 50,
                      title: str = "Normalised importance weights") -> Path:
    """One histogram row per ``alpha_test`` of the normalised weights ``s~`` (Zeng A.6).

    All rows share the x-axis; it is logarithmic when the weights span more than two decades
    (the usual case for alpha_test >= 1), linear otherwise (alpha_test = 0 is one column at 1/N).
    """
    if not weights_by_alpha:
        raise AdvrwError("weights_by_alpha is empty: pass {alpha_test: normalised_weights}")
    items = [(a, _np(w, f"weights for alpha_test={a}").ravel()) for a, w in sorted(weights_by_alpha.items())]
    allw = np.concatenate([w for _, w in items])
    if (allw <= 0).any() or not np.isfinite(allw).all():
        raise AdvrwError("normalised weights must be finite and > 0 (exp(-alpha * margin) / sum)")
    lo, hi = float(allw.min()), float(allw.max())
    use_log = hi / lo > 100.0
    fig = _new((6.0, 1.8 * len(items) + 0.8))
    axes = fig.subplots(len(items), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (alpha, w) in zip(axes, items):
        counts, edges = histogram(w, bins=bins, range=(lo, hi), log=use_log)
        ax.stairs(counts, edges, fill=True, alpha=0.7)
        ax.set_ylabel("examples")
        ax.set_title(f"alpha_test = {alpha:g}", fontsize=9)
        if use_log:
            ax.set_xscale("log")
    axes[-1].set_xlabel("normalised weight s~ (1/N = %.2g)" % (1.0 / items[0][1].size))
    fig.suptitle(title)
    return _save(fig, path)


def plot_class_weight_sums(per_epoch_sums, classes: Sequence | None, path,
                           title: str = "Per-class sum of training weights") -> Path:
    """One line per class: the sum of its training weights in each epoch, ``[E, C]`` (VIR Fig. 3)."""
    s = _np(per_epoch_sums, "per_epoch_sums", ndim=2)
    names = _classes(classes, s.shape[1])
    epochs = np.arange(1, s.shape[0] + 1)
    fig = _new((6.5, 4.0))
    ax = fig.add_subplot()
    styles = ("-", "--", ":", "-.")  # tab10 has 10 colours: a style per colour cycle tells classes 0 and 10 apart
    for j, name in enumerate(names):
        ax.plot(epochs, s[:, j], label=name, marker="o" if s.shape[0] < 20 else None, markersize=3,
                linestyle=styles[(j // 10) % len(styles)])
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_ylabel("sum of weights")
    ax.set_title(title)
    if len(names) <= 20:
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the lines
    return _save(fig, path)
