"""The one exception type whose message is shown to users as a single line."""


class MedsegError(Exception):
    """A problem the user can fix (bad input, bad config); shown as one line, no traceback."""
