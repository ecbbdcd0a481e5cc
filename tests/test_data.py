"""The one data module: input specs from the IR or a session agree, one validator, one random maker."""

from __future__ import annotations

import numpy as np
import pytest

import onnxprune
from onnxprune.data import check_data, model_specs, random_data, random_feeds, session_specs
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.model import with_weights
from onnxprune.graph.runtime import session
from tests.conftest import fixture_path


def test_specs_from_the_ir_and_from_a_session_agree() -> None:
    model = onnxprune.load(fixture_path("plain_cnn"))
    sess = session(with_weights(model))
    ir, ort = model_specs(model), session_specs(sess.get_inputs(), model.input_shapes)
    assert [(s.name, s.shape, s.dtype, s.dynamic_batch) for s in ir] == \
        [(s.name, s.shape, s.dtype, s.dynamic_batch) for s in ort]
    a, b = random_feeds(ir, batch=2), random_feeds(ort, batch=2)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    sample = random_data(ir, samples=2).inputs
    assert all(np.array_equal(sample[k], a[k]) for k in a)  # the same maker, the same values


def test_one_validator_casts_only_when_asked() -> None:
    model = onnxprune.load(fixture_path("plain_cnn"))
    specs = model_specs(model)
    name, shape = specs[0].name, specs[0].shape
    arrays = {name: np.zeros((3, *shape[1:]), np.float64)}
    with pytest.raises(OnnxPruneError, match=f"array '{name}' is float64, the model wants float32"):
        check_data(arrays, specs, "d.npz")
    assert check_data(arrays, specs, "d.npz", cast=True).inputs[name].dtype == np.float32
    with pytest.raises(OnnxPruneError, match="'labels' must be integers"):
        check_data({**arrays, "labels": np.zeros(2, np.int64)}, specs, "d.npz", cast=True)
    with pytest.raises(OnnxPruneError, match="neither model inputs"):
        check_data({**arrays, "boxes": np.zeros(3)}, specs, "d.npz", cast=True)
