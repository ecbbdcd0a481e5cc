"""The run config of `onnxprune iterate`: a TOML file read into dataclasses, checked key by key.

Library callers build the same dataclasses in Python (`RunConfig(schedule=Schedule(target=0.6))`);
the TOML file is that, plus an `[adapter]` table saying how the command line builds the adapter.

    model = "baseline.onnx"           # the model the run starts from (command line)
    output = "dense.onnx"             # optional: also write the final dense model here
    input_shapes = ["input:1,3,224,224"]

    [schedule]
    target = 0.6                      # fraction of the starting model's MACs removed at the end
    step = 0.1                        # rounds at 0.1, 0.2, ... target (or ratios = [0.3, 0.5, 0.6])
    tolerance = 1.0                   # largest metric drop accepted, in the metric's units
    compare_to = "baseline"           # the drop is measured against the baseline, or "previous" round
    max_backoffs = 2                  # smaller steps tried for one schedule entry before stopping

    [prune]
    criterion = "l1"                  # l1, l2, bn, act or greedy; also round_to, exclude, attention, sensitivity,
    reanalyze = false                 # true: measure sensitivity again on each round's starting model
    data = "calib.npz"                # optional: every round re-solves the layers reading removed channels
    reconstruct = true                # (default with data; false: data only for the choice of channels)

    [analyze]                         # with reanalyze: as `onnxprune analyze` (data, eval, ratios, workers)
    data = "val.npz"

    [finetune]
    settings = { epochs = 5 }         # given to every trial
    trials = [{ lr = 0.01 }, { lr = 0.003 }]

    [adapter]                         # kind = "command" (train, evaluate, cwd, timeout),
    kind = "python"                   # kind = "python": a function that returns an Adapter, or
    factory = "my_adapter.py:make_adapter"   # kind = "reconstruct": no training (needs [prune] data)

    [encrypt]                         # optional: also write the dense model encrypted
    key_file = "model.key"            # or key_env = "VAR" (the key as hex or base64), or passphrase_env = "VAR"

Relative paths are relative to the config file. The file is checked by hand (`_Table`), not by a schema
library: pydantic would replace the typed reads and the unknown-key check (about 50 lines) but adds 12 MB
of compiled dependencies to the core and errors to map back to one line (`FILE: schedule.step: expected
float, got 'x'`); the range and cross-field checks (`check`) stay either way, shared with library callers.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxprune.analysis.table import check_analysis
from onnxprune.errors import OnnxPruneError, OptionError
from onnxprune.pruning.prune import check_method
from onnxprune.secure.keys import KeyOrigin

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = None

COMPARE_TO = ("baseline", "previous")


MAX_ROUNDS = 100  # each round prunes and fine-tunes; more is a typo in step, not a plan


@dataclass
class Schedule:
    """The MACs ratios the rounds rise through, and when a round counts as recovered."""

    target: float | None = None  # fraction of the starting model's MACs removed in the end
    ratios: list[float] | None = None  # explicit schedule; default step, 2 step, ... target
    step: float = 0.1
    tolerance: float = 1.0  # largest accepted drop of the metric, in its units
    compare_to: str = "baseline"  # measure the drop against the baseline or the previous round
    max_backoffs: int = 2  # smaller steps tried for one schedule entry before the run stops

    def steps(self) -> list[float]:
        """The ratios asked, in order, ending at the target."""
        if self.ratios:
            return [float(r) for r in self.ratios]
        count = max(1, math.ceil(self.target / self.step - 1e-9))
        return [round(min(self.target, k * self.step), 6) for k in range(1, count + 1)]

    def check(self) -> None:
        if self.target is None and not self.ratios:
            raise OnnxPruneError("schedule: give target (and step) or ratios")
        if self.ratios:
            if any(not 0 < r < 1 for r in self.ratios) or any(b <= a for a, b in zip(self.ratios, self.ratios[1:])):
                raise OnnxPruneError(f"schedule.ratios {self.ratios}: must rise strictly, each in (0, 1)")
            if self.target is None:
                self.target = self.ratios[-1]
            if abs(self.ratios[-1] - self.target) > 1e-9:
                raise OnnxPruneError(f"schedule.ratios must end at target {self.target}")
        if not 0 < self.target < 1:
            raise OnnxPruneError(f"schedule.target {self.target}: not in (0, 1)")
        if not 0 < self.step < 1:
            raise OnnxPruneError(f"schedule.step {self.step}: not in (0, 1)")
        rounds = len(self.ratios) if self.ratios else math.ceil(self.target / self.step - 1e-9)
        if rounds > MAX_ROUNDS:
            raise OnnxPruneError(f"schedule: {rounds} rounds (target {self.target}, step {self.step}); at most "
                                 f"{MAX_ROUNDS} — raise schedule.step")
        if self.tolerance < 0:
            raise OnnxPruneError(f"schedule.tolerance {self.tolerance}: must be >= 0")
        if self.compare_to not in COMPARE_TO:
            raise OnnxPruneError(f"schedule.compare_to {self.compare_to!r}: choose baseline or previous")
        if self.max_backoffs < 0:
            raise OnnxPruneError(f"schedule.max_backoffs {self.max_backoffs}: must be >= 0")


@dataclass
class PruneSettings:
    """How each round picks channels (as `onnxprune prune`)."""

    criterion: str | None = None  # None: as `prune` ("greedy" with data, "l1" without)
    round_to: int | None = None  # None: automatic alignment, as `prune`
    exclude: list[str] = field(default_factory=list)
    attention: str = "dims"  # as `prune --attention`: attention MatMuls lose head_dim positions or whole heads
    sensitivity: str | None = None  # an `analyze` table used by every round
    reanalyze: bool = False  # measure sensitivity again on every round's starting model
    data: str | None = None  # calibration data: every round re-solves the layers reading removed channels
    reconstruct: bool | None = None  # None: on when `data` is given

    def check(self) -> None:
        with _as_keys("prune"):
            check_method(self.criterion, self.round_to, self.attention, self.data is not None, self.reconstruct)


@dataclass
class Analysis:
    """How each round measures sensitivity when `prune.reanalyze` is on (as `onnxprune analyze`)."""

    data: str | None = None  # .npz named after the model's inputs (+ labels); None: random inputs, fidelity
    eval: str | None = None  # package.module:function, a user metric
    ratios: list[float] | None = None  # default: analyze's 0.1 ... 0.9
    workers: int = 1

    def check(self) -> None:
        with _as_keys("analyze"):
            check_analysis(self.ratios, self.workers)


@dataclass
class FineTune:
    """Fine-tuning trials per round: each trial's settings are `settings` updated by its own table."""

    settings: dict[str, Any] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=lambda: [{}])

    def trial_settings(self) -> list[dict[str, Any]]:
        return [{**self.settings, **trial} for trial in self.trials]

    def check(self) -> None:
        if not self.trials:
            raise OnnxPruneError("finetune.trials: give at least one trial (an empty table {} is one)")
        try:  # settings are recorded with every checkpoint
            json.dumps([self.settings, self.trials])
        except (TypeError, ValueError) as exc:
            raise OnnxPruneError(f"finetune: settings must be plain values (numbers, strings, lists, tables): "
                                 f"{exc}") from None


