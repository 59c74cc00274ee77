"""``python -m medseg.postprocess``: the command lives in its stage, ``medseg.inference.postprocess_command``."""

import sys

from medseg.inference.postprocess_command import main

if __name__ == "__main__":
    sys.exit(main())
