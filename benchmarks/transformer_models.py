"""Transformers from `transformers` configs: how much of each can onnxprune shrink?

Tiny models (2 layers, hidden 64, 4 heads, 2 key/value heads where the architecture has them) are built
from configs with random weights (noise on every parameter, so no exporter merges equal tensors; nothing
is downloaded) and exported with both torch exporters: TorchScript (`dynamo=False`, opset 17) and dynamo
(opset 18). Per model and exporter it reports the channel groups (all, prunable) with attention heads as
units (`attention="heads"`) and as head dims ("dims"), and the *two-sided shrinkable share*: over every Conv/Gemm/MatMul with a
weight, MACs-weighted, the fraction of its two channel axes (input and output) that some prunable group
shrinks (both: 1, one: 1/2) — `inspect`'s "can shrink" figure. Then it prunes 30% of MACs with whole heads and checks sparse == slim
(`prune` verifies it and fails otherwise). Last, at that MACs target, the MACs removed per part
(attention, FFN, hidden, other) by onnxprune and by Torch-Pruning (`pip install torch-pruning`; its ratio
bisected to the same total, in a child process given `TP_SECONDS`): `compare_parts`.

    python benchmarks/transformer_models.py [MODEL ...]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import queue as queue_module
import sys
import warnings
from pathlib import Path

import onnx
import torch

import onnxprune
from onnxprune.graph.load import from_proto
from onnxprune.pruning.inspect import inspect_model
from onnxprune.pruning.prune import PruneOptions, prune

SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
SEQ = 8


def _config(name: str):
    import transformers as tf

    if name == "convnextv2":  # no attention: its channels run through channels-first LayerNorms and GRN
        return tf.ConvNextV2Config(num_channels=3, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32)
    if name == "bert":
        return tf.BertConfig(**SMALL, vocab_size=100, max_position_embeddings=32)
    if name == "vit":
        return tf.ViTConfig(**SMALL, image_size=16, patch_size=4, num_channels=3)
    if name == "gpt2":
        return tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=128, vocab_size=100, n_positions=32)
    if name == "phi":
        return tf.PhiConfig(**SMALL, vocab_size=100, max_position_embeddings=32, partial_rotary_factor=0.5)
    if name == "whisper":
        return tf.WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                                decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128,
                                num_mel_bins=8, max_source_positions=SEQ, vocab_size=100, pad_token_id=0,
                                bos_token_id=0, eos_token_id=0, decoder_start_token_id=0)
    kv = {"num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 32}
    return (tf.LlamaConfig if name == "llama" else tf.Qwen2Config)(**SMALL, **kv)


class _Wrapped(torch.nn.Module):
    """One tensor in, one out: what the exporters and onnxprune's random inputs want."""

    def __init__(self, name: str):
        super().__init__()
        import transformers as tf

        config = _config(name)
        if name != "convnextv2":
            config._attn_implementation = "sdpa"
        self.name = name
        config.num_labels = 5  # encoders exported with their task head, as deployed: the hidden size is internal
        if name in ("bert", "vit", "whisper", "convnextv2"):
            head = {"bert": "BertForSequenceClassification", "vit": "ViTForImageClassification",
                    "whisper": "WhisperForAudioClassification",
                    "convnextv2": "ConvNextV2ForImageClassification"}[name]
            self.model = getattr(tf, head)(config)
        else:
            self.model = tf.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        self.model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name in ("vit", "convnextv2"):
            return self.model(pixel_values=x).logits
        if self.name == "whisper":
            return self.model(input_features=x).logits
        if self.name == "bert":
            return self.model(input_ids=x).logits
        # a mask of ones (as real exports pass one) keeps transformers from its packed-sequence check (aten::diff)
        return self.model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits


def example_input(name: str) -> torch.Tensor:
    if name == "vit":
        return torch.randn(1, 3, 16, 16)
    if name == "convnextv2":
        return torch.randn(1, 3, 32, 32)
    if name == "whisper":
        return torch.randn(1, 8, 2 * SEQ)
    return torch.randint(0, 100, (1, SEQ))


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return _Wrapped(name).eval()


def export(name: str, exporter: str) -> onnx.ModelProto:
    """The model exported by "torchscript" (opset 17) or "dynamo" (opset 18), batch dynamic."""
    model, x = build(name), example_input(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, input_names=["input"],
                                        output_names=["output"], verbose=False)
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, do_constant_folding=False,
                          input_names=["input"], output_names=["output"])
        return onnx.load_from_string(buffer.getvalue())


