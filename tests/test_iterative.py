"""The prune -> fine-tune loop: schedule, trials, back-off, checkpoints and resume (also after SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune
from onnxprune.adapters import MasksLostWarning
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.load import from_proto
from onnxprune.loop.config import Analysis, FineTune, PruneSettings, RunConfig, Schedule, load_config
from onnxprune.loop.iterate import run
from onnxprune.loop.result import format_table
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.cost import layer_costs, totals
from onnxprune.pruning.masks import Masks, masks_from_plan, weight_arrays
from onnxprune.pruning.prune import PruneOptions, make_plan
from onnxprune.pruning.surgery import sparse
from onnxprune.pruning.transform import transform
from tests.conftest import ROOT, fixture_path, run_model

BASELINE = fixture_path("digits_cnn")


class FakeAdapter:
    """A framework stand-in with a known answer: 'training' scales every weight by 1.01 (zeros stay zero
    unless `drift`), and the metric is 100 - 20 x (fraction of MACs removed) + the trial's `gain`."""

    def __init__(self, log: str | None = None, delay: float = 0.0, drift: bool = False, fail_at: int = 0):
        self.log, self.delay, self.drift, self.fail_at = log, delay, drift, fail_at
        self.calls = 0

    def fine_tune(self, model, masks, settings):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the framework crashed")
        tuned = onnx.ModelProto()
        tuned.CopyFrom(model)
        for init in tuned.graph.initializer:
            values = numpy_helper.to_array(init)
            if values.dtype == np.float32 and values.ndim:
                values = values * np.float32(1.01) + np.float32(0.01 if self.drift else 0.0)
                init.CopyFrom(numpy_helper.from_array(values, init.name))
        del tuned.metadata_props[:]
        tuned.metadata_props.add(key="gain", value=str(settings.get("gain", 0.0)))
        time.sleep(self.delay)
        if self.log:
            with open(self.log, "a") as handle:
                handle.write(json.dumps({"settings": settings, "macs_removed": _removed(model)}) + "\n")
        return tuned

    def evaluate(self, model):
        gain = float({p.key: p.value for p in model.metadata_props}.get("gain", 0.0))
        return 100 - 20 * _removed(model) + gain


def _removed(model: onnx.ModelProto) -> float:
    return round(transform(from_proto(model), verify=False).plan.macs_ratio, 6)


def make_fake_adapter(log: str | None = None, delay: float = 0.0) -> FakeAdapter:
    """The factory the command-line tests name in their configs."""
    return FakeAdapter(log, delay)


def _config(ratios, tolerance=100.0, trials=({},), **schedule) -> RunConfig:
    return RunConfig(schedule=Schedule(ratios=list(ratios), tolerance=tolerance, **schedule),
                     finetune=FineTune(settings={"epochs": 1}, trials=[dict(t) for t in trials]))


def test_schedule_steps() -> None:
    assert Schedule(target=0.5, step=0.2).steps() == [0.2, 0.4, 0.5]
    assert Schedule(target=0.6, step=0.2).steps() == [0.2, 0.4, 0.6]
    assert Schedule(ratios=[0.3, 0.7]).steps() == [0.3, 0.7]
    for bad, message in [(Schedule(), "give target"), (Schedule(ratios=[0.5, 0.3]), "must rise"),
                         (Schedule(target=1.5), "not in"), (Schedule(target=0.5, compare_to="x"), "compare_to")]:
        with pytest.raises(OnnxPruneError, match=message):
            bad.check()


def test_run_reaches_the_target_with_the_best_trials(tmp_path) -> None:
    config = _config([0.3, 0.5], trials=[{"gain": 0.0}, {"gain": 0.5}, {"gain": 0.2}])
    result = run(config, FakeAdapter(), tmp_path, BASELINE, progress=lambda _: None)
    assert result.stopped is None
    assert [r.accepted for r in result.rounds] == [True, True]
    assert [r.best_trial for r in result.rounds] == [2, 2]
    assert result.rounds[1].settings == {"epochs": 1, "gain": 0.5}
    for row, asked in zip(result.rounds, [0.3, 0.5]):
        assert row.ratio_asked == asked and abs(row.macs_removed - asked) < 0.02
        assert row.metric_before == pytest.approx(100 - 20 * row.macs_removed + (0.5 if row.round > 1 else 0))
        assert row.metric_after == pytest.approx(100 - 20 * row.macs_removed + 0.5)
    # the dense model is what the last round's MACs promised, and computes what its sparse model computes
    dense = onnx.load(result.dense)
    assert totals(layer_costs(from_proto(dense)))[0] == result.macs == result.rounds[-1].macs
    assert result.macs_removed == pytest.approx(result.rounds[-1].macs_removed)
    best = onnx.load(tmp_path / "round-02" / "trial-2.onnx")
    x = {"input": np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run_model(dense, x)[0], run_model(best, x)[0], rtol=1e-4, atol=1e-5)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rounds"][1]["best_trial"] == 2 and report["macs"] == result.macs
    table = format_table(result)
    assert "accepted" in table and "50.0%" in table and result.dense in table


