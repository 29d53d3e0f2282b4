"""``python -m advrw.report DIR...``: the campaign table of a sweep (see :mod:`advrw.records.report.cli`)."""

import sys

from advrw.records.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