def measure(name: str, exporter: str) -> dict:
    """Groups, heads and shares with attention pruned by head dims and by whole heads; prune 30% (heads)."""
    row = {"model": name, "exporter": exporter}
    try:
        proto = export(name, exporter)
    except Exception as exc:  # noqa: BLE001 - an export failure is a result here
        return {**row, "status": f"export failed: {type(exc).__name__}: {str(exc)[:80]}"}
    model = from_proto(proto)
    # queries, keys, values and scores: 4-D inputs of a MatMul of two activations (a tied LM head is 2-D)
    scores = {t.name for n in model.graph.nodes if n.op == "MatMul" and not any(hasattr(t, "values") for t in n.inputs)
              for t in n.inputs if len(model.shapes.get(t.name, ())) >= 4}
    for mode in ("dims", "heads"):
        groups = onnxprune.find_groups(model, mode)
        attention = [g for g in groups if any(m.tensor in scores for m in g.members)]
        row[mode] = {"groups": len(groups), "prunable": sum(g.prunable for g in groups),
                     "attention": f"{sum(g.prunable for g in attention)}/{len(attention)}",
                     "share": round(inspect_model(model, groups).shrinkable_macs, 3),
                     "reasons": sorted({g.reason for g in groups if g.reason})}
    try:
        result = prune(model, PruneOptions(ratio=0.3, attention="heads"))
        row.update(macs_removed=round(result.plan.macs_ratio, 3), diff=result.difference, status="ok")
    except Exception as exc:  # noqa: BLE001
        row.update(status=f"prune failed: {type(exc).__name__}: {str(exc)[:100]}")
    return row


# --- MACs removed per part, next to Torch-Pruning ---------------------------------------------------

PARTS = ("attention", "ffn", "hidden", "other")  # heads (or head dims), FFN width, residual width, the rest
LAYER_OPS = ("MatMul", "Gemm", "Conv")


def _axes(module: str, pooled: set[str]) -> tuple[str, str]:
    """(output, input) axis of a layer by its module's name: which dimension each is. "fixed": image
    channels, mel bins, classes, vocabulary; "other": a pooler's, a projector's, Whisper's first conv's."""
    last = module.rsplit(".", 1)[-1]
    if "attn" in module or "attention" in module:
        return ("hidden", "attention") if last in ("o_proj", "out_proj", "dense", "c_proj") else ("attention", "hidden")
    if last in ("fc1", "up_proj", "gate_proj", "c_fc") or module.endswith("intermediate.dense"):
        return "ffn", "hidden"
    if last in ("fc2", "down_proj") or module.endswith(("output.dense", "mlp.c_proj")):
        return "hidden", "ffn"
    if last in ("classifier", "lm_head"):
        return "fixed", "other" if pooled else "hidden"  # BERT's pooler, Whisper's projector come before it
    if module.endswith(("pooler.dense", "projector")):
        return "other", "hidden"
    if last == "conv1":
        return "other", "fixed"
    return ("hidden", "other") if last == "conv2" else ("hidden", "fixed")  # Whisper's conv2; ViT's patches


def _dims(module: torch.nn.Module) -> tuple[int, int]:
    """(output, input) channels of a layer; transformers' Conv1D (GPT-2) stores its weight [in, out]."""
    w = module.weight
    if type(module).__name__ == "Conv1D":
        return int(w.shape[1]), int(w.shape[0])
    groups = getattr(module, "groups", 1)
    return int(w.shape[0]), int(w.shape[1]) * groups


def _layers(model, torch_model: torch.nn.Module) -> dict[str, tuple[str, bool]]:
    """ONNX layer (TorchScript names follow module paths) -> (module, True) for a layer with a weight, or
    (the module it sits in, False) for a product of two activations; only layers with MACs."""
    from onnxprune.pruning.cost import layer_costs

    modules = set(_dims_of(torch_model))
    nodes = {n.name: n for n in model.graph.nodes}
    found = {}
    for cost in layer_costs(model):
        node = nodes.get(cost.node)
        if node is None or node.op not in LAYER_OPS or not cost.macs:
            continue
        path = cost.node.strip("/").replace("/", ".")  # "/model/layers.0/fc1/MatMul" -> "model.layers.0.fc1.MatMul"
        weighted = any(hasattr(t, "values") for t in node.inputs[1:])
        owner = max((m for m in modules if path.startswith(m + ".")), key=len, default=None)
        found[cost.node] = (owner if weighted and owner else path.rsplit(".", 1)[0], weighted)
    return found