@dataclass
class RunConfig:
    """Everything `iterative.run` needs besides the adapter and the baseline model."""

    schedule: Schedule = field(default_factory=Schedule)
    prune: PruneSettings = field(default_factory=PruneSettings)
    finetune: FineTune = field(default_factory=FineTune)
    analyze: Analysis = field(default_factory=Analysis)
    encrypt: KeyOrigin | None = None  # [encrypt]: also write the dense model encrypted with this key
    model: str | None = None  # the starting model, when not given to `run` directly
    output: str | None = None  # also write the dense model here
    input_shapes: list[str] = field(default_factory=list)  # NAME:D0,D1,... for dynamic inputs
    adapter: dict[str, Any] = field(default_factory=dict)  # how the command line builds the adapter

    def check(self) -> RunConfig:
        self.schedule.check()
        self.prune.check()
        self.finetune.check()
        self.analyze.check()
        if self.encrypt is not None:
            with _as_keys("encrypt"):
                self.encrypt.check(required=True)
        return self

    def run_key(self) -> dict[str, Any]:
        """What decides the rounds: a work dir only resumes a run whose key is the same."""
        data = asdict(self)
        return {key: data[key] for key in ("schedule", "prune", "finetune", "analyze", "input_shapes")}


@contextmanager
def _as_keys(table: str) -> Iterator[None]:
    """Say the library's option errors with this config's keys (`{round_to}` -> `prune.round_to`)."""
    try:
        yield
    except OptionError as exc:
        raise OnnxPruneError(exc.say(lambda name: f"{table}.{name}")) from None


