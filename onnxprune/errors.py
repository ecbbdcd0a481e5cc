"""The one exception type that means "the user's input is wrong".

The CLI turns it into a one-line message on stderr and exit code 2; anything else is a bug (exit 1).
Library callers catch it to tell bad input from internal failures.
"""


class OnnxPruneError(Exception):
    """Bad usage or bad input: the message says what and where, in one line."""


class NotExact(OnnxPruneError):
    """A slim model that does not compute what its sparse twin computes (or does not run): onnxprune
    refuses to write it. The input is not wrong, but nothing is wrong to retry either: the message says
    how to go around it (--mode sparse, --exclude)."""
