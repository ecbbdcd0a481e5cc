"""`prune --sens`: per-group ratios from the table, bisected to the MACs target."""

from __future__ import annotations

import json

import numpy as np
import pytest

import onnxprune
from onnxprune.analysis.analyze import AnalyzeOptions, analyze
from onnxprune.analysis.table import SensitivityTable, sensitivity_ratios
from onnxprune.cli import main
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.runtime import session
from onnxprune.pruning.channels import Group, find_groups
from onnxprune.pruning.prune import PruneOptions, prune
from tests.conftest import FIXTURES, fixture_path

DIGITS = fixture_path("digits_cnn")


def group(gid: str, channels: int = 16) -> Group:
    return Group(gid, channels, [])


def table(rows: dict[str, list[float]], baseline: float = 1.0) -> SensitivityTable:
    ratios = [0.1 * (k + 1) for k in range(9)]
    groups = {gid: {repr(round(r, 6)): m for r, m in zip(ratios, metrics)} for gid, metrics in rows.items()}
    return SensitivityTable("top1", baseline, groups)


def test_ratios_follow_the_loss_threshold() -> None:
    rows = {"robust": [1.0] * 5 + [0.99, 0.98, 0.9, 0.5],
            "fragile": [0.99, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],
            "noisy": [1.0, 0.98, 0.7, 0.99, 0.99, 0.99, 0.6, 0.5, 0.4]}
    ratios_at = sensitivity_ratios(table(rows), [group(g) for g in rows])
    assert ratios_at(0.0) == {g: 0.0 for g in rows}
    assert ratios_at(1.0) == {g: pytest.approx(0.9) for g in rows}
    previous = ratios_at(0.0)
    for knob in np.linspace(0, 1, 101)[1:]:
        now = ratios_at(float(knob))
        assert all(now[g] >= previous[g] - 1e-12 for g in rows)  # monotone: the planner can bisect
        previous = now
    at = ratios_at(0.02 / 0.8)  # threshold: a loss of 0.02
    assert at["robust"] == pytest.approx(0.7, abs=1e-4) and at["fragile"] < 0.2
    assert at["noisy"] == pytest.approx(0.2, abs=1e-3)  # the good 0.4-0.6 after a bad 0.3 do not count


def test_equally_tolerant_groups_are_pruned_alike() -> None:
    rows = {"a": [1.0] * 6 + [0.5] * 3, "b": [1.0] * 6 + [0.4] * 3}
    ratios_at = sensitivity_ratios(table(rows), [group("a"), group("b")])
    for knob in (1e-8, 1e-7, 3e-7):
        ratios = ratios_at(knob)
        assert ratios["a"] == pytest.approx(ratios["b"]) and 0 < ratios["a"] < 0.6


def test_groups_unknown_to_the_table_stay_whole_and_mismatches_are_refused() -> None:
    rows = {"a": [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]}
    ratios = sensitivity_ratios(table(rows), [group("a"), group("new")])(1.0)
    assert ratios == {"a": pytest.approx(0.9)}
    with pytest.raises(OnnxPruneError, match="none of this model's prunable groups"):
        sensitivity_ratios(table(rows), [group("other")])
    described = table(rows)
    described.channels = {"a": 32}
    with pytest.raises(OnnxPruneError, match="has 32 channels there but 16"):
        sensitivity_ratios(described, [group("a", 16)])


@pytest.mark.parametrize("content,message", [
    ("{", "not a JSON sensitivity table"),
    ('{"metric": "top1", "groups": {}}', "needs 'metric', 'baseline' and 'groups'"),
    ('{"metric": "top1", "baseline": 1, "groups": {"a": {"1.5": 0.3}}}', "ratio 1.5 is not in (0, 1)"),
    ('{"metric": "top1", "baseline": 1, "groups": {"a": {"0.5": "x"}}}', "is not a number"),
])
def test_bad_tables_are_refused(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "sens.json"
    path.write_text(content)
    with pytest.raises(OnnxPruneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SensitivityTable.load(path)


@pytest.fixture(scope="module")
def digits_table(tmp_path_factory) -> str:
    result = analyze(onnxprune.load(DIGITS), AnalyzeOptions(data=str(FIXTURES / "digits_train.npz")))
    path = tmp_path_factory.mktemp("sens") / "sens.json"
    result.table.save(path)
    return str(path)


def test_prune_sens_lands_on_the_target_and_records_ratios(digits_table, tmp_path) -> None:
    for target in (0.5, 0.7):
        out, plan_path = tmp_path / "slim.onnx", tmp_path / "plan.json"
        assert main(["prune", str(DIGITS), "--ratio", str(target), "--sens", digits_table, "-o", str(out),
                     "--plan-out", str(plan_path)]) == 0
        plan = json.loads(plan_path.read_text())
        assert abs(plan["macs_after"] / plan["macs_before"] - (1 - target)) <= 0.01
        ratios = {gid: part["ratio"] for gid, part in plan["groups"].items()}
        assert len(set(ratios.values())) > 1  # not uniform
        for part in plan["groups"].values():
            assert part["ratio"] == len(part["removed"]) / part["channels"]


def test_prune_sens_respects_exclude_and_round_to(digits_table) -> None:
    model = onnxprune.load(DIGITS)
    groups = [g.id for g in find_groups(model) if g.prunable]
    result = prune(model, PruneOptions(ratio=0.4, sensitivity=SensitivityTable.load(digits_table), round_to=8,
                                       exclude=["/features/features.6/Conv"]))
    assert groups[2] not in result.plan.groups
    for part in result.plan.groups.values():
        assert (part.channels - len(part.removed)) % 8 == 0


def test_sensitivity_guided_beats_uniform_on_digits(digits_table) -> None:
    """The reason for the table: at the same MACs, guided allocation keeps more accuracy."""
    with np.load(FIXTURES / "digits_test.npz") as npz:
        x, labels = npz["input"], npz["labels"]

    def accuracy(options: PruneOptions) -> float:
        pruned = prune(onnxprune.load(DIGITS), options).model
        return float(np.mean(session(pruned).run(None, {"input": x})[0].argmax(1) == labels))

    sens = SensitivityTable.load(digits_table)
    for target in (0.5, 0.7):
        assert accuracy(PruneOptions(ratio=target, sensitivity=sens)) > accuracy(PruneOptions(ratio=target)) + 0.1


def test_the_table_is_one_type_from_file_to_allocation(tmp_path) -> None:
    """save -> load gives the same table; prune takes it as it is (or as its JSON dict, checked)."""
    rows = {"a": [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]}
    original = table(rows)
    original.channels = {"a": 16}
    original.save(tmp_path / "sens.json")
    loaded = SensitivityTable.load(tmp_path / "sens.json")
    assert (loaded.metric, loaded.baseline, loaded.groups, loaded.channels) == \
        (original.metric, original.baseline, original.groups, original.channels)
    assert isinstance(PruneOptions(ratio=0.5, sensitivity=original.to_dict()).sensitivity, SensitivityTable)
    with pytest.raises(OnnxPruneError, match="needs 'metric', 'baseline' and 'groups'"):
        PruneOptions(ratio=0.5, sensitivity={"groups": {}})
