"""Benchmark the encryption layer on a big model, to check it stays fast and memory-bounded.

Generates a model of at least 2.5 GB with external data (a chain of MatMul + Add with 8192x8192 float32
weights) in a fresh folder under the system temp dir (or --tmpdir), then measures, each step in its
own child process:

* encrypt_file: throughput and peak RSS (goal: >= 200 MB/s, peak < 300 MB),
* decrypt_file: throughput and peak RSS (for information),
* load_session: time and peak RSS as a ratio of the model size (goal: < 2.2x),
* correctness: the in-memory decrypted session gives the same outputs as the plain one.

Peak RSS is the child's VmHWM (checked against wait4's ru_maxrss); "above baseline" subtracts the peak of
a child that only imports the same modules. MB = 10**6 bytes. Prints a table, then one JSON line.
The folder is removed afterwards (unless --keep).

    python benchmarks/encryption.py [--size-gb 2.5] [--dim 8192] [--tmpdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MB = 10**6
GOAL_ENCRYPT_PEAK_MB = 300
GOAL_ENCRYPT_MB_S = 200
GOAL_LOAD_RATIO = 2.2


@dataclass
class StepResult:
    """What one child process measured about itself."""

    step: str
    seconds: float
    peak_bytes: int
    after_import_bytes: int
    ru_maxrss_bytes: int = 0
    extra: dict | None = None


# ---------------------------------------------------------------- model generation (parent)


def generate_model(folder: Path, size_gb: float, dim: int) -> Path:
    """Write a MatMul+Add chain whose weights (>= size_gb) live in one external file, one layer at a time."""
    import onnx
    from onnx import TensorProto, helper

    layer_bytes = dim * dim * 4
    layers = max(1, -(-int(size_gb * 1e9) // layer_bytes))
    rng = np.random.default_rng(0)
    scale = np.float32(np.sqrt(3.0 / dim))  # keeps the activations' variance stable along the chain
    initializers, nodes = [], []
    current = "x"
    with open(folder / "weights.bin", "wb") as weights:
        for index in range(layers):
            matrix = rng.random((dim, dim), dtype=np.float32)
            matrix *= 2 * scale
            matrix -= scale
            offset = weights.tell()
            weights.write(memoryview(matrix))
            del matrix
            tensor = TensorProto(name=f"w{index}", dims=[dim, dim], data_type=TensorProto.FLOAT)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "weights.bin"), ("offset", offset), ("length", layer_bytes)):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
            bias = rng.uniform(-0.01, 0.01, dim).astype(np.float32)
            initializers += [tensor, onnx.numpy_helper.from_array(bias, f"b{index}")]
            nodes += [
                helper.make_node("MatMul", [current, f"w{index}"], [f"m{index}"]),
                helper.make_node("Add", [f"m{index}", f"b{index}"], [f"h{index}"]),
            ]
            current = f"h{index}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, dim])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def model_input(dim: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).uniform(-1, 1, (1, dim)).astype(np.float32)}


# ---------------------------------------------------------------- children (each measures itself)


def vm_hwm_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(step: str, workdir: Path, dim: int, size_gb: float) -> StepResult:
    """Run one step after importing everything any step needs, so baselines are comparable."""
    import onnxruntime as ort

    from onnxprune.secure import KeySource, decrypt_file, encrypt_file, load_session

    after_import = vm_hwm_bytes()
    if step == "generate":
        start = time.perf_counter()
        generate_model(workdir / "model", size_gb, dim)
        return StepResult(step, time.perf_counter() - start, vm_hwm_bytes(), after_import)
    key = KeySource(key_file=workdir / "bench.key")
    model, encrypted = workdir / "model" / "model.onnx", workdir / "model.enc"
    extra: dict = {}
    start = time.perf_counter()
    if step == "baseline":
        pass
    elif step == "encrypt":
        encrypt_file(model, encrypted, key)
    elif step == "decrypt":
        decrypt_file(encrypted, workdir / "decrypted" / "model.onnx", key)
    elif step == "plain":
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        extra["load_seconds"] = time.perf_counter() - start
        np.save(workdir / "plain_out.npy", session.run(None, model_input(dim))[0])
    elif step == "load_session":
        session = load_session(encrypted, key_file=workdir / "bench.key", providers=["CPUExecutionProvider"])
        extra["load_peak_bytes"] = vm_hwm_bytes()
        extra["load_seconds"] = time.perf_counter() - start
        output = session.run(None, model_input(dim))[0]
        expected = np.load(workdir / "plain_out.npy")
        extra["identical"] = bool(np.array_equal(output, expected))
        extra["max_abs_diff"] = float(np.max(np.abs(output - expected)))
    else:
        raise SystemExit(f"unknown step {step}")
    seconds = time.perf_counter() - start
    return StepResult(step, seconds, vm_hwm_bytes(), after_import, extra=extra)


def run_child(step: str, workdir: Path, dim: int, size_gb: float) -> StepResult:
    """Run a step in a fresh interpreter and also read its peak RSS from the kernel (wait4).

    The parent stays small (no onnx/onnxruntime imported) because ru_maxrss also counts the
    forked parent's pages before exec.
    """
    command = [sys.executable, __file__, "--child", step, "--workdir", str(workdir)]
    command += ["--dim", str(dim), "--size-gb", str(size_gb)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd=REPO)
    output = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"step {step} failed with exit code {process.returncode}")
    result = StepResult(**json.loads(output.decode().strip().splitlines()[-1]))
    result.ru_maxrss_bytes = usage.ru_maxrss * 1024
    return result


# ---------------------------------------------------------------- report


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def summarize(
    results: dict[str, StepResult], model_bytes: int, container_bytes: int, decrypted_ok: bool
) -> dict:
    base = results["baseline"].peak_bytes
    enc, dec, load = results["encrypt"], results["decrypt"], results["load_session"]
    load_peak = load.extra["load_peak_bytes"]
    summary = {
        "model_bytes": model_bytes,
        "container_bytes": container_bytes,
        "baseline_peak_mb": round(base / MB, 1),
        "encrypt": {
            "seconds": round(enc.seconds, 2),
            "mb_per_s": round(model_bytes / MB / enc.seconds, 1),
            "peak_mb": round(enc.peak_bytes / MB, 1),
            "peak_above_baseline_mb": round((enc.peak_bytes - base) / MB, 1),
            "ru_maxrss_mb": round(enc.ru_maxrss_bytes / MB, 1),
        },
        "decrypt": {
            "seconds": round(dec.seconds, 2),
            "mb_per_s": round(model_bytes / MB / dec.seconds, 1),
            "peak_mb": round(dec.peak_bytes / MB, 1),
            "peak_above_baseline_mb": round((dec.peak_bytes - base) / MB, 1),
            "files_identical": decrypted_ok,
        },
        "load_session": {
            "seconds": round(load.extra["load_seconds"], 2),
            "peak_mb": round(load_peak / MB, 1),
            "peak_ratio": round(load_peak / model_bytes, 3),
            "peak_above_baseline_ratio": round((load_peak - base) / model_bytes, 3),
            "ru_maxrss_mb": round(load.ru_maxrss_bytes / MB, 1),
        },
        "plain_session": {
            "seconds": round(results["plain"].extra["load_seconds"], 2),
            "peak_mb": round(results["plain"].peak_bytes / MB, 1),
        },
        "outputs_identical": load.extra["identical"],
        "max_abs_diff": load.extra["max_abs_diff"],
    }
    summary["goals"] = {
        "encrypt_peak_lt_300mb": enc.peak_bytes < GOAL_ENCRYPT_PEAK_MB * MB,
        "encrypt_ge_200mb_s": summary["encrypt"]["mb_per_s"] >= GOAL_ENCRYPT_MB_S,
        "load_session_peak_lt_2.2x": load_peak < GOAL_LOAD_RATIO * model_bytes,
        "outputs_identical": load.extra["identical"],
    }
    return summary


def print_table(s: dict) -> None:
    rows = [
        ("model size (model + external data)", f"{s['model_bytes'] / MB:,.0f} MB"),
        ("interpreter baseline peak (imports only)", f"{s['baseline_peak_mb']:,.0f} MB"),
        ("encrypt_file time", f"{s['encrypt']['seconds']:.2f} s"),
        ("encrypt_file throughput", f"{s['encrypt']['mb_per_s']:,.0f} MB/s"),
        (
            "encrypt_file peak RSS (above baseline)",
            f"{s['encrypt']['peak_mb']:,.0f} MB ({s['encrypt']['peak_above_baseline_mb']:,.0f} MB)",
        ),
        ("decrypt_file throughput", f"{s['decrypt']['mb_per_s']:,.0f} MB/s"),
        (
            "decrypt_file peak RSS (above baseline)",
            f"{s['decrypt']['peak_mb']:,.0f} MB ({s['decrypt']['peak_above_baseline_mb']:,.0f} MB)",
        ),
        ("load_session time", f"{s['load_session']['seconds']:.2f} s"),
        ("load_session peak RSS", f"{s['load_session']['peak_mb']:,.0f} MB"),
        (
            "load_session peak / model size (above baseline)",
            f"{s['load_session']['peak_ratio']:.2f}x ({s['load_session']['peak_above_baseline_ratio']:.2f}x)",
        ),
        ("plain InferenceSession(path) time, for comparison", f"{s['plain_session']['seconds']:.2f} s"),
        ("plain InferenceSession(path) peak RSS (mmap)", f"{s['plain_session']['peak_mb']:,.0f} MB"),
        ("decrypted session == plain session", str(s["outputs_identical"])),
        ("decrypt_file output == original files", str(s["decrypt"]["files_identical"])),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for goal, met in s["goals"].items():
        print(f"{'goal ' + goal:<{width}}  {'met' if met else 'NOT MET'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.5, help="minimum weight size in GB (10**9 bytes)")
    parser.add_argument("--dim", type=int, default=8192, help="width of each square MatMul weight")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--tmpdir", type=Path, help="where to create the work folder (default: system temp)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(asdict(child(args.child, args.workdir, args.dim, args.size_gb))))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="onnxprune-encryption-", dir=args.tmpdir))
    try:
        (workdir / "model").mkdir()
        (workdir / "bench.key").write_text(os.urandom(32).hex() + "\n")
        os.chmod(workdir / "bench.key", 0o600)
        print(f"working in {workdir}", flush=True)
        results = {}
        for step in ("generate", "baseline", "encrypt", "plain", "load_session", "decrypt"):
            print(f"step {step} ...", flush=True)
            os.sync()  # no step pays for the previous one's writeback
            results[step] = run_child(step, workdir, args.dim, args.size_gb)
        model_path = workdir / "model" / "model.onnx"
        decrypted_ok = all(
            filecmp.cmp(model_path.parent / name, workdir / "decrypted" / name, shallow=False)
            for name in ("model.onnx", "weights.bin")
        )
        summary = summarize(
            results, folder_size(model_path.parent), (workdir / "model.enc").stat().st_size, decrypted_ok
        )
        print_table(summary)
        print(json.dumps(summary))
        return 0 if all(summary["goals"].values()) else 1
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
