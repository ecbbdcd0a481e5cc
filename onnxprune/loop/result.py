"""What a run of the loop records: one `Round` per round, the `RunResult`, and its table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from onnxprune.pruning.inspect import human
from onnxprune.tables import Column, render


@dataclass
class Round:
    """One row of the report: one attempt at a ratio (a back-off retry is its own round)."""

    round: int
    ratio_asked: float  # cumulative fraction of the baseline's MACs
    macs: int  # of the dense model this round's sparse model transforms to
    params: int
    macs_removed: float
    metric_before: float  # pruned, before fine-tuning
    metric_after: float  # best trial
    best_trial: int  # 1-based
    settings: dict[str, Any]
    accepted: bool
    backoff: int  # 0 for the first attempt at a schedule entry, k for the k-th smaller step
    seconds: float
    notes: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    """What a run produced: the rounds, the final dense model, and why it stopped early if it did."""

    baseline_metric: float
    baseline_macs: int
    baseline_params: int
    rounds: list[Round]
    metric: float  # of the final model
    macs: int
    params: int
    macs_removed: float
    target: float
    stopped: str | None  # why the run ended before its target; None when it got there
    dense: str
    encrypted: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_table(result: RunResult, width: int | None = None) -> str:
    """The per-round report as text (`width`: the terminal's; None when the output is not one)."""
    columns = [Column(h) for h in ("round", "asked", "MACs", "removed", "params", "before", "after", "trial", "time")]
    rows = [["base", "", human(result.baseline_macs), "", human(result.baseline_params), "",
             num(result.baseline_metric), "", "", ""]]
    for r in result.rounds:
        verdict = "accepted" if r.accepted else "rejected"
        if r.backoff:
            verdict += f" (smaller step {r.backoff})"
        rows.append([str(r.round), f"{r.ratio_asked:.1%}", human(r.macs), f"{r.macs_removed:.1%}", human(r.params),
                     num(r.metric_before), num(r.metric_after), str(r.best_trial), f"{r.seconds:.1f}s", verdict])
    rows.append(["final", f"{result.target:.1%}", human(result.macs), f"{result.macs_removed:.1%}",
                 human(result.params), "", num(result.metric), "", "", ""])
    lines = [render([*columns, Column("result", left=True, wrap=True)], rows, width)]
    lines.append(f"dense model: {result.dense}" + (f" (encrypted: {result.encrypted})" if result.encrypted else ""))
    if result.stopped:
        lines.append(f"stopped early: {result.stopped}")
    return "\n".join(lines)


def num(value: float) -> str:
    return f"{value:.4g}"


def brief(settings: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in settings.items()) + "}"
