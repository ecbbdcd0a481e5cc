"""Fuzz `inspect` and `prune` with broken models: the only outcomes allowed are exit 0 with a valid model,
or exit 2 with one error line.

Every case starts from a committed fixture (or a seed case of issue 13), applies 1-3 random structural
mutations (drop or duplicate nodes and initializers, corrupt dims, dtypes, attributes and names, point
external data anywhere, wrap nodes in an If) or byte-level ones (truncate, flip, insert, delete, splice),
and runs both commands in a forked child with a time and memory bound. A case is reproducible from
(seed, index).

    python -m tools.fuzz --cases 2000 --seed 1        # the long run; prints the figure and a JSON line

Outcome kinds: ok (exit 0, and for prune a written model that passes onnx.checker and loads in
onnxruntime), refused (exit 2, one error line); anything else is a failure: internal (exit 1),
traceback, noisy (exit 2 with more than one error line), bad-output, hang, memory, crash (a signal).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import select
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
GOOD = ("ok", "refused")
TIMEOUT = 60.0  # seconds per case (both commands)
MEMORY_MB = 3000  # resident memory per case
LOCATIONS = ("w.bin", "missing.bin", "../outside.bin", "/etc/hostname", "link.bin", "", "a/../../outside.bin",
             "sub/w.bin", ".", "w.bin\x00x")


@dataclass
class Case:
    """One fuzz input: where it came from and what was done to it."""

    index: int
    source: str
    mutations: list[str] = field(default_factory=list)
    data: bytes = b""


@dataclass
class Outcome:
    kind: str
    detail: str = ""


# --- structural mutations ---------------------------------------------------------------------------


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _drop_node(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    index = int(rng.integers(len(p.graph.node)))
    del p.graph.node[index]
    return f"drop node {index}"


def _duplicate_node(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    node = _pick(rng, p.graph.node)
    p.graph.node.insert(int(rng.integers(len(p.graph.node) + 1)), copy.deepcopy(node))
    return f"duplicate node {node.name}"


def _drop_initializer(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    index = int(rng.integers(len(p.graph.initializer)))
    del p.graph.initializer[index]
    return f"drop initializer {index}"


def _duplicate_initializer(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    init = _pick(rng, p.graph.initializer)
    p.graph.initializer.append(copy.deepcopy(init))
    return f"duplicate initializer {init.name}"


def _corrupt_dims(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    init = _pick(rng, p.graph.initializer)
    value = int(_pick(rng, [0, 1, -1, -7, 3, 2**31, 2**62, int(rng.integers(1, 64))]))
    if init.dims and rng.random() < 0.8:
        init.dims[int(rng.integers(len(init.dims)))] = value
    else:
        init.dims.append(abs(value) or 1)
    return f"dims of {init.name} -> {list(init.dims)}"


def _corrupt_dtype(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    init = _pick(rng, p.graph.initializer)
    init.data_type = int(rng.integers(0, 27))
    return f"dtype of {init.name} -> {init.data_type}"


def _corrupt_data(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    init = _pick(rng, p.graph.initializer)
    raw = init.raw_data
    cut = int(rng.integers(0, len(raw) + 1)) if raw else 0
    init.raw_data = raw[:cut] if rng.random() < 0.5 else raw + bytes(int(rng.integers(1, 64)))
    return f"raw data of {init.name} -> {len(init.raw_data)} bytes"


def _nan_weights(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    init = _pick(rng, p.graph.initializer)
    if init.data_type == TensorProto.FLOAT and init.raw_data:
        values = np.frombuffer(init.raw_data, dtype=np.float32).copy()
        values[rng.random(values.size) < 0.3] = _pick(rng, [np.nan, np.inf, -np.inf, 1e38, 0.0])
        init.raw_data = values.tobytes()
    return f"odd values in {init.name}"


def _rename_input(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    node = _pick(rng, p.graph.node)
    if not node.input:
        return "rename (no input)"
    names = [o for n in p.graph.node for o in n.output] + [i.name for i in p.graph.initializer] + ["", "nobody"]
    slot = int(rng.integers(len(node.input)))
    node.input[slot] = _pick(rng, names)
    return f"input {slot} of {node.name} -> {node.input[slot]!r}"


def _corrupt_attribute(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    node = _pick(rng, p.graph.node)
    if not node.attribute:
        node.attribute.append(helper.make_attribute("bogus", 1))
        return f"attribute bogus on {node.name}"
    attr = _pick(rng, node.attribute)
    value = int(_pick(rng, [0, -1, 2, 3, 7, 1 << 40]))
    if attr.type == onnx.AttributeProto.INT:
        attr.i = value
    elif attr.type == onnx.AttributeProto.INTS and attr.ints:
        attr.ints[int(rng.integers(len(attr.ints)))] = value
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = float(_pick(rng, [np.nan, -1.0, 1e30]))
    else:
        node.attribute.remove(attr)
    return f"attribute {attr.name} of {node.name}"


def _corrupt_input_shape(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    inp = _pick(rng, p.graph.input)
    dims = inp.type.tensor_type.shape.dim
    if dims:
        dim = dims[int(rng.integers(len(dims)))]
        choice = _pick(rng, ["zero", "negative", "huge", "param", "drop"])
        if choice == "param":
            dim.dim_param = "n"
        elif choice == "drop":
            del dims[-1]
        else:
            dim.dim_value = {"zero": 0, "negative": -3, "huge": 1 << 40}[choice]
    return f"shape of input {inp.name}"


def _versions(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        p.ir_version = int(_pick(rng, [0, 1, 3, 7, 10, 11, 12, 99]))
    else:
        p.opset_import[0].version = int(_pick(rng, [1, 7, 10, 13, 21, 23, 30, 99]))
    return f"ir {p.ir_version} opset {p.opset_import[0].version}"


def _external(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    init = _pick(rng, p.graph.initializer)
    location = _pick(rng, LOCATIONS)
    init.ClearField("raw_data")
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    init.external_data.add(key="location", value=location)
    if rng.random() < 0.5:
        init.external_data.add(key="offset", value=str(int(_pick(rng, [0, 4, -8, 1 << 40]))))
    if rng.random() < 0.5:
        init.external_data.add(key="length", value=_pick(rng, ["16", "0", "x", "-4", str(1 << 40)]))
    return f"{init.name} external at {location!r}"


def _wrap_in_if(p: onnx.ModelProto, rng: np.random.Generator) -> str:
    """Move one node into both branches of an If (reading the outer scope), maybe with an external weight."""
    index = int(rng.integers(len(p.graph.node)))
    node = p.graph.node[index]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output if o]
    body = helper.make_graph([copy.deepcopy(node)], "body", [], outs)
    if rng.random() < 0.5:
        const = helper.make_tensor("c", TensorProto.FLOAT, [4], np.zeros(4, np.float32).tobytes(), raw=True)
        const.ClearField("raw_data")
        const.data_location = TensorProto.EXTERNAL
        const.external_data.add(key="location", value=_pick(rng, LOCATIONS))
        body.node.append(helper.make_node("Constant", [], ["c_unused"], value=const))
    cond = helper.make_tensor("cond_fuzz", TensorProto.BOOL, [], [True])
    p.graph.initializer.append(cond)
    wrapper = helper.make_node("If", ["cond_fuzz"], list(node.output), then_branch=body,
                               else_branch=copy.deepcopy(body), name=f"if_{node.name}")
    p.graph.node.remove(node)
    p.graph.node.insert(index, wrapper)
    return f"wrap {node.name} in If"


STRUCTURAL: list[Callable[[onnx.ModelProto, np.random.Generator], str]] = [
    _drop_node, _duplicate_node, _drop_initializer, _duplicate_initializer, _corrupt_dims, _corrupt_dtype,
    _corrupt_data, _nan_weights, _rename_input, _corrupt_attribute, _corrupt_input_shape, _versions,
    _external, _wrap_in_if,
]


# --- byte-level mutations ---------------------------------------------------------------------------


def _bytes_mutation(data: bytes, rng: np.random.Generator, other: bytes) -> tuple[bytes, str]:
    kind = _pick(rng, ["truncate", "flip", "insert", "delete", "splice"])
    at = int(rng.integers(0, max(len(data), 1)))
    if kind == "truncate":
        return data[:at], f"truncate at {at}"
    if kind == "flip":
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, len(buf)))
            buf[i] ^= 1 << int(rng.integers(8))
        return bytes(buf), "flip bits"
    if kind == "insert":
        return data[:at] + rng.bytes(int(rng.integers(1, 32))) + data[at:], f"insert at {at}"
    if kind == "delete":
        return data[:at] + data[at + int(rng.integers(1, 32)):], f"delete at {at}"
    cut = int(rng.integers(0, max(len(other), 1)))
    return data[:at] + other[cut:], f"splice at {at}"


# --- cases ------------------------------------------------------------------------------------------


def sources() -> dict[str, onnx.ModelProto]:
    """Every committed fixture and every seed case of issue 13, by name."""
    from tests.hostile_models import BROKEN, bf16_model, if_model

    found = {path.stem: onnx.load(path) for path in sorted(FIXTURES.glob("*.onnx"))}
    plain = found["plain_cnn"]
    for name, (breaker, _) in BROKEN.items():
        proto = copy.deepcopy(plain)
        breaker(proto)
        found[f"seed: {name}"] = proto
    found["seed: bf16"] = bf16_model()
    found["seed: if"] = if_model()
    return found


def make_case(index: int, seed: int, models: dict[str, onnx.ModelProto]) -> Case:
    """Case `index` of run `seed`: a source and 1-3 mutations, the same every time."""
    rng = np.random.default_rng([seed, index])
    names = sorted(models)
    seeds = [n for n in names if n.startswith("seed: ")]
    source = _pick(rng, seeds if rng.random() < 0.2 else [n for n in names if n not in seeds])
    case = Case(index, source)
    proto = copy.deepcopy(models[source])
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.75:
            mutation = _pick(rng, STRUCTURAL)
            try:
                case.mutations.append(mutation(proto, rng))
            except (IndexError, ValueError, TypeError, AttributeError) as exc:
                case.mutations.append(f"{mutation.__name__} skipped ({type(exc).__name__})")
    data = proto.SerializeToString()
    if rng.random() < 0.3 or not case.mutations:
        other = models[_pick(rng, names)].SerializeToString()
        data, what = _bytes_mutation(data, rng, other)
        case.mutations.append(what)
    case.data = data
    return case


def _prepare(folder: Path, case: Case) -> Path:
    """The case's model in `folder/model/`, with data files inside and a file and a symlink outside."""
    inner = folder / "model"
    (inner / "sub").mkdir(parents=True)
    (folder / "outside.bin").write_bytes(bytes(range(256)) * 64)
    (inner / "w.bin").write_bytes(np.arange(4096, dtype=np.float32).tobytes())
    (inner / "sub" / "w.bin").write_bytes(np.arange(64, dtype=np.float32).tobytes())
    (inner / "link.bin").symlink_to(folder / "outside.bin")
    path = inner / "m.onnx"
    path.write_bytes(case.data)
    return path


