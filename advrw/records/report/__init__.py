"""``advrw.report``: discovery -> table -> render (Markdown/CSV/LaTeX) -> figures -> W&B; ``cli.main`` ties them."""
