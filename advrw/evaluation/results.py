"""Write an evaluation's results: results.json, console table, PNG figures, W&B summary/tables."""

from __future__ import annotations

import logging
from pathlib import Path

from advrw.core.errors import CheckpointWriteError
from advrw.core.files import write_json
from advrw.records.audit_verdict import verdict_text
from advrw.records.runlog import RunLog
from advrw.evaluation.suite import table

log = logging.getLogger(__name__)


def figures(run_dir: Path, results: dict, arrays: dict, classes: list[str]) -> list[Path]:
    """PNGs for people who do not use W&B, in ``<run>/figures/``; returns the written paths."""
    from advrw.evaluation import plots  # deferred: matplotlib, only when figures are made

    out = []
    run_dir = run_dir / "figures"  # beside the records, not among them
    attacks = results.get("attacks", {})
    for name in attacks:
        cm = arrays["confusion"][name]
        out.append(plots.plot_confusion(cm, classes, run_dir / f"confusion_{name}.png", f"confusion under {name}"))
        out.append(plots.plot_per_class(arrays["clean_per_class"], arrays["robust_per_class"][name], classes,
                                        run_dir / f"per_class_{name}.png", f"per-class accuracy: clean vs {name}"))
    if "entropy" in arrays:
        out.append(plots.plot_entropy_hist(arrays["entropy"], run_dir / "entropy_hist.png"))
    if arrays.get("weights"):
        out.append(plots.plot_weight_hists(arrays["weights"], run_dir / "nonuniform_weights.png"))
    return out


def wandb_tables(runlog: RunLog, results: dict, arrays: dict, classes: list[str], prefix: str = "test") -> None:
    """The suite as a W&B summary, a results table, confusion matrices, per-class bars, histograms."""

    def send(run):
        import wandb

        rows = [["clean", results["clean"]["accuracy"], ""]]
        rows += [[n, e["robust_accuracy"], str(e["protocol"])] for n, e in results.get("attacks", {}).items()]
        run.log({f"{prefix}/results": wandb.Table(columns=["attack", "accuracy", "protocol"], data=rows)})
        for name, e in results.get("attacks", {}).items():
            cm = e["confusion"]
            preds, trues = [], []
            for t, row in enumerate(cm):
                for p, count in enumerate(row):
                    trues += [t] * count
                    preds += [p] * count
            if trues:
                run.log({f"{prefix}/confusion/{name}": wandb.plot.confusion_matrix(
                    y_true=trues, preds=preds, class_names=list(classes))})
            bars = wandb.Table(columns=["class", "robust_accuracy"],
                               data=[[c, a] for c, a in zip(classes, e["per_class"])])
            run.log({f"{prefix}/per_class/{name}": wandb.plot.bar(bars, "class", "robust_accuracy",
                                                                    title=f"per-class accuracy under {name}")})
        if "entropy" in arrays:
            run.log({f"{prefix}/entropy_hist": wandb.Histogram(arrays["entropy"].numpy())})
        for a, w in (arrays.get("weights") or {}).items():
            run.log({f"{prefix}/nonuniform_weights/alpha_{a}": wandb.Histogram(w.numpy())})
        flat = {f"{prefix}/clean": results["clean"]["accuracy"]}
        flat.update({f"{prefix}/{n}": e["robust_accuracy"] for n, e in results.get("attacks", {}).items()})
        if "worst_case" in results:
            flat[f"{prefix}/worst_case"] = results["worst_case"]["robust_accuracy"]
        if "audit" in results:  # the gradient-masking audit's verdict and reasons
            flat[f"{prefix}/audit"] = verdict_text(results)
            flat[f"{prefix}/audit_reliable"] = results["audit"]["verdict"] == "reliable"
        if "nonuniform" in results:
            flat[f"{prefix}/A_rob"] = results["nonuniform"]["A_rob"]
        for a, v in results.get("nonuniform", {}).get("alpha_test", {}).items():
            flat[f"{prefix}/A_sa@{a}"], flat[f"{prefix}/A_tr@{a}"] = v["A_sa"], v["A_tr"]
        run.summary.update(flat)

    runlog.call(send)


def write_report(run_dir: Path, results: dict, arrays: dict, classes: list[str], runlog: RunLog | None,
                 plots: bool = True) -> None:
    run_dir = Path(run_dir)
    results["classes"] = [str(c) for c in classes]  # the per-class arrays' order, readable without the data
    write_json(run_dir / "results.json", results)
    log.info("results (%s):\n%s", run_dir / "results.json", table(results))
    if plots:
        try:
            paths = figures(run_dir, results, arrays, classes)
            log.info("figures: %s", ", ".join(p.name for p in paths))
        except CheckpointWriteError:  # disk full / read-only: one line naming the PNG, exit 4
            raise
        except Exception as err:  # a plotting failure must not lose the numbers already written
            log.warning("figures failed: %s: %s", type(err).__name__, err)
    if runlog is not None:
        wandb_tables(runlog, results, arrays, classes)
        runlog.images(sorted((run_dir / "figures").glob("*.png")))  # this evaluation's figures (and training's)
