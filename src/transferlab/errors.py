"""The one exception type users see: a single line that says what happened and how to fix it."""


class TransferlabError(Exception):
    """An error caused by the user's input or environment, not by a bug.

    The message is one line naming the file, option or layer involved and saying how to fix it;
    the command line prints it without a traceback.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run that can be continued; the message says how."""
