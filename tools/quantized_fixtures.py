"""QDQ fixtures (issue 9): a float fixture quantized by onnxruntime's `quantize_static`, as users do.

The float twin is the `residual` fixture (convs, BatchNorm, identity and projection shortcuts, a Gemm
head), exported as make_fixtures exports it; calibration is MinMax over seeded random batches, so the
files are reproducible. One model per tensor, one per channel: onnxprune must find the float twin's
groups in both and keep them valid QDQ models with the same quantization when it prunes them.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

TWIN = "residual"
TOLERANCE = 0.1  # int8 activations and weights against the float torch model, relative to max |y|


class _Batches:
    """A calibration reader over seeded random batches (onnxruntime's CalibrationDataReader protocol)."""

    def __init__(self, input_shape: tuple[int, ...], count: int = 8):
        rng = np.random.default_rng(0)
        self._batches = iter([{"input": rng.standard_normal(input_shape).astype(np.float32)} for _ in range(count)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # part of the protocol; one pass is all quantize_static needs
        pass


def quantize(model: onnx.ModelProto, input_shape: tuple[int, ...], per_channel: bool) -> onnx.ModelProto:
    """`quantize_static` in QDQ format: uint8 activations, int8 weights (symmetric), int32 biases."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" warnings
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        onnx.save(model, source)
        quantize_static(str(source), str(target), _Batches(input_shape), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return onnx.load(target)


def quantized_variants(export: Callable[[], onnx.ModelProto], input_shape: tuple[int, ...]
                       ) -> list[tuple[str, str, str, Callable[[], onnx.ModelProto]]]:
    """(file stem, float twin, description, maker) of the QDQ fixtures, as make_fixtures' variants."""
    what = (f"{TWIN} quantized by onnxruntime quantize_static (QDQ, uint8 activations, int8 symmetric "
            "weights, int32 biases, MinMax on seeded random data)")
    return [
        ("qdq_residual", TWIN, f"{what}, one scale per tensor.",
         lambda: quantize(export(), input_shape, per_channel=False)),
        ("qdq_residual_per_channel", TWIN, f"{what}, weights with one scale per output channel.",
         lambda: quantize(export(), input_shape, per_channel=True)),
    ]
