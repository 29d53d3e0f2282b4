"""The one error type advrw raises for bad input.

Entry points catch it and print its single line (no traceback), so every message must name
the bad value and what is allowed, e.g. ``attack.eps=-0.1 is invalid: must be > 0``.
"""


class AdvrwError(ValueError):
    """Bad user input (config value, path, checkpoint): one line, raised before any work."""