def test_back_off_retries_with_a_smaller_step_then_stops(tmp_path) -> None:
    # metric = 100 - 20 r: a tolerance of 9 accepts r <= 0.45; 0.6 fails, its half step 0.4 passes,
    # 0.6 fails again and one smaller step is all max_backoffs allows for that schedule entry.
    config = _config([0.2, 0.6], tolerance=9.0, max_backoffs=1)
    result = run(config, FakeAdapter(), tmp_path, BASELINE, progress=lambda _: None)
    rows = [(round(r.ratio_asked, 6), r.accepted, r.backoff) for r in result.rounds]
    first = result.rounds[0].macs_removed
    assert rows == [(0.2, True, 0), (0.6, False, 0), (round(first + (0.6 - first) / 2, 6), True, 1), (0.6, False, 1)]
    assert result.stopped and "(1 smaller step tried)" in result.stopped and "kept round 3" in result.stopped
    assert result.macs_removed == pytest.approx(result.rounds[2].macs_removed)
    assert 0.35 < result.macs_removed < 0.45
    assert "stopped early" in format_table(result)


def test_no_round_recovers_keeps_the_baseline(tmp_path) -> None:
    config = _config([0.5], tolerance=1.0, max_backoffs=0)
    result = run(config, FakeAdapter(), tmp_path, BASELINE, progress=lambda _: None)
    assert [r.accepted for r in result.rounds] == [False]
    assert "kept round 0 (the baseline)" in result.stopped
    assert result.macs_removed == 0.0 and result.metric == result.baseline_metric


def test_unreachable_target_is_reported(tmp_path) -> None:
    # excluding the last conv keeps two of the three conv groups whole (it reads the second one's output):
    # at most about a third of the MACs can go
    config = _config([0.2, 0.5, 0.6])
    config.prune = PruneSettings(exclude=["/features/features.6/*"])  # also touches features.3 output
    result = run(config, FakeAdapter(), tmp_path, BASELINE, progress=lambda _: None)
    assert [r.ratio_asked for r in result.rounds] == [0.2, 0.5]
    assert 0.25 < result.macs_removed < 0.4
    assert result.stopped.startswith("no more channels can be removed") and "not reachable" in result.stopped


