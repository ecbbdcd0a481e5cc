"""Options are checked in one place, the library's, whose messages name its own fields; the CLI says its
flags and the run config its keys for the same errors."""

from __future__ import annotations

import pytest

from onnxprune.analysis.analyze import AnalyzeOptions
from onnxprune.cli import main
from onnxprune.errors import OnnxPruneError, OptionError
from onnxprune.loop.config import Analysis, PruneSettings
from onnxprune.pruning.prune import PruneOptions
from tests.conftest import fixture_path

BAD_PRUNE = [
    ({"ratio": 0.5, "allocation": "magic"}, "allocation 'magic': choose uniform or reconstruction"),
    ({"ratio": 0.5, "allocation": "reconstruction"}, "allocation reconstruction needs calibration data (data)"),
    ({"ratio": 0.5, "allocation": "reconstruction", "data": {}, "criterion": "act"},
     "allocation reconstruction reads the error curves of criterion greedy (the default with data), not act"),
    ({"ratio": 0.5, "allocation": "uniform", "sensitivity": {"metric": "top1", "baseline": 1, "groups": {}}}, "give either sensitivity or allocation, not both"),
    ({"ratio": 1.5}, "ratio 1.5 is not in (0, 1)"),
    ({}, "give exactly one of ratio and spec"),
    ({"ratio": 0.5, "round_to": 0}, "round_to 0 must be >= 1"),
    ({"ratio": 0.5, "mode": "dense"}, "mode 'dense': choose slim or sparse"),
    ({"ratio": 0.5, "criterion": "l7"}, "criterion 'l7': unknown criterion"),
]


@pytest.mark.parametrize("options,message", BAD_PRUNE)
def test_library_messages_name_fields_not_flags(options, message) -> None:
    with pytest.raises(OptionError) as caught:
        PruneOptions(**options).check()
    assert message in str(caught.value) and "--" not in str(caught.value)


@pytest.mark.parametrize("options,message", [
    ({"workers": 0}, "workers 0 must be >= 1"),
    ({"ratios": [0.5, 1.0]}, "ratios: 1.0 is not in (0, 1)"),
    ({"ray": "auto", "workers": 2}, "give workers or ray, not both"),
])
def test_analyze_messages_name_fields_not_flags(options, message) -> None:
    with pytest.raises(OptionError) as caught:
        AnalyzeOptions(**options).check()
    assert message in str(caught.value) and "--" not in str(caught.value)


def test_the_cli_says_its_flags(tmp_path, capsys) -> None:
    model = str(fixture_path("plain_cnn"))
    assert main(["prune", model, "--ratio", "0.5", "--round-to", "0", "-o", str(tmp_path / "o.onnx")]) == 2
    assert "error: --round-to 0 must be >= 1" in capsys.readouterr().err
    assert main(["prune", model, "--ratio", "0.5", "--allocation", "reconstruction", "-o", str(tmp_path / "o.onnx")]) == 2
    assert "--allocation reconstruction needs calibration data (--data CALIB.npz)" in capsys.readouterr().err


def test_the_config_says_its_keys() -> None:
    with pytest.raises(OnnxPruneError, match=r"prune.round_to 0 must be >= 1"):
        PruneSettings(round_to=0).check()
    with pytest.raises(OnnxPruneError, match=r"prune.reconstruct needs calibration data \(prune.data\)"):
        PruneSettings(reconstruct=True).check()
    with pytest.raises(OnnxPruneError, match=r"analyze.workers 0 must be >= 1"):
        Analysis(workers=0).check()


def test_an_option_error_keeps_its_fields_across_processes() -> None:
    """Analysis workers send errors back pickled: the CLI must still be able to say its flags."""
    import pickle

    error = pickle.loads(pickle.dumps(OptionError("{eval} x:y returned str, not a number")))
    assert str(error) == "eval x:y returned str, not a number"
    assert error.say(lambda name: f"--{name}") == "--eval x:y returned str, not a number"
