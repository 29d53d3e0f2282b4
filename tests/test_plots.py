"""advrw.evaluation.plots: every figure writes a readable, non-empty PNG and leaks no pyplot figures."""

import numpy as np
import pytest
import torch
from PIL import Image

from advrw.evaluation import plots
from advrw.core.errors import AdvrwError
from advrw.evaluation.metrics import confusion_matrix, nonuniform_weights, per_class_accuracy, prediction_entropy

CLASSES = ["plane", "car", "bird", "cat"]


def _png_ok(path, expected):
    assert path == expected
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 100 and im.size[1] > 100
        arr = np.asarray(im.convert("L"))
    assert arr.std() > 1.0  # something was drawn, not a blank canvas


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(200, 4, generator=g)
    y = torch.randint(0, 4, (200,), generator=g)
    return logits, y


def test_plot_confusion(tmp_path, data):
    logits, y = data
    cm = confusion_matrix(logits.argmax(1), y, 4)
    _png_ok(plots.plot_confusion(cm, CLASSES, tmp_path / "sub" / "cm.png", "clean"), tmp_path / "sub" / "cm.png")


def test_plot_per_class(tmp_path, data):
    logits, y = data
    clean = per_class_accuracy(logits.argmax(1), y, 4)
    robust = clean * 0.5
    robust[2] = float("nan")  # a class with no examples must not break the plot
    out = tmp_path / "pc.png"
    _png_ok(plots.plot_per_class(clean, robust, CLASSES, out, "per class"), out)


def test_plot_entropy_hist(tmp_path, data):
    logits, _ = data
    out = tmp_path / "ent.png"
    _png_ok(plots.plot_entropy_hist(prediction_entropy(logits), out, threshold=1.0), out)


def test_plot_weight_hists(tmp_path, data):
    logits, y = data
    weights = {a: nonuniform_weights(logits, y, a) for a in (0.0, 1.0, 5.0, 20.0)}
    out = tmp_path / "w.png"
    _png_ok(plots.plot_weight_hists(weights, out), out)
    out2 = tmp_path / "w_lin.png"  # alpha 0 alone: one column, linear axis
    _png_ok(plots.plot_weight_hists({0.0: weights[0.0]}, out2), out2)


def test_plot_class_weight_sums(tmp_path):
    sums = torch.rand(12, 4) * 100
    out = tmp_path / "cws.png"
    _png_ok(plots.plot_class_weight_sums(sums, CLASSES, out), out)


def test_no_pyplot_figures_leak(tmp_path):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    for i in range(5):
        plots.plot_class_weight_sums(np.ones((3, 2)), None, tmp_path / f"{i}.png")
    assert len(plt.get_fignums()) == before


def test_bad_input(tmp_path):
    with pytest.raises(AdvrwError, match="classes"):
        plots.plot_confusion(np.eye(3), CLASSES, tmp_path / "x.png")
    with pytest.raises(AdvrwError, match="png"):
        plots.plot_confusion(np.eye(4), CLASSES, tmp_path / "x.jpg")
    with pytest.raises(AdvrwError, match="square"):
        plots.plot_confusion(np.ones((3, 4)), None, tmp_path / "x.png")
    with pytest.raises(AdvrwError, match="weights"):
        plots.plot_weight_hists({}, tmp_path / "x.png")


def test_report_alpha_curves_one_panel_per_defense_every_curve_distinct(tmp_path, monkeypatch):
    from advrw.records.report import figures as rf
    from advrw.records.report.table import Row

    saved = {}
    real_save = rf._save
    monkeypatch.setattr(rf, "_save", lambda fig, out, name: saved.setdefault(name, fig) and real_save(fig, out, name))
    alphas = [0.0, 0.5, 1.0]
    rows = []
    for d in ("at", "trades"):
        for k in range(7):  # 14 curves: more than tab10's colours
            stats = {f"{m}@{a:g}": (50.0 + k + a, None, 1, None) for a in alphas for m in ("A_sa", "A_tr")}
            rows.append(Row({"defense": d, "weighting.alpha": str(k)}, 1, [0], stats,
                            config={"defense": {"name": d}}))
    columns = [f"{m}@{a:g}" for a in alphas for m in ("A_sa", "A_tr")]
    paths = rf.figures(rows, ["defense", "weighting.alpha"], columns, tmp_path)
    assert {p.name for p in paths} >= {"alpha_test_curves.png", "heatmap_A_tr_alpha_test.png"}
    assert all(p.stat().st_size > 1000 for p in paths) and not list(tmp_path.glob(".*.tmp"))
    fig = saved["alpha_test_curves.png"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["AT: A_sa against alpha_test", "AT: A_tr against alpha_test",
                      "TRADES: A_sa against alpha_test", "TRADES: A_tr against alpha_test"]
    for ax in fig.axes:
        looks = [(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in ax.get_lines()
                 if ln.get_linestyle() != "None"]  # the curves, not their error-bar caps
        assert len(looks) == 7 and len(set(looks)) == 7
    legend = fig.axes[0].get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().y0 < fig.axes[0].get_window_extent().y0  # below
    styles = {(s["color"], s["linestyle"]) for s in map(rf.line_style, range(14))}
    assert len(styles) == 14
    # heatmap digits: dark on viridis' light cells, white on its dark ones
    assert rf._text_colour(90, 0, 100) == "black" and rf._text_colour(10, 0, 100) == "white"
