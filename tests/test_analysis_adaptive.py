"""Adaptive analysis: rows measured only as far as allocation reads them, entries stopped early over
batches, the budget, `--samples`; and the plans `prune --sens` makes from such a table."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

import onnxprune
from onnxprune.analysis.adaptive import bounds, cover_threshold, decided, pending, undecided
from onnxprune.analysis.analyze import AnalyzeOptions, analyze
from onnxprune.analysis.sequential import StopRule, Tally
from onnxprune.analysis.table import SensitivityTable, sensitivity_ratios
from onnxprune.cli import main
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.plan import Planner, candidate_groups
from onnxprune.pruning.prune import PruneOptions, make_plan
from tests.conftest import FIXTURES, fixture_path

DIGITS = str(fixture_path("digits_cnn"))
DIGITS_TEST = FIXTURES / "digits_test.npz"
KEYS = ["0.2", "0.4", "0.6", "0.8"]


def test_a_row_stops_at_the_first_cell_past_the_cap() -> None:
    assert pending({}, KEYS, 1.0, 0.3) == KEYS
    assert pending({"0.2": 0.9}, KEYS, 1.0, 0.3) == ["0.4", "0.6", "0.8"]
    assert pending({"0.2": 0.9, "0.4": 0.6}, KEYS, 1.0, 0.3) == []  # lost 0.4 > 0.3: nothing after is read
    assert pending({"0.2": None}, KEYS, 1.0, 0.3) == []  # no finite metric: the worst
    assert pending({k: 0.95 for k in KEYS}, KEYS, 1.0, 0.3) == []  # complete


def test_decided_is_the_smallest_loss_where_an_unfinished_row_stops() -> None:
    rows = {"a": {k: 0.99 for k in KEYS}, "b": {"0.2": 0.9, "0.4": 0.5}, "c": {"0.2": 0.95, "0.4": 0.6}}
    assert decided(rows, KEYS, 1.0) == pytest.approx(0.4)  # c stops at a loss of 0.4, b at 0.5
    assert decided({"a": rows["a"]}, KEYS, 1.0) == math.inf
    assert decided({**rows, "d": {}}, KEYS, 1.0) == 0.0  # a row with nothing measured decides nothing
    assert bounds(rows, KEYS, 1.0, 0.3) == {"b": {"0.6": 0.5, "0.8": 0.5}, "c": {"0.6": 0.6, "0.8": 0.6}}
    assert bounds(rows, KEYS, 1.0, 0.45) == {"b": {"0.6": 0.5, "0.8": 0.5}}  # c did not pass 0.45: not "worse"


def test_allocation_never_goes_past_the_last_measured_ratio() -> None:
    model = onnxprune.load(DIGITS)
    groups = candidate_groups(model, find_groups(model), [])
    full = {g.id: {k: 1.0 - 0.01 * i for i, k in enumerate(KEYS)} for g in groups}
    cut = dict(full)
    cut[groups[0].id] = {"0.2": 0.99, "0.4": 0.5}
    table = SensitivityTable("fidelity", 1.0, cut, {g.id: g.channels for g in groups},
                             worse_than={groups[0].id: {"0.6": 0.5, "0.8": 0.5}}, decided_macs=0.5)
    again = SensitivityTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again.worse_than == table.worse_than and again.decided_macs == 0.5
    ratios = sensitivity_ratios(again, groups)(1.0)
    assert ratios[groups[0].id] == pytest.approx(0.4) and ratios[groups[1].id] == pytest.approx(0.8)
    with pytest.raises(onnxprune.OnnxPruneError, match="worse_than"):
        SensitivityTable.from_dict({**table.to_dict(), "worse_than": {groups[0].id: {"0.2": 0.5}}})  # measured


def test_stop_rule() -> None:
    rule = StopRule()
    steady = np.full(16, 0.2) + np.linspace(-1e-3, 1e-3, 16)
    assert rule.settled(Tally().add(steady[:8]), 64)  # a tight estimate at the 8 samples it waits for
    assert not rule.settled(Tally().add(steady[:4]), 64)
    noisy = np.random.default_rng(0).uniform(0, 1, 16)
    assert not rule.settled(Tally().add(noisy), 64)
    assert rule.settled(Tally().add(noisy), 16)  # every sample seen: exact
    assert not rule.settled(Tally().add(np.zeros(16)), 450, discrete=True)  # no changed decision in 16 proves nothing
    assert rule.settled(Tally().add(np.zeros(16)), 450)  # a continuous metric that did not move at all


def test_a_tally_goes_on_where_it_stopped() -> None:
    """Two halves added one after the other are the whole: the half-width is that of numpy's sd, and 0
    once every sample is seen."""
    losses = np.random.default_rng(1).uniform(0, 0.3, 24)
    tally = Tally().add(losses[:8]).add(losses[8:16])
    assert tally.n == 16 and tally.mean == pytest.approx(np.mean(losses[:16]))
    sd = np.std(losses[:16], ddof=1)
    assert tally.half_width(24) == pytest.approx(2 * sd / 4 * np.sqrt(8 / 23))
    assert tally.add(losses[16:]).half_width(24) == 0.0
    assert Tally.from_list(tally.to_list()) == tally


@pytest.mark.parametrize("metric", [None, "fidelity"])
def test_the_plans_are_the_full_tables_up_to_decided_macs(metric) -> None:
    """With the whole data in one batch no entry stops early, so the cells are the full table's: the
    adaptive table leaves cells out, yet prune --sens makes the same plans at every target it decides."""
    model = onnxprune.load(DIGITS)
    common = {"data": str(DIGITS_TEST), "metric": metric, "batch_size": 450}
    full = analyze(model, AnalyzeOptions(exact=True, **common))
    adaptive = analyze(model, AnalyzeOptions(**common))
    assert adaptive.evaluated <= full.evaluated
    if metric is None:  # top-1 of the digits CNN: rows collapse early
        assert adaptive.evaluated < full.evaluated and adaptive.cost < full.cost
        assert any(adaptive.table.worse_than.values())
    assert adaptive.table.decided_macs >= 0.6
    for gid, row in adaptive.table.groups.items():
        for key, value in row.items():
            assert value == pytest.approx(full.table.groups[gid][key], abs=1e-12)
        for key, bound in adaptive.table.worse_than.get(gid, {}).items():
            assert full.table.groups[gid][key] is not None  # digits: every cell is finite
            assert max(full.table.baseline - full.table.groups[gid][k] for k in full.table.groups[gid]
                       if float(k) <= float(key)) >= adaptive.table.baseline - bound - 1e-12
    for target in (0.2, 0.35, 0.5):
        plans = [make_plan(onnxprune.load(DIGITS), PruneOptions(ratio=target, sensitivity=t, mode="sparse"))
                 for t in (full.table, adaptive.table)]
        assert {g: list(p.removed) for g, p in plans[0].groups.items()} == \
               {g: list(p.removed) for g, p in plans[1].groups.items()}, target


def test_undecided_cells_are_those_whose_spread_could_change_a_count() -> None:
    """At the plan's threshold a count read off cells at either end of their intervals must agree; where
    it cannot, the cells between the two extremes' crossings are named, and only estimated ones."""
    model = onnxprune.load(DIGITS)
    groups = candidate_groups(model, find_groups(model), [])
    planner = Planner(model, find_groups(model), {g.id: np.arange(g.channels, dtype=float) for g in groups})
    rows = {g.id: {k: 1.0 - 0.1 * (i + 1) * (j + 1) for i, k in enumerate(KEYS)} for j, g in enumerate(groups)}
    table = SensitivityTable("fidelity", 1.0, rows, {g.id: g.channels for g in groups})
    assert undecided(table, groups, planner, [0.3], lambda g, k: 0.0) == set()  # every cell exact
    wide = undecided(table, groups, planner, [0.3], lambda g, k: 0.05)
    assert wide and {k for _, k in wide} <= set(KEYS)
    threshold = cover_threshold(table, groups, planner, 0.3)
    for gid, key in wide:  # only cells up to the first one that lies above the threshold even when read low
        losses = [1.0 - rows[gid][k] for k in KEYS]
        assert all(loss - 0.05 <= threshold * 1.01 for loss in losses[:KEYS.index(key)])
    only = undecided(table, groups, planner, [0.3], lambda g, k: 0.05 if g == groups[0].id else 0.0)
    assert {g for g, _ in only} <= {groups[0].id}


