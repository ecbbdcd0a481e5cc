"""Tables for people, laid out by rich: columns aligned, and as wide as the terminal they are printed on.

An id (a group id, a node name) is never cut by the layout: rich cuts a cell at its end, and exported
names differ at their end (`/layers.3/mlp/fc1/MatMul`). `display_id` cuts from the left, the same way in
every table and picture, so what is shown is always the end of the id in `inspect --json` and in the
sensitivity JSON. Off a terminal (a pipe, a file, a test) nothing is fitted: ids are cut at `ID_WIDTH`,
as in the pictures. On a terminal the id column takes what the other columns leave (the whole ids when
they fit, never fewer than `MIN_ID_WIDTH` characters) and a free-text last column wraps.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TextIO

ID_WIDTH = 40  # ids longer than this are cut off a terminal and in pictures
MIN_ID_WIDTH = 16  # on a narrow terminal ids keep at least this much (the lines then run past its edge)
MIN_WRAP_WIDTH = 24  # a wrapping column keeps at least this much before ids are cut further,
MIN_WRAP_FLOOR = 10  # and this much before ids go below MIN_ID_WIDTH
GAP = 2  # spaces between columns
UNBOUNDED = 100_000  # the console width when the output is not a terminal: rich never wraps nor cuts


def display_id(gid: str, width: int = ID_WIDTH) -> str:
    """An id cut to `width` characters from the left ("…" first): the end of an exported node name is the
    part that tells layers apart."""
    return gid if len(gid) <= width else "…" + gid[-(width - 1):]


def terminal_width(stream: TextIO) -> int | None:
    """The width of the terminal `stream` writes to, or None when it is not a terminal."""
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):  # a closed or a fake stream
        return None
    from rich.console import Console

    return Console(file=stream).width


@dataclass
class Column:
    """One column: its header, and how its cells are shown."""

    header: str
    left: bool = False  # text is left-aligned; numbers (the default) right-aligned
    id: bool = False  # cells are ids: cut by `display_id`, never by the layout
    wrap: bool = False  # free text that may wrap on a narrow terminal (a last column)


def render(columns: list[Column], rows: list[list[str]], width: int | None = None) -> str:
    """The table as text, for a terminal `width` characters wide (None: not a terminal)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    natural = [max([len(c.header)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    longest = max([n for c, n in zip(columns, natural) if c.id], default=0)
    wrap = max([n for c, n in zip(columns, natural) if c.wrap], default=0)
    rest = sum(n for c, n in zip(columns, natural) if not (c.id or c.wrap)) + GAP * (len(columns) - 1)
    room = 0 if width is None else width - rest  # for the ids and the wrapping column
    wrap = min(wrap, MIN_WRAP_WIDTH, max(MIN_WRAP_FLOOR, room - MIN_ID_WIDTH))  # what wrapping keeps at least
    cut = ID_WIDTH if width is None else min(longest, max(MIN_ID_WIDTH, room - wrap))
    fixed = rest + wrap
    table = Table(box=None, pad_edge=False, padding=(0, GAP // 2), show_edge=False)
    for c in columns:
        table.add_column(c.header, justify="left" if c.left else "right", no_wrap=not c.wrap, overflow="fold")
    for row in rows:
        table.add_row(*(Text(display_id(v, cut) if c.id else v) for c, v in zip(columns, row, strict=True)))
    needed = fixed + (min(cut, longest) if longest else 0)
    out = io.StringIO()
    console = Console(file=out, width=UNBOUNDED if width is None else max(width, needed), color_system=None,
                      highlight=False, emoji=False, markup=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())
