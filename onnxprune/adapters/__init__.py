"""Adapters: how the prune -> fine-tune loop hands a sparse model to the framework that can train it.

onnxprune does not train. Each round, the loop gives an adapter the sparse ONNX model (the original
graph, pruned channels zeroed) with its `Masks`, and takes back a fine-tuned ONNX model with the same
weight names and shapes. It also asks the adapter to score models. Ready-made adapters:

- `onnxprune.adapters.torch.TorchAdapter`: wraps an `nn.Module` (needs the `onnxprune[torch]` extra);
- `onnxprune.adapters.command.CommandAdapter`: runs any command (TensorFlow, Keras, Paddle, a cluster job).

Writing one is twenty lines. Example (a framework with `load_onnx`/`train`/`to_onnx`/`accuracy`):

    class MyAdapter:
        def fine_tune(self, model, masks, settings):
            net = load_onnx(model)                       # weights by name
            train(net, lr=settings["lr"], after_step=lambda: net.zero_where(masks.zero))
            return to_onnx(net)                          # same weight names and shapes

        def evaluate(self, model):
            return accuracy(load_onnx(model))            # higher is better
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol, runtime_checkable

import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.model import weight_tensors
from onnxprune.pruning.masks import Masks, enforce

Settings = dict[str, Any]


class MasksLostWarning(UserWarning):
    """A fine-tuned model came back with pruned channels no longer zero; they were zeroed again."""


@runtime_checkable
class Adapter(Protocol):
    """What the loop needs from a framework.

    `fine_tune` trains a copy of `model` (a sparse ONNX model) with one trial's `settings` (learning rate,
    epochs, decay policy, ... whatever the run config's `[finetune]` tables hold), keeping every element
    `masks.zero` marks at zero, and returns the result as ONNX with the same weight names and shapes.
    `evaluate` scores a model; higher is better (return -loss for a loss), in the units the run's
    `tolerance` is given in.
    """

    def fine_tune(self, model: onnx.ModelProto, masks: Masks, settings: Settings) -> onnx.ModelProto: ...

    def evaluate(self, model: onnx.ModelProto) -> float: ...


def check_returned(sent: onnx.ModelProto, returned: onnx.ModelProto, masks: Masks,
                   where: str = "fine-tuned model") -> onnx.ModelProto:
    """Refuse a returned model whose weights are not the sent model's (by name, shape and type); re-zero
    masked elements that drifted, with a warning. Returns `returned` (changed in place)."""
    expected = {n: (tuple(t.dims), t.data_type) for n, t in weight_tensors(sent).items()}
    got = {n: (tuple(t.dims), t.data_type) for n, t in weight_tensors(returned).items()}
    missing = sorted(set(expected) - set(got))
    if missing:
        raise OnnxPruneError(f"{where}: weight names differ from the model sent for fine-tuning "
                             f"({len(missing)} missing, e.g. {missing[0]!r})")
    for name, (shape, dtype) in expected.items():
        if got[name] != (shape, dtype):
            raise OnnxPruneError(f"{where}: weight {name!r} has shape {list(got[name][0])} and type "
                                 f"{got[name][1]}, expected {list(shape)} and type {dtype}")
    lost = enforce(returned, masks, where)
    if lost:
        warnings.warn(f"{where}: {lost} pruned weight values were no longer zero; zeroed them again "
                      "(keep the masks while training)", MasksLostWarning, stacklevel=2)
    return returned


__all__ = ["Adapter", "Masks", "MasksLostWarning", "Settings", "check_returned"]
