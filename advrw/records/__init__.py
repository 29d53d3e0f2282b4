"""What a run leaves behind and how it is found again: metrics.jsonl and W&B (:mod:`.runlog`), a run's
W&B identity (:mod:`.identity`), provenance (commit, command) and the campaign report
(:mod:`.report`). Imports only core: records never run a model."""
