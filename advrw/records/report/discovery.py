"""Finding a campaign's jobs: run dirs holding ``.hydra/config.yaml``, their results and what unfinished ones got to."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from advrw.core.keys import override_key

@dataclass
class Job:
    dir: Path
    overrides: list[str]
    config: dict
    results: dict | None
    seed: object = None
    status: str = ""



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