@pytest.mark.parametrize("metric", [None, "agreement"])
def test_refined_plans_are_the_full_tables(metric) -> None:
    """Early-stopped entries leave the digits CNN's plans one step off the full table's at some targets;
    refining at 30% makes the plan there the full table's, whatever the rounds' sampling did."""
    model = onnxprune.load(DIGITS)
    full = analyze(model, AnalyzeOptions(data=str(DIGITS_TEST), metric=metric, exact=True))

    def plan(table, target):
        made = make_plan(onnxprune.load(DIGITS), PruneOptions(ratio=target, sensitivity=table, mode="sparse"))
        return {g: list(p.removed) for g, p in made.groups.items()}

    rough = analyze(model, AnalyzeOptions(data=str(DIGITS_TEST), metric=metric, plans=[]))
    refined = analyze(model, AnalyzeOptions(data=str(DIGITS_TEST), metric=metric, plans=[0.3]))
    assert any(plan(rough.table, t) != plan(full.table, t) for t in (0.1, 0.3, 0.4, 0.5))  # the test can fail
    assert plan(refined.table, 0.3) == plan(full.table, 0.3)
    assert rough.cost < refined.cost < full.cost


def test_early_stopping_spends_less_than_the_whole_data() -> None:
    model = onnxprune.load(DIGITS)
    full = analyze(model, AnalyzeOptions(data=str(DIGITS_TEST), metric="fidelity", exact=True, ratios=[0.3, 0.6]))
    quick = analyze(model, AnalyzeOptions(data=str(DIGITS_TEST), metric="fidelity", batch_size=450, ratios=[0.3, 0.6]))
    early = analyze(model, AnalyzeOptions(data=str(DIGITS_TEST), metric="fidelity", ratios=[0.3, 0.6]))
    assert early.cost < quick.cost
    for gid, row in early.table.groups.items():  # each estimate within what the rule asks, or close to it
        for key, value in row.items():
            loss, exact = 1 - value, 1 - full.table.groups[gid][key]
            assert abs(loss - exact) <= 0.25 * exact + 0.01, (gid, key, loss, exact)


