"""``python -m advrw.export <run dir> --robustbench``: a trained run in RobustBench's layout.

Writes ``<out>/<dataset>/<threat_model>/<Name>.pt`` (the model's state_dict under ``state_dict``,
as zoo files hold it) and ``<Name>.json`` beside it: the leaderboard's model-info fields (clean and
AutoAttack accuracy from the run's results.json, eps, architecture, training data, ``unreliable``
from the gradient-masking audit) plus an ``advrw`` block that lets ``advrw.eval
ckpt=robustbench:<Name> robustbench.model_dir=<out>`` rebuild the model offline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from advrw.core import checkpoints as ckpt_io
from advrw.core.errors import AdvrwError
from advrw.core.files import write_json


def _percent(v) -> str | None:
    return None if v is None else f"{100 * float(v):.2f}"


def model_info(name: str, config: dict, results: dict | None, threat: str) -> dict:
    """The leaderboard's model-info JSON for one run (numbers only where the run measured them)."""
    results = results or {}
    aa = next((e for e in results.get("attacks", {}).values() if e.get("protocol", {}).get("attack") == "autoattack"),
              None)
    proto = results.get("protocol", {})
    eps = float(config["dataset"]["threat"]["eps"])
    notes = []
    if aa is None:
        notes.append("AutoAttack not measured: run python -m advrw.eval ckpt=<run dir> eval=robustbench")
    elif proto.get("n_eval") != 10000 or proto.get("subsets", {}).get("eval", {}).get("rule") != "first":
        notes.append(f"AutoAttack on n_eval={proto.get('n_eval')} ({proto.get('subsets', {}).get('eval', {}).get('rule')}"
                     " subset), not RobustBench's first 10000 test points")
    audit = results.get("audit")
    extra = bool(config["dataset"].get("extra_npz"))
    return {"link": "", "name": name, "authors": "", "additional_data": extra, "number_forward_passes": 1,
            "dataset": config["dataset"]["name"], "venue": "", "architecture": config["model"]["name"],
            "eps": f"{round(eps * 255)}/255" if abs(eps * 255 - round(eps * 255)) < 1e-6 else str(eps),
            "clean_acc": _percent(results.get("clean", {}).get("accuracy")), "reported": None,
            "autoattack_acc": _percent(aa["robust_accuracy"]) if aa else None,
            "unreliable": None if audit is None else audit["verdict"] != "reliable",
            "footnote": "; ".join(notes + ([f"advrw audit: {audit['verdict']} {audit['reasons']}"] if audit else [])),
            "training": {"defense": config["defense"]["name"], "weighting": config["weighting"]["name"],
                         "seed": config.get("seed")}}


def export(run_dir: Path, out: Path, name: str | None, kind: str = "last", threat: str = "Linf") -> Path:
    run_dir = Path(run_dir)
    state = ckpt_io.read(run_dir / f"{kind}.pt")
    if not (isinstance(state, dict) and "config" in state and "model" in state):
        raise AdvrwError(f"{run_dir / f'{kind}.pt'} is not an advrw checkpoint (no config/model)")
    config = state["config"]
    name = name or run_dir.name
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    target = Path(out) / config["dataset"]["name"] / threat / f"{name}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    weights = state["model"]
    norm = {k: weights[k].flatten().tolist() for k in ("normalize.mean", "normalize.std") if k in weights}
    tmp = target.with_suffix(".pt.tmp")
    torch.save({"state_dict": weights}, tmp)
    tmp.replace(target)
    info = model_info(name, config, results, threat)
    info["advrw"] = {"model": config["model"]["name"], "run_dir": str(run_dir.resolve()), "checkpoint": kind,
                     "epoch": state.get("epoch"), "mean": norm.get("normalize.mean"), "std": norm.get("normalize.std")}
    write_json(target.with_suffix(".json"), info)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m advrw.export", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--robustbench", action="store_true", required=True, help="RobustBench's layout (the only one)")
    ap.add_argument("--out", type=Path, default=Path("models"), help="model_dir to write into (default ./models)")
    ap.add_argument("--name", help="the entry's name (default: the run dir's name)")
    ap.add_argument("--checkpoint", choices=("last", "best"), default="last")
    args = ap.parse_args(argv)
    try:
        path = export(args.run_dir, args.out, args.name, args.checkpoint)
    except AdvrwError as err:
        print(f"advrw: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path.with_suffix('.json')}: python -m advrw.eval ckpt=robustbench:{path.stem} "
          f"robustbench.model_dir={args.out} robustbench.dataset={path.parent.parent.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