def _judge(result: tuple[int, str, str], output: Path | None) -> Outcome:
    code, _, err = result
    errors = [line for line in err.splitlines() if line.startswith("onnxprune: error:")]
    if "Traceback" in err:
        return Outcome("traceback", err.strip().splitlines()[-1][:200])
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        if len(errors) == 1 and lines[-1] == errors[0]:
            return Outcome("refused", errors[0][:200])
        return Outcome("noisy", " | ".join(lines[-3:])[:300])
    if code != 0:
        return Outcome("internal", (err.strip().splitlines() or [""])[-1][:300])
    if output is not None:
        try:
            onnx.checker.check_model(str(output))
            from onnxprune.graph.runtime import session

            session(output.read_bytes(), optimize=False)
        except Exception as exc:  # noqa: BLE001 - any failure of the written model is the finding
            return Outcome("bad-output", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return Outcome("ok")


def _run_in_child(case: Case, folder: Path) -> list[Outcome]:
    """Both commands on one case, in this (forked) process."""
    from tests.conftest import cli

    path = _prepare(folder, case)
    out = folder / "model" / "out.onnx"
    outcomes = [_judge(cli("inspect", path), None)]
    outcomes.append(_judge(cli("prune", path, "--ratio", "0.3", "-o", out), out if out.exists() else None))
    if outcomes[-1].kind == "ok" and not out.exists():
        outcomes[-1] = Outcome("bad-output", "exit 0 but no file written")
    return outcomes


def _preload() -> None:
    """Import what the commands import, once in the parent: each forked child then starts in milliseconds."""
    import onnxprune.cli
    import onnxprune.graph.runtime  # noqa: F401
    import tests.conftest  # noqa: F401


def run_case(case: Case, timeout: float = TIMEOUT, memory_mb: int = MEMORY_MB) -> list[Outcome]:
    """Run a case in a forked child: two outcomes (inspect, prune), or one hang/memory/crash outcome."""
    _preload()
    with tempfile.TemporaryDirectory(prefix="onnxprune-fuzz-") as tmp:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: run, report as JSON, exit without cleanup handlers
            os.close(read)
            try:
                os.chdir(tmp)
                payload = json.dumps([o.__dict__ for o in _run_in_child(case, Path(tmp))]).encode()
            except BaseException as exc:  # noqa: BLE001 - whatever escapes is the finding
                payload = json.dumps([{"kind": "traceback", "detail": f"{type(exc).__name__}: {exc}"[:300]}]).encode()
            os.write(write, payload)
            os._exit(0)
        os.close(write)
        return _wait(pid, read, timeout, memory_mb)


def _wait(pid: int, read: int, timeout: float, memory_mb: int) -> list[Outcome]:
    deadline = time.monotonic() + timeout
    chunks = []
    verdict = None
    while True:
        ready, _, _ = select.select([read], [], [], 0.05)
        if ready:
            chunk = os.read(read, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            continue
        if time.monotonic() > deadline:
            verdict = Outcome("hang", f"over {timeout:.0f} s")
        elif _rss_mb(pid) > memory_mb:
            verdict = Outcome("memory", f"over {memory_mb} MB")
        if verdict is not None:
            os.kill(pid, signal.SIGKILL)
            break
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if verdict is not None:
        return [verdict]
    if os.WIFSIGNALED(status):
        return [Outcome("crash", f"signal {os.WTERMSIG(status)}")]
    try:
        return [Outcome(**o) for o in json.loads(b"".join(chunks))]
    except ValueError:
        return [Outcome("crash", "no report from the child")]


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(count: int, seed: int, timeout: float = TIMEOUT, log: Callable[[str], None] | None = None) -> dict:
    """Run `count` cases; the figure: cases, outcomes by kind, and every failing case with its mutations."""
    models = sources()
    kinds: Counter[str] = Counter()
    failures = []
    started = time.monotonic()
    for index in range(count):
        case = make_case(index, seed, models)
        outcomes = run_case(case, timeout)
        for outcome in outcomes:
            kinds[outcome.kind] += 1
        bad = [o for o in outcomes if o.kind not in GOOD]
        if bad:
            failures.append({"index": index, "source": case.source, "mutations": case.mutations,
                             "outcomes": [o.__dict__ for o in bad]})
        if log:
            log(f"{index:5d} {case.source:24.24} {'/'.join(o.kind for o in outcomes):18} {'; '.join(case.mutations)[:80]}")
    return {"cases": count, "seed": seed, "runs": sum(kinds.values()), "outcomes": dict(sorted(kinds.items())),
            "failures": failures, "seconds": round(time.monotonic() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per case")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    args = parser.parse_args()
    figure = run(args.cases, args.seed, args.timeout, log=(lambda s: print(s, file=sys.stderr)) if args.verbose else None)
    for failure in figure["failures"]:
        print(f"FAIL case {failure['index']} ({failure['source']}; {'; '.join(failure['mutations'])}): "
              f"{failure['outcomes']}")
    out = figure["outcomes"]
    failed = sum(v for k, v in out.items() if k not in GOOD)
    print(f"{figure['cases']} cases (seed {figure['seed']}), {figure['runs']} command runs in {figure['seconds']} s: "
          + ", ".join(f"{k} {v}" for k, v in out.items()) + f"; {failed} failures "
          f"({out.get('traceback', 0)} tracebacks, {out.get('hang', 0)} hangs)")
    print(json.dumps({k: v for k, v in figure.items() if k != "failures"}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
