"""What reconstruction (pruning with calibration data) costs on a ResNet-50-sized model: time and peak memory.

Goal (the recovery issue): "reconstruction of a ResNet-50-sized model from 256 calibration images in under
3 minutes on this machine, peak memory under 4x the model file plus the calibration data". Four runs of
`onnxprune prune MODEL --ratio 0.3 -o OUT`, each in its own child process:

    (a) no data                       today's prune (criterion l1, no calibration data)
    (b) --data --no-reconstruct --criterion act    data-aware channel choice only
    (c) --data --criterion l1         reconstruction, magnitude choice
    (d) --data --criterion act        act choice + reconstruction
    (e) --data                        the default with data: greedy choice + reconstruction

Wall time and the child's peak RSS come from `/usr/bin/time -v` (or, where it is missing, a small Python
wrapper reading getrusage(RUSAGE_CHILDREN) after the wait); the idle interpreter (`import onnxprune.cli`,
as in prune_speed.py) is measured the same way and subtracted for "above idle". The memory goal is judged
on the peak above idle against 4 x the model file + the calibration .npz (and, looser, 4 x their sum).

Calibration data: 256 real photographs' crops, 3x224x224 float32 — scikit-learn's two sample images
(china.jpg, flower.jpg) cut into random square crops (side 160-427 px, i.e. 0.5x-1.4x zoom once resized to
224), flipped at random, normalized with the ImageNet mean/std; saved as an .npz named after the model's
input. The model is built by tools/resnet50.py into benchmarks/out/ (random weights, not committed).

onnxruntime and numpy (OpenBLAS) run with their defaults, i.e. every core: this machine has 2 cores and is
shared, so times swing between runs; CPU seconds (user + sys) are printed beside wall time.

    python benchmarks/recovery_cost.py [--ratio 0.3] [--samples 256] [--only a,c]

Prints a table, then one JSON line {"benchmark": "recovery_cost", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
GOAL_SECONDS = 180.0
GOAL_X = 4.0  # peak (above idle) < 4 x model file + calibration data
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
VARIANTS = {  # key -> (label, extra CLI flags; CALIB is replaced by the calibration file)
    "a": ("(a) no data", []),
    "b": ("(b) act choice only", ["--data", "CALIB", "--no-reconstruct", "--criterion", "act"]),
    "c": ("(c) reconstruction", ["--data", "CALIB", "--criterion", "l1"]),  # l1 said: with data the default is greedy
    "d": ("(d) act + reconstruction", ["--data", "CALIB", "--criterion", "act"]),
    "e": ("(e) greedy + reconstruction (default)", ["--data", "CALIB"]),
}
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None  # GNU time: -v reports the peak RSS





def build_model() -> Path:
    model = OUT / "resnet50.onnx"
    if not model.exists():
        sys.path.insert(0, str(ROOT))
        from tools.resnet50 import export_resnet50

        export_resnet50(str(model))
    return model


def calibration(model: Path, samples: int, seed: int = 0) -> Path:
    """`samples` real-image crops as (N, 3, 224, 224) float32 in an .npz keyed by the model's input name."""
    import onnx
    from PIL import Image
    from sklearn.datasets import load_sample_images

    graph = onnx.load(str(model), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    (name,) = [i.name for i in graph.input if i.name not in initializers]
    path = OUT / f"resnet50_calib{samples}.npz"
    if path.exists():
        with np.load(path) as data:
            if list(data.keys()) == [name] and data[name].shape == (samples, 3, 224, 224):
                return path
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(img) for img in load_sample_images().images]  # two 427x640 RGB photos
    batch = np.empty((samples, 3, 224, 224), dtype=np.float32)
    for k in range(samples):
        photo = photos[k % len(photos)]
        w, h = photo.size
        side = int(rng.integers(160, min(w, h) + 1))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((x, y, x + side, y + side)).resize((224, 224), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(crop, dtype=np.float32) / 255.0
        batch[k] = ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{name: batch})
    os.replace(tmp, path)
    return path


