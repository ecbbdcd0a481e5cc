"""The one exception type that means "the user's input is wrong".

The CLI turns it into a one-line message on stderr and exit code 2; anything else is a bug (exit 1).
Library callers catch it to tell bad input from internal failures.
"""


class OnnxPruneError(Exception):
    """Bad usage or bad input: the message says what and where, in one line."""