# --- reading the TOML file ---------------------------------------------------------------------------


class _Table:
    """One TOML table being read: typed gets, and an error for every key nobody asked for."""

    def __init__(self, data: Any, path: Path, name: str = "") -> None:
        self.path, self.name = path, name
        if not isinstance(data, dict):
            raise OnnxPruneError(f"{path}: {name or 'the file'}: expected a table")
        self.data = dict(data)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise OnnxPruneError(f"{self.where(key)}: expected {name}, got {value!r}")
        return value

    def numbers(self, key: str) -> list[float] | None:
        values = self.get(key, list)
        if values is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise OnnxPruneError(f"{self.where(key)}: expected a list of numbers")
        return None if values is None else [float(v) for v in values]

    def strings(self, key: str) -> list[str]:
        values = self.get(key, list, [])
        if not all(isinstance(v, str) for v in values):
            raise OnnxPruneError(f"{self.where(key)}: expected a list of strings")
        return values

    def table(self, key: str) -> _Table:
        return _Table(self.get(key, dict, {}), self.path, self.where(key, full=False))

    def done(self) -> None:
        if self.data:
            raise OnnxPruneError(f"{self.where(min(self.data))}: unknown key")

    def where(self, key: str, full: bool = True) -> str:
        dotted = f"{self.name}.{key}" if self.name else key
        return f"{self.path}: {dotted}" if full else dotted


def load_config(path: str | Path) -> RunConfig:
    """Read and check a run config; relative paths become relative to the config file."""
    path = Path(path)
    if tomllib is None:  # pragma: no cover
        raise OnnxPruneError("reading TOML needs Python 3.11 or newer")
    from onnxprune.data import MAX_JSON_BYTES, read_bounded

    text = read_bounded(path, MAX_JSON_BYTES, "run config")
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OnnxPruneError(f"{path}: not a TOML file ({exc})") from None
    except RecursionError:
        raise OnnxPruneError(f"{path}: not a TOML file (nested too deeply)") from None
    base = path.resolve().parent
    top = _Table(data, path)

    def resolve(value: str | None) -> str | None:
        return None if value is None else str(base / value)

    s = top.table("schedule")
    schedule = Schedule(target=s.get("target", float), ratios=s.numbers("ratios"), step=s.get("step", float, 0.1),
                        tolerance=s.get("tolerance", float, 1.0), compare_to=s.get("compare_to", str, "baseline"),
                        max_backoffs=s.get("max_backoffs", int, 2))
    s.done()
    p = top.table("prune")
    prune = PruneSettings(criterion=p.get("criterion", str), round_to=p.get("round_to", int),
                          exclude=p.strings("exclude"), attention=p.get("attention", str, "dims"),
                          sensitivity=resolve(p.get("sensitivity", str)),
                          reanalyze=p.get("reanalyze", bool, False), data=resolve(p.get("data", str)),
                          reconstruct=p.get("reconstruct", bool))
    p.done()
    f = top.table("finetune")
    trials = f.get("trials", list, [{}])
    if not all(isinstance(t, dict) for t in trials):
        raise OnnxPruneError(f"{f.where('trials')}: expected a list of tables")
    finetune = FineTune(settings=f.get("settings", dict, {}), trials=trials)
    f.done()
    a = top.table("analyze")
    analysis = Analysis(data=resolve(a.get("data", str)), eval=a.get("eval", str), ratios=a.numbers("ratios"),
                        workers=a.get("workers", int, 1))
    a.done()
    encrypt = None
    if "encrypt" in top.data:
        e = top.table("encrypt")
        encrypt = KeyOrigin(key_file=resolve(e.get("key_file", str)), key_env=e.get("key_env", str),
                            passphrase_env=e.get("passphrase_env", str))
        e.done()
    model = resolve(top.get("model", str))
    adapter = _adapter_table(top.get("adapter", dict, {}), base, path)
    if adapter.get("kind") == "reconstruct":
        if prune.data is None:
            raise OnnxPruneError(f"{path}: adapter kind = \"reconstruct\" needs [prune] data (calibration data)")
        adapter.update(data=prune.data, reference=model)
    config = RunConfig(schedule=schedule, prune=prune, finetune=finetune, analyze=analysis, encrypt=encrypt,
                       model=model, output=resolve(top.get("output", str)),
                       input_shapes=top.strings("input_shapes"), adapter=adapter)
    top.done()
    return config.check()


