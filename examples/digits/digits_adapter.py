"""The digits example's PyTorch side: data split, training, top-1, and the adapter factory.

The data is scikit-learn's bundled digits (`tools.digits_data`: 75/25 train/test, stratified,
random_state=0). The loop picks trials and accepts rounds on a validation split carved out of the train
split (20%, stratified), so the test split is only looked at for the final numbers.

`make_adapter` is also what `onnxprune iterate --config examples/digits/run.toml` calls.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # so `python examples/digits/run.py` can import tools.*
    sys.path.insert(0, str(ROOT))

from onnxprune.adapters.torch import TorchAdapter
from tools.digits_data import DIGITS_INPUT_SHAPE, DigitsCNN, fit, load_digits_split

OUT = Path(__file__).resolve().parent / "out"
BASELINE = OUT / "baseline.onnx"
BASELINE_EPOCHS = 30
BATCH = 64


@cache
def split() -> dict[str, np.ndarray]:
    """fit / val (from the train split) and test arrays: x float32 [N,1,8,8] = pixels/16, y int64."""
    x_train, y_train, x_test, y_test = load_digits_split()
    x_fit, x_val, y_fit, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0, stratify=y_train)
    return {"x_fit": x_fit, "y_fit": y_fit, "x_val": x_val, "y_val": y_val, "x_test": x_test, "y_test": y_test}


def train(module: nn.Module, settings: dict[str, Any]) -> None:
    """Adam over shuffled mini-batches of the fit split; `settings`: lr, epochs, decay (cosine | none),
    weight_decay, seed. Deterministic for given settings."""
    torch.manual_seed(int(settings.get("seed", 0)))
    data = split()
    fit(module, data["x_fit"], data["y_fit"], int(settings.get("epochs", 10)), lr=float(settings.get("lr", 3e-3)),
        weight_decay=float(settings.get("weight_decay", 1e-4)), cosine=settings.get("decay", "cosine") == "cosine",
        seed=int(settings.get("seed", 0)), batch=BATCH)


def top1(module: nn.Module, part: str = "val") -> float:
    """Top-1 accuracy in percent on a split (the loop's metric: validation)."""
    data = split()
    with torch.no_grad():
        predicted = module(torch.from_numpy(data[f"x_{part}"])).argmax(1).numpy()
    return float((predicted == data[f"y_{part}"]).mean() * 100)


def make_adapter() -> TorchAdapter:
    """A DigitsCNN wrapped for the loop; trains and writes the baseline on first use."""
    torch.set_num_threads(1)  # deterministic, and as fast as two threads on a model this small
    torch.manual_seed(0)
    module = DigitsCNN()
    adapter = TorchAdapter(module, torch.zeros(DIGITS_INPUT_SHAPE), train=train, evaluate=top1)
    if BASELINE.is_file():
        import onnx

        adapter.load(onnx.load(str(BASELINE)))
    else:
        train(module, {"lr": 3e-3, "epochs": BASELINE_EPOCHS, "decay": "cosine"})
        from onnxprune.graph.save import save

        save(adapter.export(), BASELINE)
    return adapter
