"""``python -m medseg.memory``: the command lives in its stage, ``medseg.planning.memory_command``."""

import sys

from medseg.planning.memory_command import main

if __name__ == "__main__":
    sys.exit(main())
