"""What a run of the loop records: one `Round` per round, the `RunResult`, and its table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from onnxprune.pruning.inspect import human


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


def format_table(result: RunResult) -> str:
    """The per-round report as text."""

    head = (f"{'round':>5} {'asked':>6} {'MACs':>9} {'removed':>8} {'params':>9} {'before':>8} {'after':>8} "
            f"{'trial':>5} {'time':>7}  result")
    base = (f"{'base':>5} {'':>6} {human(result.baseline_macs):>9} {'':>8} {human(result.baseline_params):>9} "
            f"{'':>8} {num(result.baseline_metric):>8}")
    lines = [head, base]
    for r in result.rounds:
        verdict = "accepted" if r.accepted else "rejected"
        if r.backoff:
            verdict += f" (smaller step {r.backoff})"
        lines.append(f"{r.round:>5} {r.ratio_asked:>6.1%} {human(r.macs):>9} {r.macs_removed:>8.1%} "
                     f"{human(r.params):>9} {num(r.metric_before):>8} {num(r.metric_after):>8} "
                     f"{r.best_trial:>5} {r.seconds:>6.1f}s  {verdict}")
    lines.append(f"{'final':>5} {result.target:>6.1%} {human(result.macs):>9} {result.macs_removed:>8.1%} "
                 f"{human(result.params):>9} {'':>8} {num(result.metric):>8}")
    lines.append(f"dense model: {result.dense}" + (f" (encrypted: {result.encrypted})" if result.encrypted else ""))
    if result.stopped:
        lines.append(f"stopped early: {result.stopped}")
    return "\n".join(lines)


def num(value: float) -> str:
    return f"{value:.4g}"


def brief(settings: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in settings.items()) + "}"