def _attribute(macs: float, kinds: tuple[str, str], r_out: float, r_in: float, parts: dict) -> None:
    """Split a layer's removed MACs between its two axes (Shapley: each axis' cut at the mean of the other
    axis before and after), M (1 - r_out)(1 + r_in) / 2 to the output's part and the mirror to the input's."""
    parts[kinds[0]] = parts.get(kinds[0], 0.0) + macs * (1 - r_out) * (1 + r_in) / 2
    parts[kinds[1]] = parts.get(kinds[1], 0.0) + macs * (1 - r_in) * (1 + r_out) / 2


def _split(layers: dict, macs: dict, ratios: dict, names: set[str]) -> dict[str, float]:
    """MACs removed per part, from each layer's (output, input) kept ratios; products of two activations
    (attention's scores and context) go to attention whole."""
    parts: dict[str, float] = dict.fromkeys(PARTS, 0.0)
    pooled = {n for n in names if n.endswith(("pooler.dense", "projector"))}
    for node, (module, weighted) in layers.items():
        r_out, r_in = ratios[node]
        if weighted:
            _attribute(macs[node], _axes(module, pooled), r_out, r_in, parts)
        else:
            parts["attention"] += macs[node] * (1 - r_out * r_in)
    parts.pop("fixed", None)
    return parts


def _onnxprune_ratios(model, slim, layers: dict) -> dict[str, tuple[float, float]]:
    """Per layer of the slim model: kept fraction of its output channels, and of its inputs (from MACs)."""
    from onnxprune.pruning.cost import layer_costs
    from onnxprune.rules import entry_for

    before = {c.node: c.macs for c in layer_costs(model)}
    after = {c.node: c.macs for c in layer_costs(slim)}
    nodes = {n.name: n for n in model.graph.nodes}
    ratios = {}
    for name in layers:
        node, total = nodes[name], after.get(name, 0) / before[name]
        axis = entry_for(node).out_axis
        out = node.outputs[0].name
        r_out = slim.shapes[out][axis] / model.shapes[out][axis] if layers[name][1] else 1.0
        ratios[name] = (r_out, total / r_out if r_out else 0.0)
    return ratios


