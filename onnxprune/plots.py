"""Pictures as PNG files, drawn with matplotlib (an extra: `onnxprune[plots]`).

One way for every `--plot`: `require_matplotlib` before a long run, so a missing matplotlib is a one-line
error (exit 2) at once rather than after the work; `new_figure` draws on a plain `Figure` (no pyplot: a
library call must not switch the backend of a notebook that imports us); `save_png` writes the file
atomically, with every artist outside the axes (legends) inside the image. Ids are cut by
`tables.display_id`, as the tables cut them off a terminal.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from onnxprune.atomic import write_bytes
from onnxprune.errors import OnnxPruneError
from onnxprune.tables import display_id

if TYPE_CHECKING:
    from onnxprune.pruning.inspect import LayerChannels

MISSING = "--plot needs matplotlib: pip install 'onnxprune[plots]'"
DPI = 110
MAX_HEIGHT = 120  # inches: a model with thousands of layers gets thinner bars, not an image too big to open


def require_matplotlib() -> None:
    """Refuse at once (exit 2, one line) when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise OnnxPruneError(MISSING)


def new_figure(width: float, height: float):
    """An empty matplotlib `Figure` of that size in inches."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise OnnxPruneError(MISSING) from None
    return Figure(figsize=(width, height))


def save_png(fig, path: str | Path, outside: Sequence = ()) -> None:
    """Write `fig` to `path` atomically; `outside`: artists beyond the axes that must stay in the image."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", bbox_extra_artists=list(outside) or None)
    fig.clf()
    write_bytes(path, buffer.getvalue())


def channels_figure(layers: list[LayerChannels], title: str = ""):
    """Horizontal bars, one per layer in graph order from the top: its output channels before pruning
    (gray) and kept (blue); returns the figure and its legend."""
    n = max(len(layers), 1)
    step = min(0.16, MAX_HEIGHT / n)
    fig = new_figure(9, 1.4 + step * n)
    ax = fig.subplots()
    ys = list(range(len(layers)))
    ax.barh(ys, [layer.before for layer in layers], color="0.85", height=0.8, label="before")
    ax.barh(ys, [layer.after for layer in layers], color="C0", height=0.8, label="kept")
    ax.set_yticks(ys, [display_id(layer.node) for layer in layers], fontsize=7 if step >= 0.12 else 4)
    ax.set_ylim(len(layers) - 0.5, -0.5)  # the first layer on top, as in `inspect`
    ax.set_xlabel("output channels")
    ax.set_title(title or "Output channels per layer", fontsize="medium")
    ax.grid(True, axis="x", alpha=0.3)
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig, legend


def plot_channels(layers: list[LayerChannels], path: str | Path, title: str = "") -> None:
    """`prune --plot`: the pruned model's output channels per layer, before and after, as a PNG."""
    fig, legend = channels_figure(layers, title)
    save_png(fig, path, [legend])
