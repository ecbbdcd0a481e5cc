"""onnxprune: structured channel pruning of ONNX models.

The library is the product; the `onnxprune` command is a thin layer over these functions.

Example:
    import onnxprune
    model = onnxprune.load("model.onnx")
    result = onnxprune.prune(model, onnxprune.PruneOptions(ratio=0.5))
    onnxprune.save(result.model, "model_slim.onnx")
"""

from onnxprune import process

process.configure()  # thread and memory settings (see process.py), before numpy loads

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.load import load
from onnxprune.graph.model import Model
from onnxprune.graph.save import save
from onnxprune.pruning.channels import Group, Member, find_groups
from onnxprune.pruning.inspect import format_report, inspect_model
from onnxprune.pruning.plan import Plan
from onnxprune.pruning.prune import PruneOptions, PruneResult, make_plan, prune

__all__ = [
    "Group", "Member", "Model", "OnnxPruneError", "Plan", "PruneOptions", "PruneResult", "find_groups",
    "format_report", "inspect_model", "load", "make_plan", "prune", "save",
]
__version__ = "0.1.0"
