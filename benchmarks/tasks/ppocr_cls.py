"""PP-OCR text direction classifier (rapidocr_onnxruntime 1.4.4): top-1 on rendered lines, half of them
rotated by 180 degrees. Labels as rapidocr's label_list: 0 = '0', 1 = '180'. Preprocessing as rapidocr's
cls resize_norm_img: height 48 keeping the aspect, [-1, 1], zero-padded right to 192."""

from __future__ import annotations

import numpy as np
import onnx

from . import Task, from_wheel, run_batched
from .text_lines import random_text, render, to_input

PACKAGE = "rapidocr_onnxruntime==1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
CALIB, EVAL = 256, 600
HEIGHT, WIDTH = 48, 192


def lines(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rendered lines and their labels; odd samples are rotated (label 1)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = [render(random_text(rng), rng) for _ in range(count)]
    images = [np.ascontiguousarray(im[::-1, ::-1]) if label else im for im, label in zip(images, labels)]
    return np.stack([to_input(im, HEIGHT, WIDTH) for im in images]), labels


def load(samples_calib: int) -> Task:
    path = from_wheel(PACKAGE, MEMBER)
    calib, _ = lines(samples_calib, seed=11)
    x_eval, labels = lines(EVAL, seed=12)

    def evaluate(proto: onnx.ModelProto) -> float:
        return float(np.mean(run_batched(proto, {"x": x_eval}, batch=100)[0].argmax(1) == labels))

    shapes = {"x": (1, 3, HEIGHT, WIDTH)}
    return Task("PP-OCR cls", "classifier", path, shapes, {"x": calib}, "top-1", evaluate)
