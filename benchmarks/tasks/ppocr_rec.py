"""PP-OCRv4 text-line recognizer (rapidocr_onnxruntime 1.4.4): exact-string accuracy on rendered lines.

Preprocessing and decoding follow rapidocr's own code in the wheel: resize to height 48 keeping the aspect,
normalize to [-1, 1], pad right to 320; CTC greedy decoding (merge repeats, drop blanks) with the character
list from the model's metadata, blank at index 0 and a space appended at the end.
"""

from __future__ import annotations

import numpy as np
import onnx

from . import Task, from_wheel, run_batched
from .text_lines import random_text, render, to_input

PACKAGE, MEMBER = "rapidocr_onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
CALIB, EVAL = 256, 300
ANALYSIS = 64  # analysis of 25 groups on 48x320 lines dominates the run time: on the first 64 lines only
HEIGHT, WIDTH = 48, 320


def lines(count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    texts = [random_text(rng) for _ in range(count)]
    return np.stack([to_input(render(t, rng), HEIGHT, WIDTH) for t in texts]), texts


def ctc_greedy(probs: np.ndarray, charset: list[str]) -> list[str]:
    best = probs.argmax(axis=2)
    keep = np.ones_like(best, dtype=bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != 0
    return ["".join(charset[i] for i in row[mask]) for row, mask in zip(best, keep)]


def char_accuracy(pred: str, truth: str) -> float:
    """1 - edit distance / len(truth), floored at 0."""
    prev = list(range(len(pred) + 1))
    for i, t in enumerate(truth, 1):
        cur = [i]
        for j, p in enumerate(pred, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (p != t)))
        prev = cur
    return max(0.0, 1 - prev[-1] / max(1, len(truth)))


def load(samples_calib: int) -> Task:
    path = from_wheel(PACKAGE, MEMBER)
    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    charset = ["<blank>"] + meta["character"].splitlines() + [" "]
    calib, _ = lines(samples_calib, seed=1)
    x_eval, texts = lines(EVAL, seed=2)

    def evaluate(proto: onnx.ModelProto) -> float:
        preds = ctc_greedy(run_batched(proto, {"x": x_eval}, batch=50)[0], charset)
        task.extra["char_accuracy"] = float(np.mean([char_accuracy(p, t) for p, t in zip(preds, texts)]))
        return float(np.mean([p == t for p, t in zip(preds, texts)]))

    shapes = {"x": (1, 3, HEIGHT, WIDTH)}
    task = Task("PP-OCRv4 rec", "ocr", path, shapes, {"x": calib}, "exact-string", evaluate,
                analysis_samples=ANALYSIS)
    return task
