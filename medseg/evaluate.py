"""``python -m medseg.evaluate``: the command lives in its stage, ``medseg.evaluation.command``."""

import sys

from medseg.evaluation.command import main

if __name__ == "__main__":
    sys.exit(main())
