"""What a paper contributes, as pure functions of tensors: the shared formulas (:mod:`.functional`),
the per-example weighting schemes (:mod:`.weighting`), the defense losses (:mod:`.defenses`) and the
AWP minimizer (:mod:`.awp`). They know nothing of configs, files or the loop."""
