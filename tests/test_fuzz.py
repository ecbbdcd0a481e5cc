"""The fuzz suite's fast slice: mutated fixtures through `inspect` and `prune`, each in a forked child
with a time and memory bound. Allowed: exit 0 with a valid model, or exit 2 with one error line.

The long run is `python -m tools.fuzz --cases 2000`; the seed corpus (issue 13's cases) is in
tests/hostile_models.py and the test_hostile_* modules.
"""

from __future__ import annotations

import pytest

from tools.fuzz import GOOD, Case, make_case, run_case, sources

FAST_CASES = 40
SEED = 13


@pytest.fixture(scope="module")
def models():
    return sources()


@pytest.mark.parametrize("index", range(FAST_CASES))
def test_fuzz_case(models, index: int) -> None:
    case = make_case(index, SEED, models)
    outcomes = run_case(case, timeout=60)
    bad = [o for o in outcomes if o.kind not in GOOD]
    assert not bad, f"{case.source}; {'; '.join(case.mutations)}: {bad}"


# Cases the fuzzer once failed on, as (seed, index): kept so they stay fixed.
REGRESSIONS = [
    (1, 37),  # an input declaring a batch of 2^40: IndexError deep in the channel walk
    (1, 44),  # a flipped bit in a name, no longer UTF-8: UnicodeDecodeError from onnx.checker
    (2, 331),  # a Gather reading a bias: IndexError in the channel walk, then KeyError in slim surgery
    (2, 564),  # IR 3 with Constant-node weights: the slim output's initializers were not graph inputs
    (2, 842),  # a Conv group attribute changed: an axis of unknown size in the value check
    (2, 1203),  # a Mul reading a BatchNorm output of another size: the same
    (2, 1216),  # a weight zeroed for one BatchNorm (scale) and kept by another (variance): slim != sparse
    (2, 1921),  # a Conv reading its own weight as its data input: slim != sparse, refused in one line (exit 2)
]


@pytest.mark.parametrize(("seed", "index"), REGRESSIONS)
def test_fuzz_regression(models, seed: int, index: int) -> None:
    case = make_case(index, seed, models)
    outcomes = run_case(case, timeout=60)
    assert all(o.kind in GOOD for o in outcomes), f"{case.mutations}: {outcomes}"


def test_the_judge_catches_failures() -> None:
    """The harness itself can fail: a case the CLI cannot parse arguments for is not 'refused'."""
    from tools.fuzz import _judge

    assert _judge((1, "", "onnxprune: internal error: KeyError: 1\n"), None).kind == "internal"
    assert _judge((2, "", "Traceback (most recent call last):\nonnxprune: error: x\n"), None).kind == "traceback"
    assert _judge((2, "", "onnxprune: error: a\nonnxprune: error: b\n"), None).kind == "noisy"
    assert _judge((2, "", "onnxprune: error: a\n"), None).kind == "refused"


def test_a_hang_is_reported_not_waited_for(monkeypatch) -> None:
    import time

    from tools import fuzz

    monkeypatch.setattr(fuzz, "_run_in_child", lambda case, folder: time.sleep(30))
    started = time.monotonic()
    outcomes = run_case(Case(0, "plain_cnn", [], b""), timeout=1)
    assert [o.kind for o in outcomes] == ["hang"] and time.monotonic() - started < 10
