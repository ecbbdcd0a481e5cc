"""The digits data split and CNN shared by train_digits.py, the digits example and the benchmarks.

scikit-learn ships the 8x8 digits data set, so a real trained model can be built and evaluated
offline; keeping the split and architecture here means every user sees the same test set.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

DIGITS_INPUT_SHAPE = (1, 1, 8, 8)
DIGITS_DESCRIPTION = (
    "Small CNN trained on scikit-learn's digits (8x8, 10 classes) by tools/train_digits.py; "
    "test split in digits_test.npz, train split in digits_train.npz."
)


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test): float32 [N,1,8,8] pixels/16 and int64 labels,
    split 75/25, stratified, random_state=0."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_train, y_train, x_test, y_test


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU 1->32->64 (stride 2)->64, global average pool, Linear to 10 classes.

    Deliberately wider than the task needs, so pruning has redundant channels to remove."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 64)) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, 2, 1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.Conv2d(c2, c3, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c3),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, weight_decay: float = 1e-4,
        cosine: bool = True, seed: int = 0, batch: int = 64) -> None:
    """Adam over shuffled mini-batches, cosine-annealed to zero when asked; the shuffles come from
    `seed`, so training is deterministic. Leaves the model in eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(x) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if cosine else None
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), batch):
            idx = order[start:start + batch]
            optimizer.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
    model.eval()
