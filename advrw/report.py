"""``python -m advrw.report DIR...``: the campaign table of a sweep (see :mod:`advrw.records.report`)."""

import sys

from advrw.records.report import main

if __name__ == "__main__":
    sys.exit(main())
