"""The one exception type whose message is shown to users as a single line, and the error path every command runs through."""

import errno
import logging
import sys
from collections.abc import Callable, Sequence

DEBUG_OPTION = "--debug"
DEBUG_HELP = f"{DEBUG_OPTION} shows an error's traceback instead of one line."


class MedsegError(Exception):
    """A problem the user can fix (bad input, bad config); shown as one line, no traceback."""


def describe_os_error(err: OSError) -> str:
    """Return a failed file operation as one line: the file, what went wrong and, where it is clear, what to do."""
    where = f"{err.filename}: " if err.filename else ""
    what = err.strerror or str(err)
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}{what}: choose a folder you can write to (or fix its permissions) and rerun"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}{what}: free some disk space (or choose another disk) and rerun"
    return f"{where}{what}"


def run_command(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Return the exit code of a command: the int ``main(args)`` returns (0 for anything else), or 1 after a user
    error (``MedsegError``) or a failed file operation (``OSError``), each shown on stderr as one ``medseg: error: ...`` line.

    Logging is set up (INFO) before ``main`` runs. ``args`` is ``argv`` (default: the command line) without
    ``--debug``, which lets those errors raise with their traceback instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_OPTION in args
    args = [arg for arg in args if arg != DEBUG_OPTION]
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        code = main(args)
    except Exception as err:
        user_error = _user_error(err)
        if debug or user_error is None:
            raise
        message = str(user_error) if isinstance(user_error, MedsegError) else f"{describe_os_error(user_error)} ({DEBUG_OPTION} shows the traceback)"
        print(f"medseg: error: {message}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


def _user_error(err: BaseException | None) -> MedsegError | OSError | None:
    """Return the user error ``err`` is or was raised from: MONAI's transforms wrap what a check raised while loading
    a scan in a RuntimeError ("applying transform ..."), which is still that check's one line for the user."""
    while err is not None:
        if isinstance(err, (MedsegError, OSError)):
            return err
        err = err.__cause__
    return None
