"""One training run: build it from the config (:mod:`.build`), one step (:mod:`.step`: attack ->
forwards -> weights -> loss), the epoch loop (:mod:`.loop`) and what keeps a run alive around it
(:mod:`.lifecycle`, the run state composing :mod:`.rundir` (lock, resume dirs), :mod:`.checkpointer`
(last.pt/best.pt), :mod:`.signals`, :mod:`.finite` (non-finite watch) and :mod:`.sums`). Imports evaluation (the final
evaluation), records, config and everything below; nothing imports it but the entry points."""