def _torch_pruning(name: str, ratio: float) -> dict[str, tuple[int, int]]:
    """Torch-Pruning's MetaPruner on the same model (seed 0): L2 magnitude, one ratio for every channel
    group (hidden, FFN) and for the heads (whole heads, key/value heads for GQA, as its LLM example does),
    classifier or LM head ignored. -> (output, input) channels per module after."""
    import torch_pruning as tp

    wrapper, x = build(name), example_input(name)
    config = wrapper.model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    num_heads, ignored = {}, []
    for module_name, module in wrapper.named_modules():
        last = module_name.rsplit(".", 1)[-1]
        if last in ("q_proj", "query", "c_attn"):
            num_heads[module] = heads
        elif last in ("k_proj", "v_proj", "key", "value"):
            num_heads[module] = kv_heads
        elif last in ("classifier", "lm_head"):
            ignored.append(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(wrapper, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, head_pruning_ratio=ratio, num_heads=num_heads,
                                      prune_num_heads=True, prune_head_dims=False, ignored_layers=ignored)
        pruner.step()
    return {n: _dims(m) for n, m in wrapper.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.dim() >= 2 and not isinstance(m, torch.nn.Embedding)}


def _tp_ratios(layers: dict, before: dict, after: dict) -> dict[str, tuple[float, float]]:
    """Per ONNX layer, Torch-Pruning's kept fractions: a weight's output and input channels; a product of
    two activations in attention scales with its module's query width."""
    ratios = {}
    for node, (module, weighted) in layers.items():
        if weighted:
            (o, i), (o2, i2) = before[module], after[module]
            ratios[node] = (o2 / o, i2 / i)
        else:
            prefix = module + "."
            queries = [n for n in before if n.startswith(prefix) and n.rsplit(".", 1)[-1] in ("q_proj", "query", "c_attn")]
            ratios[node] = (1.0, after[queries[0]][0] / before[queries[0]][0]) if queries else (1.0, 1.0)
    return ratios


def compare_parts(name: str, target: float = 0.3) -> dict:
    """At onnxprune's MACs removed (`--ratio target --attention heads`, TorchScript export), the MACs each
    tool removes per part, as a share of the model's MACs; Torch-Pruning's ratio is bisected to the same
    total (its pruned modules are measured, not run: transformers' modules need their head counts
    rewritten by hand after it)."""
    from onnxprune.pruning.cost import layer_costs

    model = from_proto(export(name, "torchscript"))
    torch_model = build(name)
    layers = _layers(model, torch_model)
    macs = {c.node: c.macs for c in layer_costs(model)}
    total = sum(macs.values())
    result = prune(model, PruneOptions(ratio=target, attention="heads"))
    slim = from_proto(result.model)
    ours = _split(layers, macs, _onnxprune_ratios(model, slim, layers), set(_dims_of(torch_model)))
    row = {"model": name, "onnxprune": {k: v / total for k, v in ours.items()}, "total": result.plan.macs_ratio}
    before = _dims_of(torch_model)
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(
        target=_bisect_torch_pruning, args=(queue, name, layers, macs, before, result.plan.macs_ratio))
    child.start()
    try:
        row.update(queue.get(timeout=TP_SECONDS))
    except queue_module.Empty:
        row["torch_pruning"] = f"did not finish in {TP_SECONDS} s (its dependency graph's group search)"
    finally:
        child.kill()
        child.join()
    return row


TP_SECONDS = 120  # Torch-Pruning's group search did not end on Phi, Llama, Qwen2 here (BERT: 13 s in all)


def _bisect_torch_pruning(queue, name: str, layers: dict, macs: dict, before: dict, target: float) -> None:
    """In a child process (killed when it takes too long): Torch-Pruning's ratio bisected until the MACs
    it removes, counted as onnxprune counts them, reach `target`; puts the parts (or the failure)."""
    total = sum(macs.values())
    try:
        low, high, theirs, ratio = 0.0, 0.95, {}, 0.0
        for _ in range(8):
            ratio = (low + high) / 2
            theirs = _split(layers, macs, _tp_ratios(layers, before, _torch_pruning(name, ratio)), set(before))
            low, high = (ratio, high) if sum(theirs.values()) / total < target else (low, ratio)
        if not sum(theirs.values()):  # GPT-2: its Conv1D layers are parameters it does not know, no group
            queue.put({"torch_pruning": f"removes nothing even at ratio {ratio:.2f} (no group found)"})
            return
        queue.put({"torch_pruning": {k: v / total for k, v in theirs.items()}, "tp_ratio": ratio})
    except Exception as exc:  # noqa: BLE001 - a failure of the other tool is a result here
        queue.put({"torch_pruning": f"{type(exc).__name__}: {str(exc)[:80]}"})


def _dims_of(torch_model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    return {n: _dims(m) for n, m in torch_model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.dim() >= 2 and not isinstance(m, torch.nn.Embedding)}


MODELS = ["bert", "vit", "whisper", "gpt2", "phi", "llama", "qwen2", "convnextv2"]


def main(argv: list[str]) -> None:
    # run as a script, this file's folder comes first on the path and this file would shadow `transformers`
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    torch.set_num_threads(1)
    names = argv or MODELS
    rows = [measure(n, e) for n in names for e in ("torchscript", "dynamo")]
    print(f"{'model':<8} {'exporter':<11} {'groups':>6}  {'prunable dims/heads':>19}  {'attention dims/heads':>20}  "
          f"{'share dims/heads':>16} {'MACs -':>7}  status")
    for r in rows:
        d, h = r.get("dims", {}), r.get("heads", {})
        print(f"{r['model']:<8} {r['exporter']:<11} {h.get('groups', '-'):>6}  "
              f"{str(d.get('prunable', '-')) + ' / ' + str(h.get('prunable', '-')):>19}  "
              f"{str(d.get('attention', '-')) + ' / ' + str(h.get('attention', '-')):>20}  "
              f"{d.get('share', 0):>7.2f} / {h.get('share', 0):<6.2f} {r.get('macs_removed', 0):>7.1%}  {r['status']}")
        for reason in h.get("reasons", [])[:3]:
            print(f"    {reason[:150]}")
    parts = [compare_parts(n) for n in names if n != "convnextv2"]  # the parts are attention's, FFN's, hidden
    print_parts(parts)
    print(json.dumps({"benchmark": "transformers", "models": rows, "parts": parts}, default=float))


def print_parts(rows: list[dict]) -> None:
    """MACs removed per part (% of the model's MACs), onnxprune next to Torch-Pruning at the same total."""
    print(f"\nMACs removed per part at the same total (TorchScript export; % of the model's MACs)\n"
          f"{'model':<8} {'tool':<14} {'total':>6} " + " ".join(f"{p:>9}" for p in PARTS))
    for r in rows:
        for tool in ("onnxprune", "torch_pruning"):
            parts = r.get(tool)
            if isinstance(parts, dict):
                cells = " ".join(f"{parts.get(p, 0):>9.1%}" for p in PARTS)
                print(f"{r['model']:<8} {tool:<14} {sum(parts.values()):>6.1%} {cells}")
            else:
                print(f"{r['model']:<8} {tool:<14} {parts}")


if __name__ == "__main__":
    main(sys.argv[1:])
