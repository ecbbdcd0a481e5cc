"""Transformers from `transformers` configs: how much of each can onnxprune shrink?

Tiny models (2 layers, hidden 64, 4 heads, 2 key/value heads where the architecture has them) are built
from configs with random weights (noise on every parameter, so no exporter merges equal tensors; nothing
is downloaded) and exported with both torch exporters: TorchScript (`dynamo=False`, opset 17) and dynamo
(opset 18). Per model and exporter it reports the channel groups (all, prunable) with attention heads as
units (`attention="heads"`) and as head dims ("dims"), and the *two-sided shrinkable share*: over every Conv/Gemm/MatMul with a
weight, MACs-weighted, the fraction of its two channel axes (input and output) that some prunable group
shrinks (both: 1, one: 1/2) — `inspect`'s "can shrink" figure. Then it prunes 30% of MACs with whole heads and checks sparse == slim
(`prune` verifies it and fails otherwise).

    python benchmarks/transformers.py [MODEL ...]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import io
import json
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
        config._attn_implementation = "sdpa"
        self.name = name
        config.num_labels = 5  # encoders exported with their task head, as deployed: the hidden size is internal
        if name in ("bert", "vit", "whisper"):
            head = {"bert": "BertForSequenceClassification", "vit": "ViTForImageClassification",
                    "whisper": "WhisperForAudioClassification"}[name]
            self.model = getattr(tf, head)(config)
        else:
            self.model = tf.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        self.model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "vit":
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


MODELS = ["bert", "vit", "whisper", "gpt2", "phi", "llama", "qwen2"]


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
    print(json.dumps({"benchmark": "transformers", "models": rows}, default=float))


if __name__ == "__main__":
    main(sys.argv[1:])