def _adapter_table(data: dict[str, Any], base: Path, path: Path) -> dict[str, Any]:
    """Check the [adapter] table's keys now, so a typo fails before any round runs."""
    table = _Table(data, path, "adapter")
    kind = table.get("kind", str)
    if kind == "command":
        spec = {"kind": kind, "train": table.get("train", (str, list)), "evaluate": table.get("evaluate", (str, list)),
                "cwd": str(base / table.get("cwd", str, ".")), "timeout": table.get("timeout", float)}
        if spec["train"] is None:
            raise OnnxPruneError(f"{table.where('train')}: missing (the fine-tuning command)")
    elif kind == "python":
        factory = table.get("factory", str)
        if not factory or ":" not in factory:
            raise OnnxPruneError(f"{table.where('factory')}: expected 'module:function' or 'file.py:function'")
        module, _, function = factory.rpartition(":")
        if module.endswith(".py"):
            module = str(base / module)
        spec = {"kind": kind, "factory": f"{module}:{function}", "options": table.get("options", dict, {})}
    elif kind == "reconstruct":
        spec = {"kind": kind}
    elif kind is None and not data:
        return {}
    else:
        raise OnnxPruneError(f"{table.where('kind')}: {kind!r}, choose command, python or reconstruct")
    table.done()
    return spec


def build_adapter(spec: dict[str, Any]):
    """The adapter an `[adapter]` table describes (for the command line)."""
    if not spec:
        raise OnnxPruneError("the run config has no [adapter] table (kind = \"command\", \"python\" or \"reconstruct\")")
    if spec["kind"] == "reconstruct":
        from onnxprune.adapters.reconstruct import ReconstructAdapter

        return ReconstructAdapter(spec["data"], spec.get("reference"))
    if spec["kind"] == "command":
        from onnxprune.adapters.command import CommandAdapter

        return CommandAdapter(spec["train"], spec["evaluate"], cwd=spec["cwd"], timeout=spec["timeout"])
    factory = import_object(spec["factory"])
    adapter = factory(**spec["options"])
    if not (callable(getattr(adapter, "fine_tune", None)) and callable(getattr(adapter, "evaluate", None))):
        raise OnnxPruneError(f"adapter.factory {spec['factory']}: returned {type(adapter).__name__}, which has no "
                             "fine_tune and evaluate methods")
    return adapter


def import_object(reference: str):
    """`package.module:name` or `path/to/file.py:name` -> the object (user code named in a config).

    As when running user code with `python -m` or `python file.py`, the current directory (for a module)
    or the file's folder (for a file) becomes importable, so the code can import its neighbours.
    """
    module_name, _, name = reference.rpartition(":")
    is_file = module_name.endswith(".py")
    if is_file and not Path(module_name).is_file():
        raise OnnxPruneError(f"{reference}: no such file {module_name}")
    folder = str(Path(module_name).resolve().parent) if is_file else str(Path.cwd())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        if is_file:
            spec = importlib.util.spec_from_file_location(f"onnxprune_user_{Path(module_name).stem}", module_name)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise OnnxPruneError(f"{reference}: cannot import {exc.name!r}") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise OnnxPruneError(f"{reference}: module has no {name!r}") from None
