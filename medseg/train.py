"""``python -m medseg.train``: the command lives in its stage, ``medseg.training.command``."""

import sys

from medseg.training.command import main

if __name__ == "__main__":
    sys.exit(main())
