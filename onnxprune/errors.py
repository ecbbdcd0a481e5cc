"""The one exception type that means "the user's input is wrong".

The CLI turns it into a one-line message on stderr and exit code 2; anything else is a bug (exit 1).
Library callers catch it to tell bad input from internal failures.
"""

from __future__ import annotations

import re
from collections.abc import Callable


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, for a one-line error (its type name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


class OnnxPruneError(Exception):
    """Bad usage or bad input: the message says what and where, in one line."""


class NotExact(OnnxPruneError):
    """A slim model that does not compute what its sparse twin computes (or does not run): onnxprune
    refuses to write it. The input is not wrong, but nothing is wrong to retry either: the message says
    how to go around it (--mode sparse, --exclude)."""


class OptionError(OnnxPruneError):
    """A bad option. The message names options as `{field}` (the library's field names, e.g. `{round_to}`),
    so each front end says them its own way: `say` renames them (the CLI to its flags, the run config to
    its keys); `str()` gives the plain field names, as a library caller wrote them."""

    def __init__(self, text: str):
        self.text = text
        super().__init__(self.say(lambda name: name))

    def say(self, rename: Callable[[str], str]) -> str:
        """The message with every `{field}` named by `rename(field)`."""
        return re.sub(r"\{([a-z_]+)\}", lambda m: rename(m[1]), self.text)
