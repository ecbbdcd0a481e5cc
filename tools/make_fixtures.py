"""Export every fixture model to fixtures/<name>.onnx, plus exporter variants, and verify each.

Run from the repository root: `python tools/make_fixtures.py`. Every file is checked with the ONNX
checker and compared against PyTorch under onnxruntime at batch 1 and 3, then written atomically.
Re-running reports for each file whether the bytes changed, which is how determinism is checked.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so `python tools/make_fixtures.py` can import tools.*
    sys.path.insert(0, str(ROOT))

from tools.digits_data import DIGITS_DESCRIPTION, DIGITS_INPUT_SHAPE
from tools.fixture_models import FIXTURES, build_model
from tools.graph_fixtures import GRAPH_FIXTURES, GraphFixture
from tools.quantized_fixtures import TOLERANCE as QUANTIZED_TOLERANCE
from tools.quantized_fixtures import TWIN, quantized_variants

FIXTURES_DIR = ROOT / "fixtures"
GRAPHS = {f.name: f for f in GRAPH_FIXTURES}
OPSET = 17
DYNAMO_OPSET = 18  # the dynamo exporter's own minimum; converting its graph down to 17 fails
TOLERANCE = 1e-4  # max |onnx - torch| relative to max |torch|


def quiet_exporters() -> None:
    """Silence exporter warnings that are expected here, so real problems stand out."""
    for message in (
        "You are using the legacy TorchScript-based ONNX export",  # we want that exporter on purpose
        "Constant folding - Only steps=1",  # Pad's computed pads; folding is off anyway
        "ONNX export mode is set to TrainingMode.EVAL, but operator 'instance_norm'",  # no running stats
        "`isinstance(treespec, LeafSpec)` is deprecated",
    ):
        warnings.filterwarnings("ignore", message=re.escape(message))
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(
        logging.ERROR
    )  # torchvision ops


def export_torchscript(
    model: torch.nn.Module, input_shape: tuple[int, ...], opset: int = OPSET, fold_constants: bool = False,
    dynamic: tuple[int, ...] = (), dynamic_out: tuple[int, ...] = (),
) -> onnx.ModelProto:
    """Export with the TorchScript exporter, which keeps BatchNormalization nodes and names
    initializers after module parameters when constant folding is off. `dynamic` / `dynamic_out`: axes
    besides the batch that stay dynamic (a sequence length) on the input and on the output."""
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.zeros(input_shape),),
        buffer,
        dynamo=False,
        do_constant_folding=fold_constants,
        opset_version=opset,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch", **{a: "seq" for a in dynamic}},
                      "output": {0: "batch", **{a: "seq" for a in dynamic_out}}},
    )
    return onnx.load_from_string(buffer.getvalue())


def export_dynamo(model: torch.nn.Module, input_shape: tuple[int, ...], dynamic: tuple[int, ...] = ()
                  ) -> onnx.ModelProto | None:
    """Export with the torch.export-based exporter (folds BN into Conv); None if onnxscript is missing.
    `dynamic`: axes besides the batch that stay dynamic (a sequence length)."""
    if importlib.util.find_spec("onnxscript") is None:  # the dynamo exporter needs it
        return None
    program = torch.onnx.export(
        model,
        (torch.zeros(input_shape),),
        dynamo=True,
        opset_version=DYNAMO_OPSET,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: torch.export.Dim("batch"), **{a: torch.export.Dim("seq", min=2, max=64) for a in dynamic}},),
        verbose=False,
    )
    model = program.model_proto
    for node in model.graph.node:
        # Stack traces hold absolute paths and line numbers: drop them so the bytes do not depend on
        # where the repository is checked out. The other metadata (module hierarchy) is kept.
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model


def initializers_to_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every initializer by a Constant node of the same name, as PaddlePaddle exports do."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    constants = [
        helper.make_node("Constant", [], [init.name], name=f"const_{init.name}", value=init)
        for init in graph.initializer
    ]
    nodes = constants + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    return result


def weight_behind_identity(model: onnx.ModelProto, weight: str) -> onnx.ModelProto:
    """Rename initializer `weight` to `<weight>_raw` and produce `weight` from it with an Identity
    node, like the TorchScript exporter does for shared or deduplicated parameters."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    (init,) = [i for i in graph.initializer if i.name == weight]
    init.name = f"{weight}_raw"
    nodes = [helper.make_node("Identity", [init.name], [weight], name=f"identity_{weight}")]
    nodes += list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return result


def check_against_torch(
    model: onnx.ModelProto, torch_model: torch.nn.Module, input_shape: tuple[int, ...], tolerance: float = TOLERANCE
) -> float:
    """Check the model and compare onnxruntime with PyTorch at batch 1 and 3; return the worst
    relative error, raising if it exceeds TOLERANCE."""
    onnx.checker.check_model(model, full_check=True)
    for value in (model.graph.input[0], model.graph.output[0]):
        if not value.type.tensor_type.shape.dim[0].dim_param:
            raise AssertionError(f"{value.name} has no dynamic batch dimension")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch, shape in sequence_lengths(model, input_shape):
        x = torch.randn((batch, *shape[1:]), generator=generator)
        with torch.no_grad():
            expected = torch_model(x).numpy()
        (actual,) = session.run(None, {"input": x.numpy()})
        if actual.shape != expected.shape:
            raise AssertionError(f"shape {actual.shape} != {expected.shape} at input {list(x.shape)}")
        error = float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))
        if error > tolerance:
            raise AssertionError(f"relative error {error:.2e} > {tolerance} at input {list(x.shape)}")
        worst = max(worst, error)
    return worst


