"""From-scratch ResNet-18/50 (torchvision layout and parameter names) for benchmarks.

Weights are random (seed 0, non-trivial BN): benchmarks measure pruning speed and graph handling on a
real-sized network, not accuracy. The exported files are ~45/100 MB and are never committed.
Usage: `python tools/resnet50.py OUT.onnx [--resnet18] [--input-size 224]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so `python tools/resnet50.py` can import tools.*
    sys.path.insert(0, str(ROOT))

from tools.fixture_models import BasicBlock, Bottleneck, randomize_norms
from tools.make_fixtures import (
    check_against_torch,
    export_torchscript,
    quiet_exporters,
    write_if_changed,
)


class ResNet(nn.Module):
    """torchvision's ResNet: 7x7/2 stem, 3x3/2 max pool, four stages (stride 2 from the second on,
    placed on the 3x3 conv as in ResNet v1.5), global average pool, fc."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], classes: int = 1000) -> None:
        super().__init__()
        expansion = 4 if block is Bottleneck else 1
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        stages = []
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks: list[nn.Module] = []
            for i in range(count):
                stride = 2 if index > 0 and i == 0 else 1
                if block is Bottleneck:
                    blocks.append(Bottleneck(c_in, planes, stride))
                else:
                    blocks.append(BasicBlock(c_in, planes, stride))
                c_in = planes * expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50() -> ResNet:
    """ResNet-50 (3-4-6-3 bottlenecks, 25.6M parameters), seed 0, random non-trivial BN, eval mode."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [3, 4, 6, 3])
    randomize_norms(model)
    return model.eval()


def resnet18() -> ResNet:
    """ResNet-18 (2-2-2-2 basic blocks, 11.7M parameters), seed 0, random non-trivial BN, eval mode."""
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [2, 2, 2, 2])
    randomize_norms(model)
    return model.eval()


def _export(model: ResNet, path: str | Path, input_size: int) -> Path:
    """Export with the fixture settings (opset 17, BN kept, dynamic batch), verify, write atomically."""
    quiet_exporters()
    shape = (1, 3, input_size, input_size)
    exported = export_torchscript(model, shape)
    check_against_torch(exported, model, shape)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_if_changed(target, exported.SerializeToString())
    return target


def export_resnet50(path: str | Path, input_size: int = 224) -> Path:
    """Export a random-weight ResNet-50 to `path` (about 100 MB)."""
    return _export(resnet50(), path, input_size)


def export_resnet18(path: str | Path, input_size: int = 224) -> Path:
    """Export a random-weight ResNet-18 to `path` (about 45 MB)."""
    return _export(resnet18(), path, input_size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--resnet18", action="store_true", help="export ResNet-18 instead of ResNet-50")
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args()
    export = export_resnet18 if args.resnet18 else export_resnet50
    path = export(args.output, args.input_size)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