def test_budget_and_samples(tmp_path) -> None:
    warnings: list[str] = []
    model = onnxprune.load(DIGITS)
    result = analyze(model, AnalyzeOptions(data=str(DIGITS_TEST), budget=1e-9, samples=100), warn=warnings.append)
    assert result.table.data["samples"] == 100
    assert result.evaluated == 1  # the budget ran out with the first entry
    assert any("budget" in w and "not measured" in w for w in warnings), warnings
    with pytest.warns(UserWarning, match="decides plans up to 0% of MACs"):
        plan = make_plan(onnxprune.load(DIGITS), PruneOptions(ratio=0.3, sensitivity=result.table, mode="sparse"))
    assert set(plan.groups) <= set(result.table.groups)  # groups the table does not name stay whole


def test_cli_adaptive_table_and_progress(tmp_path, capsys) -> None:
    out = tmp_path / "sens.json"
    assert main(["analyze", DIGITS, "--data", str(DIGITS_TEST), "--cache", str(tmp_path / "c"), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    table = json.loads(out.read_text())
    assert table["decided_macs"] >= 0.6 and table["worse_than"]
    for gid, row in table["worse_than"].items():
        assert not set(row) & set(table["groups"][gid])
    assert "setup: evaluating the unpruned model" in captured.err
    assert re.search(r"[0-9] (entries/s|s/entry)", captured.err), captured.err  # a rate from the first entry on
    assert "not measured, worse than" in captured.out and "cost" in captured.err
    assert main(["prune", DIGITS, "--ratio", "0.9", "--sens", str(out), "-o", str(tmp_path / "p.onnx")]) == 0
    assert "decides plans up to" in capsys.readouterr().err
    assert main(["analyze", DIGITS, "--cover", "1", "--cache", str(tmp_path / "c")]) == 2
    assert main(["analyze", DIGITS, "--plans", "0.7", "--cache", str(tmp_path / "c")]) == 2  # past --cover 0.6
    assert main(["analyze", DIGITS, "--plans", "half", "--cache", str(tmp_path / "c")]) == 2
    assert "--plans" in capsys.readouterr().err
