"""YOLOv8n detector (nudenet 3.4.2's 320n.onnx) on crops, flips and rescalings of scikit-learn's two sample
photos. No labels exist for these images, so the metric is *fidelity*: 1 - the mean over images of
||y - y0|| / ||y0||, y0 the unpruned model's output on the same image (1.0 for the unpruned model)."""

from __future__ import annotations

import numpy as np
import onnx
from PIL import Image

from . import Task, from_wheel, run_batched

PACKAGE, MEMBER = "nudenet==3.4.2", "nudenet/320n.onnx"
CALIB, EVAL, SIZE = 32, 64, 320  # calibration kept small: 59 groups to analyze


def crops(count: int, seed: int) -> np.ndarray:
    """Random square crops (40-100% of the short side), half mirrored, resized to SIZE; RGB/255, NCHW."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, SIZE, SIZE), dtype=np.float32)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((SIZE, SIZE), Image.BILINEAR)
        pixels = np.asarray(crop, dtype=np.float32) / 255
        out[i] = (pixels[:, ::-1] if rng.random() < 0.5 else pixels).transpose(2, 0, 1)
    return out


def load(samples_calib: int) -> Task:
    path = from_wheel(PACKAGE, MEMBER)
    x_eval = crops(EVAL, seed=22)
    reference = run_batched(onnx.load(path), {"images": x_eval}, batch=16)

    def evaluate(proto: onnx.ModelProto) -> float:
        outputs = run_batched(proto, {"images": x_eval}, batch=16)
        distances = [np.linalg.norm((y - y0).reshape(len(y), -1), axis=1)
                     / np.linalg.norm(y0.reshape(len(y0), -1), axis=1) for y, y0 in zip(outputs, reference)]
        return float(1 - np.mean(distances))

    return Task("YOLOv8n (nudenet)", "detector", path, {"images": (1, 3, SIZE, SIZE)},
                {"images": crops(samples_calib, seed=21)}, "fidelity", evaluate)
