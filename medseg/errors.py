"""The one exception type whose message is shown to users as a single line, and the command-line wrapper that shows it."""

import logging
import sys
from collections.abc import Callable


class MedsegError(Exception):
    """A problem the user can fix (bad input, bad config); shown as one line, no traceback."""


def run_command(run: Callable[[], object]) -> None:
    """Run a command line's ``run``: INFO logging, and a user error as one line on stderr with exit code 1."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        run()
    except MedsegError as err:
        print(f"medseg: error: {err}", file=sys.stderr)
        sys.exit(1)
