"""The one exception type that means "the user's input is wrong".

The CLI turns it into a one-line message on stderr and exit code 2; anything else is a bug (exit 1).
Library callers catch it to tell bad input from internal failures.
"""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, for a one-line error (its type name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


class OnnxPruneError(Exception):
    """Bad usage or bad input: the message says what and where, in one line."""


class NotExact(OnnxPruneError):
    """A slim model that does not compute what its sparse twin computes (or does not run): onnxprune
    refuses to write it. The input is not wrong, but nothing is wrong to retry either: the message says
    how to go around it (--mode sparse, --exclude)."""
