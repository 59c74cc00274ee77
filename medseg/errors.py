"""The one exception type whose message is shown to users as a single line, and the error path every command runs through."""

import errno
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

DEBUG_OPTION = "--debug"
DEBUG_HELP = f"{DEBUG_OPTION} shows an error's traceback instead of one line."


class MedsegError(Exception):
    """A problem the user can fix (bad input, bad config); shown as one line, no traceback."""


# what to do after a failed file operation, by errno: one wording for every command and every write
_OS_ERROR_ADVICE = {
    **dict.fromkeys((errno.EACCES, errno.EPERM, errno.EROFS), "choose a folder you can write to (or fix its permissions) and rerun"),
    **dict.fromkeys((errno.ENOSPC, errno.EDQUOT), "free some disk space (or choose another disk) and rerun"),
}


def os_error_reason(err: OSError) -> str:
    """Return what went wrong in a failed file operation and, where it is clear, what to do (no file name)."""
    what = err.strerror or str(err)
    advice = _OS_ERROR_ADVICE.get(err.errno)
    return f"{what}: {advice}" if advice else what


def describe_os_error(err: OSError) -> str:
    """Return a failed file operation as one line: the file, what went wrong and, where it is clear, what to do."""
    return f"{err.filename}: {os_error_reason(err)}" if err.filename else os_error_reason(err)


def run_command(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Return the exit code of a command: the int ``main(args)`` returns (0 for anything else), or 1 after a user
    error (``MedsegError``) or a failed file operation (``OSError``), each shown on stderr as one ``medseg: error: ...`` line.

    Logging is set up (INFO) before ``main`` runs, and other libraries' tips and warnings that a user cannot act on
    are not shown while it runs (``library_noise_hidden``). ``args`` is ``argv`` (default: the command line) without
    ``--debug``, which lets those errors raise with their traceback instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_OPTION in args
    args = [arg for arg in args if arg != DEBUG_OPTION]
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        with library_noise_hidden():
            code = main(args)
    except Exception as err:
        user_error = _user_error(err)
        if debug or user_error is None:
            raise
        message = str(user_error) if isinstance(user_error, MedsegError) else f"{describe_os_error(user_error)} ({DEBUG_OPTION} shows the traceback)"
        print(f"medseg: error: {message}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


# (message, module) of warnings that other libraries raise on every run, about their own code: a user can do nothing
# about them. Warnings about the user's data or settings stay.
LIBRARY_WARNINGS = [
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree"),
    # medseg logs the training loss at the end of each epoch too, and the per-step loss every log_every_n_steps steps
    # counted across epochs, so a short epoch loses nothing
    (r"The number of training batches \(\d+\) is smaller than the logging interval", r"lightning\.pytorch\.loops\.fit_loop"),
    (r"Precision \S+ is not supported by the model summary", r"lightning\.pytorch\.utilities\.model_summary"),
    # MONAI's Hausdorff distance passes this argument itself (MONAI 1.5-1.6); no argument of the metric avoids it
    (r"monai\.metrics\.utils get_mask_edges:always_return_as_numpy", r"monai\.utils\.deprecate_utils"),
]


def _not_lightnings_tip(record: logging.LogRecord) -> bool:
    """Lightning logs an advertisement whenever a Trainer has no LitLogger (lightning 2.6), and has no switch for it."""
    return not str(record.msg).startswith("💡 Tip:")


@contextmanager
def library_noise_hidden() -> Iterator[None]:
    """Hide ``LIBRARY_WARNINGS`` and Lightning's logged tip while the block runs."""
    lightning_info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_info.addFilter(_not_lightnings_tip)
    try:
        with warnings.catch_warnings():
            for message, module in LIBRARY_WARNINGS:
                warnings.filterwarnings("ignore", message=message, module=module)
            yield
    finally:
        lightning_info.removeFilter(_not_lightnings_tip)


def _user_error(err: BaseException | None) -> MedsegError | OSError | None:
    """Return the user error ``err`` is or was raised from: MONAI's transforms wrap what a check raised while loading
    a scan in a RuntimeError ("applying transform ..."), which is still that check's one line for the user."""
    while err is not None:
        if isinstance(err, (MedsegError, OSError)):
            return err
        err = err.__cause__
    return None
