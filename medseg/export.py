"""``python -m medseg.export``: the command lives in its stage, ``medseg.exporting.command``."""

import sys

from medseg.exporting.command import main

if __name__ == "__main__":
    sys.exit(main())
