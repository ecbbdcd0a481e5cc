"""The PyTorch adapter: fine-tune a sparse ONNX model as the user's own `nn.Module`.

It exports the module itself, with the TorchScript exporter and constant folding off, because that
keeps BatchNormalization as its own node and names every initializer after the parameter or buffer it
holds (`features.0.weight`, `bn1.running_mean`). The dynamo exporter folds BN into the conv *under the
conv weight's name*: loading those values back by name would apply BN twice. With names intact, a
sparse model's weights load back into the module by name, masks become `torch.where` parametrizations
(the zeroed elements are zero in every forward pass and get no gradient, whatever optimizer the
training function builds), and the module is exported again.

Example:
    adapter = TorchAdapter(net, torch.zeros(1, 3, 32, 32), train=my_train, evaluate=my_top1)
    baseline = adapter.export()
    result = onnxprune.loop.iterate.run(config, adapter, "work", baseline)
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.pruning.masks import Masks, weight_arrays

try:
    import torch
    from torch import nn
    from torch.nn.utils import parametrize
except ModuleNotFoundError:  # pragma: no cover - depends on the installation
    raise OnnxPruneError("the PyTorch adapter needs torch: pip install 'onnxprune[torch]'") from None

TrainFn = Callable[[nn.Module, dict[str, Any]], None]
EvalFn = Callable[[nn.Module], float]
OPSET = 17


class _KeepZero(nn.Module):
    """Parametrization that holds masked elements at exactly zero (no gradient flows into them)."""

    def __init__(self, zero: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("zero", zero, persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.masked_fill(self.zero, 0)


class TorchAdapter:
    """Fine-tunes through a PyTorch module whose export keeps parameter names.

    Args:
        module: the user's model; its parameters are overwritten by every model the loop hands over.
        example_inputs: a tensor or tuple of tensors for export (batch dimension first; exported dynamic).
        train: `train(module, settings)` trains in place; build the optimizer inside, from
            `module.parameters()`. `settings` is one trial's table from the run config.
        evaluate: `evaluate(module) -> float`, higher is better; called in eval mode under no_grad.
        input_names, output_names: names for the exported graph's inputs and outputs.
        opset: ONNX opset of the export.
    """

    def __init__(self, module: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], train: TrainFn,
                 evaluate: EvalFn | None = None, *, input_names: Sequence[str] | None = None,
                 output_names: Sequence[str] | None = None, opset: int = OPSET) -> None:
        self.module = module
        self.example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        self.train_fn = train
        self.eval_fn = evaluate
        self.input_names = list(input_names or (["input"] if len(self.example_inputs) == 1 else
                                                [f"input_{i}" for i in range(len(self.example_inputs))]))
        self.output_names = list(output_names) if output_names else None
        self.opset = opset
        self._unmapped: dict[str, np.ndarray] | None = None  # exported weights that are no module tensor

    # -- the Adapter protocol ---------------------------------------------------------------------------

    def fine_tune(self, model: onnx.ModelProto, masks: Masks, settings: dict[str, Any]) -> onnx.ModelProto:
        """Load `model`, train with `settings` while `masks` hold, and return the re-exported module."""
        self.load(model)
        with self._masked(masks):
            self.module.train()
            self.train_fn(self.module, dict(settings))
        self.module.eval()
        return self.export()

    def evaluate(self, model: onnx.ModelProto) -> float:
        """Load `model` into the module and score it with the `evaluate` function."""
        if self.eval_fn is None:
            raise OnnxPruneError("TorchAdapter was built without an evaluate function (evaluate=...)")
        self.load(model)
        self.module.eval()
        with torch.no_grad():
            return float(self.eval_fn(self.module))

    # -- export and load by name --------------------------------------------------------------------

    def export(self) -> onnx.ModelProto:
        """The module as ONNX, BatchNorm unfused, initializers named after parameters and buffers."""
        self.module.eval()
        device = next((p.device for p in self.module.parameters()), torch.device("cpu"))
        inputs = tuple(x.to(device) for x in self.example_inputs)
        if self.output_names is None:
            with torch.no_grad():
                outputs = self.module(*inputs)
            count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
            self.output_names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
        dynamic = {name: {0: "batch"} for name in self.input_names + self.output_names}
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            torch.onnx.export(self.module, inputs, buffer, dynamo=False, do_constant_folding=False,
                              opset_version=self.opset, input_names=self.input_names,
                              output_names=self.output_names, dynamic_axes=dynamic)
        proto = onnx.load_from_string(buffer.getvalue())
        if self._unmapped is None:
            self._unmapped = self._check_names(proto)
        return proto

    def load(self, model: onnx.ModelProto) -> None:
        """Copy every weight of `model` into the module tensor of the same name.

        Refuses a model with another shape for a name (a slim model: transform after fine-tuning) and one
        that changed a weight the module has no tensor for (its value could not be trained or kept).
        """
        if self._unmapped is None:
            self.export()
        tensors = self._tensors()
        with torch.no_grad():
            for name, values in weight_arrays(model).items():
                target = tensors.get(name)
                if target is None:
                    reference = self._unmapped.get(name)
                    if reference is not None and not np.array_equal(reference, values):
                        raise OnnxPruneError(f"weight {name!r} is not a parameter or buffer of the module, "
                                             "so its new value cannot be loaded (export with TorchAdapter)")
                    continue
                if tuple(target.shape) != values.shape:
                    raise OnnxPruneError(f"weight {name!r} has shape {list(values.shape)}, the module's "
                                         f"{list(target.shape)} (the adapter needs the sparse model, not the "
                                         "slim one)")
                target.copy_(torch.from_numpy(np.array(values)).to(target.dtype))  # a writable copy

    # -- details ------------------------------------------------------------------------------------

    def _tensors(self) -> dict[str, torch.Tensor]:
        named = dict(self.module.named_buffers())
        named.update(self.module.named_parameters())
        return named

    def _check_names(self, proto: onnx.ModelProto) -> dict[str, np.ndarray]:
        """The exported weights that are not module tensors; refuse an export that kept no names at all."""
        tensors = self._tensors()
        arrays = weight_arrays(proto)
        if tensors and not set(arrays) & set(tensors):
            raise OnnxPruneError("the export names no weight after a module parameter; TorchAdapter needs "
                                 "a module whose TorchScript export keeps parameter names")
        return {name: values for name, values in arrays.items() if name not in tensors}

    @contextmanager
    def _masked(self, masks: Masks):
        """Hold masked elements at zero for the duration: parametrize parameters, re-zero buffers."""
        tensors = self._tensors()
        parameters = dict(self.module.named_parameters())
        done: list[tuple[nn.Module, str]] = []
        try:
            for name, mask in masks.zero.items():
                if name not in tensors:
                    raise OnnxPruneError(f"mask for {name!r} names no parameter or buffer of the module")
                if name not in parameters:
                    continue
                owner_name, _, attr = name.rpartition(".")
                owner = self.module.get_submodule(owner_name)
                zero = torch.from_numpy(mask).to(parameters[name].device)
                parametrize.register_parametrization(owner, attr, _KeepZero(zero))
                done.append((owner, attr))
            yield
        finally:
            for owner, attr in done:
                parametrize.remove_parametrizations(owner, attr, leave_parametrized=True)
            tensors = self._tensors()
            with torch.no_grad():
                for name, mask in masks.zero.items():
                    if name in tensors:
                        tensors[name][torch.from_numpy(mask).to(tensors[name].device)] = 0
