"""Scoring a model: the attack suite (:mod:`.suite`), metrics, best/last checkpoint scoring, the
runner both CLIs share (:mod:`.runner`), results.json and figures. Imports records, config, attacks,
data, models and methods; never training."""