def test_bad_run_arguments_are_refused(tmp_path) -> None:
    config = _config([0.2])
    config.model, config.output = str(BASELINE), str(BASELINE)
    with pytest.raises(OnnxPruneError, match="would overwrite the starting model"):
        run(config, FakeAdapter(), tmp_path, progress=lambda _: None)
    with pytest.raises(OnnxPruneError, match="plain values"):
        run(_config([0.2], trials=[{"lr": object()}]), FakeAdapter(), tmp_path, BASELINE)
    with pytest.raises(OnnxPruneError, match="no baseline model"):
        run(_config([0.2]), FakeAdapter(), tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == [tmp_path / "empty" / ".lock"]  # nothing recorded


def test_compare_to_previous_round(tmp_path) -> None:
    # each round loses 20 x 0.2 = 4 points against the round before: within 5 of the previous round,
    # but the second round is 8 below the baseline
    kwargs = {"tolerance": 5.0, "max_backoffs": 0}
    previous = run(_config([0.2, 0.4], compare_to="previous", **kwargs), FakeAdapter(), tmp_path / "a",
                   BASELINE, progress=lambda _: None)
    assert [r.accepted for r in previous.rounds] == [True, True]
    baseline = run(_config([0.2, 0.4], **kwargs), FakeAdapter(), tmp_path / "b", BASELINE, progress=lambda _: None)
    assert [r.accepted for r in baseline.rounds] == [True, False]


def test_reanalysis_per_round_allocates_by_sensitivity(tmp_path) -> None:
    pytest.importorskip("onnxprune.analysis.analyze")
    config = _config([0.3, 0.5])
    config.prune = PruneSettings(reanalyze=True)
    config.analyze = Analysis(data=str(fixture_path("digits_test").with_suffix(".npz")), ratios=[0.25, 0.5, 0.75])
    result = run(config, FakeAdapter(), tmp_path, BASELINE, progress=lambda _: None)
    assert [abs(r.macs_removed - a) < 0.02 for r, a in zip(result.rounds, [0.3, 0.5])] == [True, True]
    plans = [json.loads((tmp_path / f"round-0{n}" / "plan.json").read_text())["groups"] for n in (1, 2)]
    for n in (1, 2):
        assert (tmp_path / f"round-0{n}" / "analysis").is_dir()
    ratios = {gid: part["ratio"] for gid, part in plans[1].items()}
    assert len(set(ratios.values())) > 1, "sensitivity gives groups different ratios, uniform would not"
    for gid, part in plans[0].items():
        assert set(part["removed"]) <= set(plans[1][gid]["removed"])


def test_resume_redoes_nothing_finished(tmp_path) -> None:
    config = _config([0.2, 0.4], trials=[{"gain": 0}, {"gain": 1}])
    reference = run(config, FakeAdapter(), tmp_path / "ref", BASELINE, progress=lambda _: None)
    crashing = FakeAdapter(fail_at=3)  # round 2, trial 1
    with pytest.raises(RuntimeError, match="crashed"):
        run(config, crashing, tmp_path / "run", BASELINE, progress=lambda _: None)
    assert (tmp_path / "run" / "round-02" / "pruned.json").exists()
    resumed = FakeAdapter()
    result = run(config, resumed, tmp_path / "run", BASELINE, progress=lambda _: None)
    assert resumed.calls == 2  # only round 2's trials
    assert result.to_dict() | {"dense": None, "rounds": None} == reference.to_dict() | {"dense": None, "rounds": None}
    assert [(r.macs, r.metric_after) for r in result.rounds] == [(r.macs, r.metric_after) for r in reference.rounds]
    again = FakeAdapter()
    run(config, again, tmp_path / "run", progress=lambda _: None)  # finished: the baseline comes from the work dir
    assert again.calls == 0


def test_work_dir_of_another_run_is_refused(tmp_path) -> None:
    run(_config([0.2]), FakeAdapter(), tmp_path, BASELINE, progress=lambda _: None)
    with pytest.raises(OnnxPruneError, match="another config"):
        run(_config([0.3]), FakeAdapter(), tmp_path, BASELINE, progress=lambda _: None)
    with pytest.raises(OnnxPruneError, match="another baseline"):
        run(_config([0.2]), FakeAdapter(), tmp_path, fixture_path("plain_cnn"), progress=lambda _: None)


def test_lost_zeros_are_re_zeroed_with_a_warning(tmp_path) -> None:
    with pytest.warns(MasksLostWarning):
        result = run(_config([0.3]), FakeAdapter(drift=True), tmp_path, BASELINE, progress=lambda _: None)
    assert result.rounds[0].macs_removed > 0.25
    tuned = weight_arrays(onnx.load(tmp_path / "round-01" / "trial-1.onnx"))
    masks = Masks.from_npz((tmp_path / "round-01" / "masks.npz").read_bytes())
    for name, mask in masks.zero.items():
        assert not tuned[name][mask].any()


def test_cumulative_plan_keeps_what_earlier_rounds_removed() -> None:
    model = onnxprune.load(fixture_path("residual"))
    groups = find_groups(model)
    first = make_plan(model, PruneOptions(ratio=0.3), groups)
    pruned = from_proto(sparse(model, groups, first))
    # make the zeroed channels' consumer columns large (as fine-tuning may; masked elements stay zero), so
    # plain importance would not pick those channels first
    weights, masks = pruned.weights(), masks_from_plan(model, groups, first)
    for member, index in onnxprune.pruning.surgery.removed_slices(groups, first):
        if member.role == "in" and member.tensor in weights:
            weight = weights[member.tensor]
            values = np.array(weight.values)
            where = [slice(None)] * values.ndim
            where[member.axis] = index
            values[tuple(where)] = 10.0
            values[masks.zero.get(member.tensor, np.zeros(values.shape, bool))] = 0
            weight.values = values
    assert not all(set(p.removed) <= set(make_plan(pruned, PruneOptions(ratio=0.5)).groups[gid].removed)
                   for gid, p in first.groups.items()), "the test needs a case plain planning gets wrong"
    second = make_plan(pruned, PruneOptions(ratio=0.5, mode="sparse", cumulative=True), find_groups(pruned))
    for gid, part in first.groups.items():
        assert set(part.removed) <= set(second.groups[gid].removed)
    assert abs(second.macs_ratio - 0.5) < 0.02
    assert second.macs_before == first.macs_before  # counted on the full shapes: ratios are cumulative


def test_encrypts_the_dense_model_at_the_end(tmp_path) -> None:
    pytest.importorskip("onnxprune.secure")
    from onnxprune.secure import KeyOrigin, load_session, write_key_file

    key = tmp_path / "model.key"
    write_key_file(key)
    config = _config([0.3])
    config.encrypt = KeyOrigin(key_file=str(key))
    config.output = str(tmp_path / "out" / "dense.onnx")
    result = run(config, FakeAdapter(), tmp_path / "work", BASELINE, progress=lambda _: None)
    assert result.dense == config.output and result.encrypted == config.output + ".enc"
    assert b"features" not in Path(result.encrypted).read_bytes()
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    (expected,) = run_model(onnx.load(result.dense), {"input": x})
    (actual,) = load_session(result.encrypted, key_file=key).run(None, {"input": x})
    np.testing.assert_array_equal(actual, expected)


def test_the_config_takes_the_key_from_an_environment_variable(tmp_path, monkeypatch) -> None:
    """[encrypt] key_env, as `--key-env` on the command line (the config lacked it)."""
    from onnxprune.secure import generate_key, load_session

    key = generate_key()
    monkeypatch.setenv("ONNXPRUNE_TEST_KEY", key.hex())
    config = load_config(_write_config(tmp_path / "run.toml", '[encrypt]\nkey_env = "ONNXPRUNE_TEST_KEY"'))
    config.output = str(tmp_path / "out" / "dense.onnx")
    result = run(config, FakeAdapter(), tmp_path / "work", BASELINE, progress=lambda _: None)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    (expected,) = run_model(onnx.load(result.dense), {"input": x})
    (actual,) = load_session(result.encrypted, key=key).run(None, {"input": x})
    np.testing.assert_array_equal(actual, expected)
    with pytest.raises(OnnxPruneError, match="give only one of encrypt.key_file, encrypt.key_env and "
                                             "encrypt.passphrase_env"):
        load_config(_write_config(tmp_path / "two.toml", '[encrypt]\nkey_env = "A"\npassphrase_env = "B"'))


# --- the command line: config errors, and resume after SIGKILL ----------------------------------------


def _write_config(path: Path, extra: str = "", log: Path | None = None, delay: float = 0.0) -> Path:
    path.write_text(f'''
model = "{BASELINE}"
[schedule]
ratios = [0.2, 0.4]
tolerance = 100
[finetune]
trials = [{{ gain = 0 }}, {{ gain = 1 }}]
[adapter]
kind = "python"
factory = "tests.test_iterative:make_fake_adapter"
options = {{ log = "{log or ''}", delay = {delay} }}
{extra}''')
    return path


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "onnxprune", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("extra,message", [
    ("[prune]\ncriterion = 'l7'", "prune.criterion 'l7'"),
    ("[prune]\nround_too = 2", "prune.round_too: unknown key"),
    ("[encrypt]\nkey_file = 3", "encrypt.key_file: expected str"),
    ("[finetune2]\nx = 1", "finetune2: unknown key"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, extra: str, message: str) -> None:
    config = _write_config(tmp_path / "run.toml", extra)
    with pytest.raises(OnnxPruneError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(config)
    if "finetune2" in extra:  # and once through the command line
        done = _cli("iterate", "--config", str(config), "--workdir", str(tmp_path / "w"))
        _, err = done.communicate(timeout=60)
        assert done.returncode == 2
        assert err.strip().count("\n") == 0 and message in err


def test_config_file_reads_every_table(tmp_path) -> None:
    extra = "[prune]\ncriterion = 'l2'\nexclude = ['x*']\nreanalyze = true\n[analyze]\ndata = 'val.npz'\nworkers = 2"
    config = load_config(_write_config(tmp_path / "run.toml", extra))
    assert config.model == str(BASELINE) and config.schedule.target == 0.4
    assert config.prune == PruneSettings(criterion="l2", exclude=["x*"], reanalyze=True)
    assert config.analyze == Analysis(data=str(tmp_path / "val.npz"), workers=2)
    assert config.finetune.trial_settings() == [{"gain": 0}, {"gain": 1}]
    assert config.adapter["factory"] == "tests.test_iterative:make_fake_adapter"


def test_resume_after_sigkill(tmp_path) -> None:
    """Kill the command at two points; the same command finishes the run without redoing finished steps,
    with the same result as a run never interrupted."""
    log = tmp_path / "calls.jsonl"
    config = _write_config(tmp_path / "run.toml", log=log, delay=0.4)
    workdir = tmp_path / "work"
    finished_before_kill: list[Path] = []
    for marker in ("round-01/trial-1.json", "round-02/pruned.json"):
        process = _cli("iterate", "--config", str(config), "--workdir", str(workdir))
        deadline = time.monotonic() + 60
        while not (workdir / marker).exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        finished_before_kill = sorted(workdir.glob("round-*/trial-*.json"))
    assert not (workdir / "report.json").exists()
    done = _cli("iterate", "--config", str(config), "--workdir", str(workdir))
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    assert "resuming" in err and "accepted" in out
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    for record in finished_before_kill:
        number = int(record.parent.name.split("-")[1])
        settings = json.loads(record.read_text())["settings"]
        removed = json.loads((record.parent / "pruned.json").read_text())["macs_removed"]
        same = [c for c in calls if c["settings"] == settings and c["macs_removed"] == round(removed, 6)]
        assert len(same) == 1, f"round {number} {settings} was fine-tuned {len(same)} times"
    report = json.loads((workdir / "report.json").read_text())
    reference = run(load_config(_write_config(tmp_path / "ref.toml")), FakeAdapter(), tmp_path / "ref",
                    progress=lambda _: None)
    assert [(r["macs"], r["metric_after"], r["best_trial"]) for r in report["rounds"]] == [
        (r.macs, r.metric_after, r.best_trial) for r in reference.rounds]
    assert list(workdir.rglob("*.tmp")) == []


def test_reanalysis_measures_at_the_channel_choices_the_rounds_prune_with(monkeypatch) -> None:
    """With reanalyze, the table must be measured with the rounds' round_to, attention and (weight)
    criterion; otherwise it describes other channels than those the round removes."""
    pytest.importorskip("onnxprune.analysis.analyze")
    import onnxprune.analysis.analyze
    from onnxprune.loop.reanalyze import default_analyze

    seen = []

    class Done:
        table = type("Table", (), {"to_dict": staticmethod(dict)})

    monkeypatch.setattr(onnxprune.analysis.analyze, "analyze", lambda model, options: seen.append(options) or Done)
    config = _config([0.3])
    config.prune = PruneSettings(criterion="l2", round_to=1, attention="heads", reanalyze=True)
    default_analyze(config)(None, Path("cache"))
    assert (seen[0].round_to, seen[0].attention, seen[0].criterion) == (1, "heads", "l2")
    config.prune = PruneSettings(criterion="greedy", data="calib.npz", reanalyze=True)
    default_analyze(config)(None, Path("cache"))
    assert (seen[1].criterion, seen[1].reconstruct) == ("l1", False)  # no analysis data: nothing to calibrate on
    config.analyze = Analysis(data="val.npz")
    default_analyze(config)(None, Path("cache"))
    assert (seen[2].chosen_criterion, seen[2].reconstruct) == ("greedy", True)  # measured as the rounds prune
    config.prune = PruneSettings(data="calib.npz", reconstruct=False, reanalyze=True)
    default_analyze(config)(None, Path("cache"))
    assert (seen[3].chosen_criterion, seen[3].reconstruct) == ("act", False)


def test_config_attention_reaches_the_rounds(tmp_path) -> None:
    config = load_config(_write_config(tmp_path / "run.toml", "[prune]\nattention = 'heads'"))
    assert config.prune.attention == "heads"
    with pytest.raises(OnnxPruneError, match="prune.attention 'all'"):
        load_config(_write_config(tmp_path / "bad.toml", "[prune]\nattention = 'all'"))
