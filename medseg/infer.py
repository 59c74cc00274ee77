"""``python -m medseg.infer``: the command lives in its stage, ``medseg.inference.command``."""

import sys

from medseg.inference.command import main

if __name__ == "__main__":
    sys.exit(main())