def measure(command: list[str], timeout: float) -> dict:
    """Run `command` as a child; its wall seconds, CPU seconds, peak RSS (MiB), exit code and output."""
    if TIME:
        with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
            start = time.perf_counter()
            proc = subprocess.run([TIME, "-v", "-o", report.name, *command], capture_output=True, text=True,
                                  timeout=timeout, check=False)
            seconds = time.perf_counter() - start
            text = report.read()
        fields = dict(re.findall(r"^\s*(.+?):\s+(\S+)\s*$", text, re.MULTILINE))
        peak = int(fields["Maximum resident set size (kbytes)"]) / 1024
        cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
    else:  # a wrapper whose only child is the command: RUSAGE_CHILDREN is that child's
        wrapper = [sys.executable, "-c", (
            "import json, resource, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            "p = subprocess.run(json.loads(sys.argv[1]))\n"
            "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(json.dumps([time.perf_counter() - t, r.ru_maxrss / 1024, r.ru_utime + r.ru_stime, p.returncode]),"
            " file=sys.stderr)\n"), json.dumps(command)]
        start = time.perf_counter()
        proc = subprocess.run(wrapper, capture_output=True, text=True, timeout=timeout, check=False)
        *lines, last = proc.stderr.rstrip().splitlines() or [""]
        seconds, peak, cpu, rc = json.loads(last)
        proc = subprocess.CompletedProcess(command, rc, proc.stdout, "\n".join(lines))
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak, "rc": proc.returncode,
            "stdout": proc.stdout, "stderr": proc.stderr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, default=0.3, help="fraction of MACs to remove")
    parser.add_argument("--samples", type=int, default=256, help="calibration images")
    parser.add_argument("--only", default="a,b,c,d", help="variants to run (a,b,c,d)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child before giving up")
    args = parser.parse_args()
    keys = [k for k in args.only.split(",") if k]
    OUT.mkdir(parents=True, exist_ok=True)
    model = build_model()
    calib = calibration(model, args.samples)
    model_mb, data_mb = model.stat().st_size / 2**20, calib.stat().st_size / 2**20
    budget_mb = GOAL_X * model_mb + data_mb
    output = OUT / "resnet50_recovery_cost.onnx"
    cli = [sys.executable, "-m", "onnxprune.cli"]
    env_note = f"{os.cpu_count()} cores (shared), load average {os.getloadavg()[0]:.2f} at start"

    idle = measure([sys.executable, "-c", "import onnxprune.cli"], 300)
    if idle["rc"]:
        raise SystemExit(f"import onnxprune.cli failed:\n{idle['stderr']}")
    idle_mb = idle["peak_mb"]
    rows: dict[str, dict] = {}
    for key in keys:
        label, extra = VARIANTS[key]
        flags = [str(calib) if f == "CALIB" else f for f in extra]
        command = cli + ["prune", str(model), "--ratio", str(args.ratio), "-o", str(output), *flags]
        print(f"running {label}: onnxprune {' '.join(command[3:])}", file=sys.stderr, flush=True)
        row = measure(command, args.timeout)
        row["label"] = label
        if row["rc"]:
            error = [line for line in row["stderr"].splitlines() if line.strip()][-1:] or ["(no message)"]
            row["error"] = error[0].split("\r")[-1].strip()
            print(f"  FAILED (exit code {row['rc']}): {row['error']}", file=sys.stderr, flush=True)
        row["above_idle_mb"] = row["peak_mb"] - idle_mb
        # the CLI reports on stderr; a progress bar redraws with \r, keep what each line ends as
        lines = [seg.split("\r")[-1].strip() for seg in (row["stdout"] + row["stderr"]).split("\n")]
        row["summary"] = [line for line in lines if line and not line.startswith(("MACs", "params", "before"))
                          and not re.search(r"\bETA\b|\d+/\d+ ", line)]
        (OUT / f"recovery_cost_{key}.log").write_text(row["stdout"] + row["stderr"])
        rows[key] = row
        print(f"  {row['seconds']:.1f} s, peak {row['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    output.unlink(missing_ok=True)

    a = rows.get("a")
    base = a["seconds"] if a and not a["rc"] else None
    for row in rows.values():  # a failed run meets no goal
        row["time_ok"] = not row["rc"] and row["seconds"] < GOAL_SECONDS
        row["memory_ok"] = not row["rc"] and row["above_idle_mb"] < budget_mb
    print(f"model: {model.name}, {model_mb:.1f} MB; calibration: {calib.name}, {args.samples} x 3x224x224 float32, "
          f"{data_mb:.1f} MB; model + data {model_mb + data_mb:.1f} MB; --ratio {args.ratio}")
    print(f"machine: {env_note}; onnxruntime / OpenBLAS threads: defaults (all cores)")
    print(f"idle interpreter (import onnxprune.cli): {idle_mb:.0f} MB; memory goal: peak above idle < 4 x model + data"
          f" = {budget_mb:.0f} MB; time goal: < {GOAL_SECONDS:.0f} s")
    header = (f"{'variant':<26} {'wall s':>7} {'CPU s':>7} {'x (a)':>6} {'peak MB':>8} {'above idle':>11} "
              f"{'x (model+data)':>15} {'x model':>8} {'goals':>6}")
    print(header)
    print("-" * len(header))
    for key, row in rows.items():
        vs_a = f"{row['seconds'] / base:.2f}" if base else "n/a"
        goals = "FAILED" if row["rc"] else ("T" if row["time_ok"] else "t") + ("M" if row["memory_ok"] else "m")
        print(f"{row['label']:<26} {row['seconds']:>7.1f} {row['cpu_seconds']:>7.1f} {vs_a:>6} "
              f"{row['peak_mb']:>8.0f} {row['above_idle_mb']:>11.0f} "
              f"{row['above_idle_mb'] / (model_mb + data_mb):>15.2f} {row['above_idle_mb'] / model_mb:>8.2f} "
              f"{goals:>6}")
    print("goals: T/t wall time under / over 180 s, M/m peak above idle under / over 4 x model + data; "
          "x (model+data) and x model: peak above idle over those file sizes")
    for key, row in rows.items():
        for line in row["summary"]:
            print(f"  {key}: {line}")

    result = {
        "benchmark": "recovery_cost", "model": model.name, "model_mb": round(model_mb, 1),
        "calib_samples": args.samples, "calib_mb": round(data_mb, 1), "ratio": args.ratio,
        "idle_mb": round(idle_mb), "cores": os.cpu_count(), "shared_machine": True, "threads": "default (all cores)",
        "goal_time_s": GOAL_SECONDS, "goal_memory": "4x model + data", "goal_memory_mb": round(budget_mb),
        "variants": {
            key: {"label": row["label"], "ok": not row["rc"], "error": row.get("error"),
                  "seconds": round(row["seconds"], 1), "cpu_seconds": round(row["cpu_seconds"], 1),
                  "time_x_a": round(row["seconds"] / base, 2) if base else None,
                  "peak_mb": round(row["peak_mb"]), "peak_above_idle_mb": round(row["above_idle_mb"]),
                  "peak_x_model_plus_data": round(row["above_idle_mb"] / (model_mb + data_mb), 2),
                  "peak_x_model": round(row["above_idle_mb"] / model_mb, 2),
                  "time_ok": row["time_ok"], "memory_ok": row["memory_ok"],
                  "memory_ok_absolute": not row["rc"] and row["peak_mb"] < budget_mb,
                  "memory_ok_4x_sum": not row["rc"] and row["above_idle_mb"] < GOAL_X * (model_mb + data_mb)}
            for key, row in rows.items()},
    }
    goal_keys = [k for k in ("c", "d", "e") if k in rows]  # the variants that reconstruct
    result["goals"] = {"reconstruction_under_180s": all(rows[k]["time_ok"] for k in goal_keys) if goal_keys else None,
                       "reconstruction_memory_under_4x_model_plus_data":
                           all(rows[k]["memory_ok"] for k in goal_keys) if goal_keys else None}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