def dynamic_axes(model: onnx.ModelProto) -> list[int]:
    """The input's dynamic axes besides the batch (a sequence length)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [a for a, d in enumerate(dims) if a and not d.dim_value]


def sequence_lengths(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
    """(batch, input shape) to check: batch 1 and 3, and with a dynamic sequence axis also a longer one."""
    runs = [(1, tuple(input_shape)), (3, tuple(input_shape))]
    longer = tuple(d + 5 if a in dynamic_axes(model) else d for a, d in enumerate(input_shape))
    return runs + ([(2, longer)] if longer != tuple(input_shape) else [])


def write_if_changed(path: Path, data: bytes) -> str:
    """Write `data` to `path` atomically (temp file + os.replace); report 'new', 'same' or 'changed'."""
    status = "new"
    if path.exists():
        if path.read_bytes() == data:
            return "same"
        status = "changed"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; fixtures are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return status


def count_params(model: onnx.ModelProto) -> int:
    """Number of weight values, whether stored as initializers or as Constant nodes."""
    tensors = list(model.graph.initializer)
    tensors += [
        a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    ]
    return sum(int(np.prod(t.dims)) for t in tensors)


def check_graph_fixture(model: onnx.ModelProto, fixture: GraphFixture) -> float:
    """Check a hand-built fixture and compare onnxruntime with its numpy reference at batch 1 and 3."""
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, *fixture.input_shape[1:])).astype(np.float32)
        expected = fixture.reference(x)
        (actual,) = session.run(None, {"input": x})
        error = float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))
        if error > TOLERANCE:
            raise AssertionError(f"{fixture.name}: relative error {error:.2e} > {TOLERANCE} at batch {batch}")
        worst = max(worst, error)
    return worst


def variants() -> list[tuple[str, str, str, Callable[[], onnx.ModelProto | None]]]:
    """(file stem, source model, description, exporter) for the non-default exports."""
    plain = FIXTURES["plain_cnn"].input_shape
    return [
        (
            "residual_dynamo",
            "residual",
            (
                f"residual exported with dynamo=True at opset {DYNAMO_OPSET}: BN folded into Conv, "
                "GAP as ReduceMean, flatten as a Reshape to the constant shape [-1, 32]."
            ),
            lambda: export_dynamo(build_model("residual"), FIXTURES["residual"].input_shape),
        ),
        (
            "plain_cnn_opset11",
            "plain_cnn",
            "plain_cnn exported at opset 11.",
            lambda: export_torchscript(build_model("plain_cnn"), plain, opset=11),
        ),
        (
            "flatten_gemm_folded",
            "flatten_gemm",
            "flatten_gemm exported with do_constant_folding=True (BN folded into Conv).",
            lambda: export_torchscript(
                build_model("flatten_gemm"), FIXTURES["flatten_gemm"].input_shape, fold_constants=True
            ),
        ),
        (
            "constant_weights",
            "plain_cnn",
            "plain_cnn with every initializer turned into a Constant node (no initializers at all).",
            lambda: initializers_to_constants(export_torchscript(build_model("plain_cnn"), plain)),
        ),
        (
            "identity_weights",
            "plain_cnn",
            "plain_cnn with conv2's weight reached through an Identity node (initializer -> Identity -> Conv).",
            lambda: weight_behind_identity(
                export_torchscript(build_model("plain_cnn"), plain), "conv2.0.weight"
            ),
        ),
        (
            "llama_block_dynamo",
            "llama_block",
            (f"llama_block exported with dynamo=True at opset {DYNAMO_OPSET}: RMSNorm with Reciprocal(Sqrt), "
             "repeat_kv as Expand to a constant shape and Reshape, decomposed scaled-dot-product attention."),
            lambda: export_dynamo(build_model("llama_block"), FIXTURES["llama_block"].input_shape),
        ),
        (
            "bert_block_opset16",
            "bert_block",
            (
                "bert_block exported at opset 16: every LayerNorm decomposed (ReduceMean-Sub-Pow-ReduceMean-Add-"
                "Sqrt-Div-Mul-Add)."
            ),
            lambda: export_torchscript(build_model("bert_block"), FIXTURES["bert_block"].input_shape, opset=16),
        ),
        (
            "bert_block_dynamo",
            "bert_block",
            f"bert_block exported with dynamo=True at opset {DYNAMO_OPSET} (fused LayerNormalization, ReduceMean axes as input).",
            lambda: export_dynamo(build_model("bert_block"), FIXTURES["bert_block"].input_shape),
        ),
        (
            "vit_block_dynamo",
            "vit_block",
            (f"vit_block exported with dynamo=True at opset {DYNAMO_OPSET} (the class token's Expand to a shape "
             "computed from the batch, decomposed scaled-dot-product attention)."),
            lambda: export_dynamo(build_model("vit_block"), FIXTURES["vit_block"].input_shape),
        ),
        (
            "bert_block_seq",
            "bert_block",
            ("bert_block with a dynamic sequence length (input [batch, seq, 12]): head reshapes and the mean over "
             "tokens computed from Shape at run time; checked at two lengths."),
            lambda: export_torchscript(build_model("bert_block"), FIXTURES["bert_block"].input_shape, dynamic=(1,)),
        ),
        (
            "bert_block_seq_dynamo",
            "bert_block",
            f"bert_block_seq exported with dynamo=True at opset {DYNAMO_OPSET} (symbolic sequence length).",
            lambda: export_dynamo(build_model("bert_block"), FIXTURES["bert_block"].input_shape, dynamic=(1,)),
        ),
        (
            "llama_block_seq",
            "llama_block",
            ("llama_block with a dynamic sequence length (input and output [batch, seq, ...]): rotary positions, "
             "repeat_kv's Expand target and the causal mask computed from the length at run time."),
            lambda: export_torchscript(build_model("llama_block"), FIXTURES["llama_block"].input_shape, dynamic=(1,),
                                       dynamic_out=(1,)),
        ),
        (
            "llama_block_seq_dynamo",
            "llama_block",
            f"llama_block_seq exported with dynamo=True at opset {DYNAMO_OPSET} (symbolic sequence length).",
            lambda: export_dynamo(build_model("llama_block"), FIXTURES["llama_block"].input_shape, dynamic=(1,)),
        ),
        (
            "convnextv2_dynamo",
            "convnextv2",
            (
                f"convnextv2 exported with dynamo=True at opset {DYNAMO_OPSET} (the channels-first LayerNorm written "
                "out, ReduceMean axes as input)."
            ),
            lambda: export_dynamo(build_model("convnextv2"), FIXTURES["convnextv2"].input_shape),
        ),
    ]


def main() -> int:
    torch.set_num_threads(1)
    quiet_exporters()
    FIXTURES_DIR.mkdir(exist_ok=True)
    jobs: list[tuple[str, str, str, Callable[[], onnx.ModelProto | None]]] = [
        (
            name,
            name,
            spec.description,
            lambda name=name, spec=spec: export_torchscript(build_model(name), spec.input_shape,
                                                            fold_constants=spec.fold_constants),
        )
        for name, spec in FIXTURES.items()
    ]
    jobs += variants()
    twin = FIXTURES[TWIN].input_shape
    quantized = quantized_variants(lambda: export_torchscript(build_model(TWIN), twin), twin)
    jobs += quantized
    jobs += [(f.name, f.name, f.description, f.build) for f in GRAPH_FIXTURES]

    manifest = []
    statuses: collections.Counter[str] = collections.Counter()
    print(f"{'name':22s} {'bytes':>8s} {'nodes':>6s} {'params':>8s} {'rel.err':>8s}  status")
    for stem, source, description, export in jobs:
        path = FIXTURES_DIR / f"{stem}.onnx"
        model = export()
        if model is None:
            print(f"{stem:22s} skipped: onnxscript is not installed (needed by the dynamo exporter)")
            if not path.exists():
                continue
            model = onnx.load(path)
        if source in GRAPHS:
            input_shape = GRAPHS[source].input_shape
            error = check_graph_fixture(model, GRAPHS[source])
        else:
            input_shape = FIXTURES[source].input_shape
            tolerance = QUANTIZED_TOLERANCE if stem in {q[0] for q in quantized} else TOLERANCE
            error = check_against_torch(model, build_model(source), input_shape, tolerance)
        data = model.SerializeToString()
        status = write_if_changed(path, data)
        statuses[status] += 1
        print(
            f"{stem:22s} {len(data):8d} {len(model.graph.node):6d} {count_params(model):8d} {error:8.1e}  {status}"
        )
        output_shape = [d.dim_value or 1 for d in model.graph.output[0].type.tensor_type.shape.dim]
        manifest.append(
            {
                "name": stem,
                "file": path.name,
                "input_shape": list(input_shape),
                "output_shape": output_shape,
                "description": description,
                **({"dynamic_axes": dynamic_axes(model)} if dynamic_axes(model) else {}),
            }
        )

    manifest.append(
        {
            "name": "digits_cnn",
            "file": "digits_cnn.onnx",
            "input_shape": list(DIGITS_INPUT_SHAPE),
            "output_shape": [1, 10],
            "description": DIGITS_DESCRIPTION,
        }
    )
    status = write_if_changed(
        FIXTURES_DIR / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode()
    )
    statuses[status] += 1
    total = sum(p.stat().st_size for p in FIXTURES_DIR.iterdir() if p.is_file())
    print(f"manifest.json {status}; fixtures/ total {total / 1024:.0f} KiB; files: {dict(statuses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
