"""What people look at (issue 12, items 4 and 5): progress by rich on a terminal and plain lines elsewhere,
tables fitted to the terminal that cut ids only as `display_id` does, and `prune --plot`."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import onnxprune
from onnxprune.analysis.table import SensitivityTable, format_table
from onnxprune.cli import main
from onnxprune.graph.load import from_proto
from onnxprune.progress import Progress, ProgressBar
from onnxprune.pruning.inspect import channels_after, layer_axes
from onnxprune.tables import MIN_ID_WIDTH, display_id
from tests.conftest import fixture_path

RESIDUAL = str(fixture_path("residual"))
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _last_frame(text: str) -> list[str]:
    """The lines rich drew last (after its last erase of a line), without control codes."""
    return [line for line in ESCAPE.sub("", text.rpartition("\x1b[2K")[2]).split("\n") if line.strip()]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _report_two_stages(bar: ProgressBar) -> None:
    for stage in ("choose channels", "reconstruct"):
        for k in range(11):
            bar.update(Progress(k, 10, k, 0.5 * k, stage))


def test_progress_off_a_terminal_is_plain_lines() -> None:
    """A log gets whole lines, no carriage returns or control codes: one as each stage starts and one per
    tenth, each with the count, the rate and the ETA."""
    stream = io.StringIO()
    with ProgressBar(stream, label="prune", unit="layers") as bar:
        _report_two_stages(bar)
    text = stream.getvalue()
    assert "\r" not in text and not ESCAPE.search(text) and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 22 and not any("setting up" in line for line in lines)
    assert lines[0].startswith("choose channels [") and lines[11].startswith("reconstruct [")
    assert lines[5].endswith("5/10 layers  0:02 elapsed, 2.0 layers/s, ETA 0:02")
    assert lines[0].endswith("0/10 layers  0:00 elapsed, ? layers/s, ETA ?")


def test_progress_on_a_terminal_is_rich_with_a_setup_phase(monkeypatch) -> None:
    """On a terminal rich draws the bars: a setup line first, then one bar per stage with rate and ETA."""
    monkeypatch.setenv("COLUMNS", "100")  # rich reads the width from it (a fake terminal has none)
    stream = Terminal()
    with ProgressBar(stream, label="prune", unit="layers") as bar:
        _report_two_stages(bar)
    text = stream.getvalue()
    assert ESCAPE.search(text)  # drawn in place
    final = _last_frame(text)
    assert len(final) == 3
    assert "prune: set up" in final[0]
    assert "choose channels" in final[1] and "10/10 layers" in final[1] and "2.0 layers/s" in final[1]
    assert "reconstruct" in final[2] and "ETA 0:00" in final[2]


def test_progress_on_a_terminal_leaves_no_setup_line_when_nothing_came() -> None:
    """A run that fails before its first report (bad data) leaves only its error line behind."""
    stream = Terminal()
    with pytest.raises(RuntimeError), ProgressBar(stream, label="prune", unit="layers"):
        raise RuntimeError("bad data")
    assert ESCAPE.search(stream.getvalue()) and _last_frame(stream.getvalue()) == []


def _long_ids_table(count: int = 12) -> SensitivityTable:
    groups = {f"/model/encoder/layers.{i}/block/feed_forward/intermediate_dense_{i}/MatMul":
              {"0.2": 1 - 0.001 * i, "0.5": 1 - 0.01 * i} for i in range(count)}
    return SensitivityTable("fidelity", 1.0, groups, {gid: 64 for gid in groups})


def _shown_ids(text: str, width: int | None = None) -> list[str]:
    rows = text.splitlines()[2:]  # the title, the header
    if width is not None:
        assert all(len(row) <= width for row in rows), "the table runs past the terminal"
    return [row.split()[0] for row in rows]


@pytest.mark.parametrize("width", [60, 80, 100])
def test_a_table_fitted_to_a_narrow_terminal_cuts_ids_as_display_id(width: int) -> None:
    """Cut to the terminal, each id is `display_id` of the JSON id (its end, "…" first: where exported
    names differ), in the JSON's order: never rich's own cut at the end."""
    table = _long_ids_table()
    shown = _shown_ids(format_table(table, width), width)
    ids = list(table.to_dict()["groups"])
    cut = len(shown[0])
    assert MIN_ID_WIDTH <= cut < len(ids[0])
    assert shown == [display_id(gid, cut) for gid in ids]
    assert len(set(shown)) == len(ids)  # still tells them apart


def test_a_wide_terminal_shows_whole_ids_and_a_pipe_cuts_them_as_the_plot() -> None:
    table = _long_ids_table()
    ids = list(table.to_dict()["groups"])
    assert _shown_ids(format_table(table, 200), 200) == ids
    assert _shown_ids(format_table(table)) == [display_id(gid) for gid in ids]  # not a terminal: as the plot


def test_inspect_on_a_narrow_terminal(monkeypatch, capsys) -> None:
    """The CLI fits `inspect` to the terminal: every layer and group shown is `display_id` of its id in
    `--json`, in order, and the rows keep within the width."""
    assert main(["inspect", RESIDUAL, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    monkeypatch.setattr("onnxprune.tables.terminal_width", lambda stream: 72)
    assert main(["inspect", RESIDUAL]) == 0
    text = capsys.readouterr().out
    tables = text.split("\n\n")[:2]
    for part, ids in zip(tables, ([layer["node"] for layer in report["layers"]], [g["id"] for g in report["groups"]])):
        lines = part.splitlines()
        head = next(k for k, line in enumerate(lines) if line.startswith(("layer", "group")))  # a header may wrap
        shown = [row.split()[0] for row in lines[head + 1:] if not row.startswith((" ", "("))]
        assert len(shown) == len(ids) and all(s == display_id(i, len(s)) for s, i in zip(shown, ids))
        assert any(s.startswith("…") for s in shown)  # 72 columns do cut some
        assert all(len(line) <= 72 for line in part.splitlines() if not line.startswith("("))


def test_prune_plot_draws_every_layer_before_and_after(tmp_path, capsys) -> None:
    """`prune --plot`: a PNG whose bars are each layer's output channels before pruning and in the slim
    model written beside it."""
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from onnxprune.plots import channels_figure

    out, png = tmp_path / "slim.onnx", tmp_path / "channels.png"
    assert main(["prune", RESIDUAL, "--ratio", "0.4", "-o", str(out), "--plot", str(png)]) == 0
    assert f"wrote {png}" in capsys.readouterr().err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(png).shape[:2]
    assert width > 600 and height > 200

    layers = _channels(RESIDUAL, "dims", 0.4)
    assert [(layer.node, layer.after) for layer in layers] == [(a.node, a.channels) for a in layer_axes(onnxprune.load(out))]
    fig, _ = channels_figure(layers)
    ax = fig.axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == [layer.before for layer in layers] + [layer.after for layer in layers]
    assert [t.get_text() for t in ax.get_yticklabels()] == [display_id(layer.node) for layer in layers]


def _channels(path: str, attention: str, ratio: float) -> list:
    model = onnxprune.load(path)
    groups = onnxprune.find_groups(model, attention)
    before = layer_axes(model)
    result = onnxprune.prune(model, onnxprune.PruneOptions(ratio=ratio, attention=attention), groups=groups)
    layers = channels_after(before, groups, result.plan)
    slim = layer_axes(from_proto(result.model))
    assert [(layer.node, layer.after) for layer in layers] == [(a.node, a.channels) for a in slim]
    assert any(layer.after < layer.before for layer in layers) and any(layer.after == layer.before for layer in layers)
    return layers


@pytest.mark.parametrize(("name", "attention"), [("llama_block", "heads"), ("bert_block", "dims"), ("densenet", "dims"),
                                                 ("c2f", "dims"), ("lstm", "dims")])
def test_the_plots_after_is_the_slim_models_channels(name: str, attention: str) -> None:
    """What `prune --plot` draws as kept is what the slim model has: attention heads, concats, recurrent
    hidden units; some layers keep all (the picture is not all blue)."""
    _channels(str(fixture_path(name)), attention, 0.3)


def test_prune_plot_without_matplotlib_is_one_line_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "slim.onnx"
    assert main(["prune", RESIDUAL, "--ratio", "0.4", "-o", str(out), "--plot", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err == "onnxprune: error: --plot needs matplotlib: pip install 'onnxprune[plots]'\n"
    assert not out.exists()


def test_prune_plot_never_overwrites_the_model(tmp_path, capsys) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(Path(RESIDUAL).read_bytes())
    assert main(["prune", str(model), "--ratio", "0.4", "-o", str(tmp_path / "o.onnx"), "--plot", str(model)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert np.array_equal(np.frombuffer(model.read_bytes(), np.uint8), np.fromfile(RESIDUAL, np.uint8))
