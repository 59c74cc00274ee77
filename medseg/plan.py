"""``python -m medseg.plan``: the command lives in its stage, ``medseg.planning.command``."""

import sys

from medseg.planning.command import main

if __name__ == "__main__":
    sys.exit(main())
