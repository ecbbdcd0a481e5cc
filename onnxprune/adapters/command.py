"""The command adapter: fine-tune and evaluate by running the user's own commands.

For frameworks onnxprune has no adapter for (TensorFlow, Keras, Paddle) or for a training cluster's job
script. The train command gets the sparse model and writes the fine-tuned one; placeholders in the
command are filled in per call:

    {input}     the sparse ONNX model to fine-tune
    {output}    where the command must write the fine-tuned ONNX model (same weight names and shapes)
    {masks}     an .npz with one bool array per weight name, True where the value must stay zero
    {settings}  a JSON file with this trial's settings; each setting is also a placeholder ({lr}, ...)

The evaluate command gets `{input}` and prints the metric (higher is better) as its last line of output.
A command is split like a shell line (shlex) but run without a shell; give a list to skip splitting.
A model that comes back with pruned weights no longer zero is re-zeroed, with a warning.

Example:
    CommandAdapter(train="python finetune.py {input} {output} --masks {masks} --lr {lr}",
                   evaluate="python evaluate.py {input}")
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from onnxprune.adapters import check_returned
from onnxprune.atomic import write_bytes, write_text
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.load import read_proto
from onnxprune.graph.save import save
from onnxprune.pruning.masks import Masks

Command = str | Sequence[str]


class CommandAdapter:
    """Runs `train` to fine-tune and `evaluate` to score; see the module docstring for placeholders.

    Args:
        train: the fine-tuning command; must use {input} and {output}.
        evaluate: the scoring command; must use {input}. Without it, `evaluate` refuses.
        cwd: working directory of both commands.
        env: environment of both commands (default: inherited).
        timeout: seconds a command may run before it is stopped and the call fails.
    """

    def __init__(self, train: Command, evaluate: Command | None = None, *, cwd: str | Path | None = None,
                 env: Mapping[str, str] | None = None, timeout: float | None = None) -> None:
        self.train_command = _split(train, "train command")
        self.eval_command = _split(evaluate, "evaluate command") if evaluate is not None else None
        _require(self.train_command, ("input", "output"), "train command")
        if self.eval_command is not None:
            _require(self.eval_command, ("input",), "evaluate command")
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.timeout = timeout

    def fine_tune(self, model: onnx.ModelProto, masks: Masks, settings: dict[str, Any]) -> onnx.ModelProto:
        """Write the model, masks and settings to a scratch folder, run the train command, read its output."""
        with tempfile.TemporaryDirectory(prefix="onnxprune-train-") as scratch:
            folder = Path(scratch)
            paths = {"input": folder / "input" / "model.onnx", "output": folder / "output" / "model.onnx",
                     "masks": folder / "masks.npz", "settings": folder / "settings.json"}
            paths["output"].parent.mkdir()
            save(model, paths["input"])
            write_bytes(paths["masks"], masks.to_npz())
            write_text(paths["settings"], json.dumps(settings, indent=1))
            values = {key: str(value) for key, value in settings.items()}
            values.update({key: str(path) for key, path in paths.items()})
            argv = _expand(self.train_command, values, "train command")
            self._run(argv, "train command", capture=False)
            if not paths["output"].is_file():
                raise OnnxPruneError(f"train command wrote no model to {{output}} ({shlex.join(argv)})")
            try:
                returned = read_proto(paths["output"])
            except OnnxPruneError as exc:
                raise OnnxPruneError(f"train command's output: {exc}") from None
        return check_returned(model, returned, masks, "train command's model")

    def evaluate(self, model: onnx.ModelProto) -> float:
        """Run the evaluate command on the model and read the number on its last line of output."""
        if self.eval_command is None:
            raise OnnxPruneError("the command adapter has no evaluate command")
        with tempfile.TemporaryDirectory(prefix="onnxprune-eval-") as scratch:
            path = Path(scratch) / "model.onnx"
            save(model, path)
            argv = _expand(self.eval_command, {"input": str(path)}, "evaluate command")
            output = self._run(argv, "evaluate command", capture=True)
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        try:
            metric = float(lines[-1])
        except (IndexError, ValueError):
            last = lines[-1][:80] if lines else ""
            raise OnnxPruneError(f"evaluate command printed no number on its last line (got {last!r})") from None
        if not math.isfinite(metric):
            raise OnnxPruneError(f"evaluate command printed {metric}, not a finite number")
        return metric

    def _run(self, argv: list[str], what: str, capture: bool) -> str:
        """Run one command in its own process group; its output goes to our stderr (live) unless captured.

        On a timeout (or any interruption) the whole group is killed, so a shell's or launcher's children
        do not keep training after the call has failed.
        """
        if self.cwd is not None and not Path(self.cwd).is_dir():
            raise OnnxPruneError(f"{what}: working folder {self.cwd} does not exist")
        try:
            child = subprocess.Popen(argv, cwd=self.cwd, env=self.env, text=True, start_new_session=True,
                                     stdout=subprocess.PIPE if capture else 2, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise OnnxPruneError(f"{what}: program {argv[0]!r} not found") from None
        except PermissionError:
            raise OnnxPruneError(f"{what}: program {argv[0]!r} is not executable") from None
        try:
            output, _ = child.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            raise OnnxPruneError(f"{what} ran longer than {self.timeout} s: {shlex.join(argv)}") from None
        except BaseException:
            _kill_group(child)
            raise
        if child.returncode != 0:
            raise OnnxPruneError(f"{what} failed with exit code {child.returncode}: {shlex.join(argv)}")
        return output or ""


def _kill_group(child: subprocess.Popen) -> None:
    """SIGKILL the command and everything it started (same process group), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.kill()
    child.communicate()


def _split(command: Command, what: str) -> list[str]:
    argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
    if not argv:
        raise OnnxPruneError(f"{what} is empty")
    return argv


def _fields(argv: list[str], what: str) -> set[str]:
    from string import Formatter

    names = set()
    for part in argv:
        try:
            names.update(name for _, name, _, _ in Formatter().parse(part) if name is not None)
        except ValueError as exc:
            raise OnnxPruneError(f"{what}: bad placeholder in {part!r} ({exc}); a literal brace is written twice") from None
    return names


def _require(argv: list[str], needed: Sequence[str], what: str) -> None:
    names = _fields(argv, what)
    missing = [f"{{{name}}}" for name in needed if name not in names]
    if missing:
        raise OnnxPruneError(f"{what} must use the placeholder {' and '.join(missing)}: {shlex.join(argv)}")


def _expand(argv: list[str], values: dict[str, str], what: str) -> list[str]:
    try:
        return [part.format_map(values) for part in argv]
    except KeyError as exc:
        known = ", ".join(f"{{{name}}}" for name in values)
        raise OnnxPruneError(f"{what}: unknown placeholder {{{exc.args[0]}}} (known here: {known})") from None
    except (ValueError, IndexError, AttributeError) as exc:
        raise OnnxPruneError(f"{what}: bad placeholder ({exc})") from None
