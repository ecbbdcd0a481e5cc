"""Adaptive analysis replayed on recorded per-sample values: a stopping rule tried in seconds, not minutes.

benchmarks/analysis_samples.py keeps every entry's metric on each of the 64 samples; here the adaptive
rounds (`adaptive.run_rounds`, the real code) run with a `measure` that, instead of running the model,
reads those values in the analysis' seeded sample order and stops each entry by the real `StopRule`.
Cost is counted as the evaluator counts it (suffix share x samples / N per entry; per job the prefix
from the previous job's cut on the batches that job kept, else from the inputs; the baseline: 1).
Then `prune --sens` plans from the replayed table and the full one are compared as in analysis_cost.py.

    python benchmarks/analysis_simulate.py --models resnet50
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import analysis_cost

from onnxprune.analysis import adaptive
from onnxprune.analysis.sequential import StopRule, Tally
from onnxprune.analysis.table import SensitivityTable, ratio_key

BATCH = 8  # as the adaptive analysis batches (`analyze.SEQUENTIAL_BATCH`)
SPREAD_Z = adaptive.REFINE_Z


@dataclass
class Recorded:
    """Per entry its per-sample values (in the adaptive analysis' order), per group its cost shares."""

    baseline: float
    full: dict[str, dict[str, float | None]]
    values: dict[tuple[str, str], np.ndarray]
    shares: dict[str, tuple[float, float, float]]  # suffix, prefix from the inputs, prefix from the last cut
    samples: int

    @staticmethod
    def load(name: str) -> Recorded:
        full = json.loads((analysis_cost.WORK / f"{name}_full.json").read_text())["table"]
        with np.load(analysis_cost.WORK / f"{name}_samples.npz") as f:
            keys = [tuple(str(e).split("\t")) for e in f["entries"]]
            per = f["values"]
            shares = {str(g): tuple(float(x) for x in s) for g, s in zip(f["groups"], f["shares"])}
        order = np.random.default_rng(0).permutation(per.shape[1])
        return Recorded(full["baseline"], full["groups"], {k: per[i][order] for i, k in enumerate(keys)},
                        shares, per.shape[1])

    def cell(self, gid: str, key: str) -> np.ndarray | None:
        """The entry's per-sample values; None when it zeroes nothing (the baseline, never run)."""
        if (gid, key) in self.values:
            return self.values[(gid, key)]
        value = self.full[gid][key]
        if value == self.baseline:
            return None
        same = [k for (g, k) in self.values if g == gid and self.full[g][k] == value]
        return self.values[(gid, same[0])]


@dataclass
class Replay:
    """The cache and the meter of a replayed analysis."""

    data: Recorded
    rule_for: object  # cap -> StopRule (as `run.EntryRun.measure` makes it)
    rows: dict[str, dict[str, float | None]] = field(default_factory=dict)
    seen: dict[tuple[str, str], int] = field(default_factory=dict)
    spent: float = 1.0  # the baseline on every sample
    kept: int = 0  # batches the last job's prefix kept

    def measure(self, todo, cap: float | None) -> bool:
        jobs: dict[str, list[str]] = {}
        for group, key in todo:
            jobs.setdefault(group.id, []).append(key)
        for gid, keys in jobs.items():
            batches = 0
            rule = self.rule_for(cap)
            for key in keys:
                per = self.data.cell(gid, key)
                if per is None:
                    self.rows.setdefault(gid, {})[key] = self.data.baseline
                    continue
                n = self._estimate(per, rule)
                value = float(np.mean(per[:n]))
                self.rows.setdefault(gid, {})[key] = value
                self.seen[(gid, key)] = n
                if (gid, key) in self.data.values:  # not a copy of an entry zeroing the same channels
                    self.spent += self.data.shares[gid][0] * n / self.data.samples
                batches = max(batches, -(-n // BATCH))
                if cap is not None and value < self.data.baseline - cap:
                    break
            _, start, step = self.data.shares[gid]
            step = start if step < 0 else step
            self.spent += (step * min(batches, self.kept) + start * max(0, batches - self.kept)) * BATCH / self.data.samples
            self.kept = batches
        return True

    def advance(self, todo) -> bool:
        """Go on with each entry of `todo` by one batch."""
        jobs: dict[str, list[str]] = {}
        for group, key in todo:
            jobs.setdefault(group.id, []).append(key)
        for gid, keys in jobs.items():
            for key in keys:
                per = self.data.cell(gid, key)
                n = self.seen[(gid, key)]
                more = min(BATCH, self.data.samples - n)
                self.rows[gid][key] = float(np.mean(per[:n + more]))
                self.seen[(gid, key)] = n + more
                if (gid, key) in self.data.values:
                    self.spent += self.data.shares[gid][0] * more / self.data.samples
            _, start, step = self.data.shares[gid]
            step = start if step < 0 else step
            self.spent += (step if self.kept else start) * BATCH / self.data.samples
            self.kept = 1
        return True

    def spread(self, gid: str, key: str) -> float:
        """The half-width of a cell's loss as `sequential` computes it (0: every sample seen, or not run)."""
        n = self.seen.get((gid, key))
        if n is None or n >= self.data.samples:
            return 0.0
        return Tally().add(1.0 - self.data.cell(gid, key)[:n]).half_width(self.data.samples, z=SPREAD_Z)

    def _estimate(self, per: np.ndarray, rule: StopRule | None) -> int:
        if rule is None:
            return len(per)
        for n in range(BATCH, len(per) + 1, BATCH):
            if rule.settled(Tally().add(1.0 - per[:n]), len(per)):
                return n
        return len(per)


def replay(name: str, cover: float = adaptive.DEFAULT_COVER, shares: list[float] | None = None) -> tuple[Replay, SensitivityTable]:
    """The adaptive analysis of `name` on its recorded values; returns the replay and its table."""
    _, _, targets, planner, _ = analysis_cost.l1_planner(name)
    data = Recorded.load(name)
    keys = [ratio_key(r / 10) for r in range(1, 10)]
    sim = Replay(data, lambda cap: None if cap is None else StopRule(floor=adaptive.FLOOR_SHARE * cap, min_samples=BATCH))

    def rows():
        return {g.id: dict(sim.rows.get(g.id, {})) for g in targets}

    def table():
        return SensitivityTable("", data.baseline, {g: r for g, r in rows().items() if r},
                                {g.id: g.channels for g in targets})

    outcome = adaptive.run_rounds(rows, targets, keys, data.baseline, table, planner, cover, sim.measure)
    before = sim.spent
    shares = list(adaptive.DEFAULT_PLANS) if shares is None else shares
    if shares:
        adaptive.refine(table, targets, keys, planner, shares, sim.spread, sim.advance)
    sim.refined = sim.spent - before
    result = table()
    result.metric = "fidelity"
    result.worse_than = adaptive.bounds(rows(), keys, data.baseline, outcome.cap)
    result.decided_macs = 0.0
    return sim, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50")
    parser.add_argument("--batch", type=int, default=8, help="samples per batch (and the fewest an entry sees)")
    parser.add_argument("--shares", default="0.5", help="shares of MACs whose plans are refined (none: none)")
    parser.add_argument("--z", type=float, default=adaptive.REFINE_Z, help="standard errors a cell is read off by")
    parser.add_argument("--first-cap", type=float, default=adaptive.FIRST_CAP)
    parser.add_argument("--plans", action="store_true", help="compare plans too (runs prune and the model)")
    args = parser.parse_args()
    global BATCH
    BATCH = args.batch
    for name in args.models.split(","):
        adaptive.FIRST_CAP = args.first_cap
        global SPREAD_Z
        SPREAD_Z = args.z
        shares = [] if args.shares == "none" else [float(x) for x in args.shares.split(",")]
        sim, table = replay(name, shares=shares)
        counts = np.bincount(list(sim.seen.values()), minlength=65)
        print(f"{name}: cost {sim.spent:.1f} evaluations ({sim.refined:.1f} refining), {len(sim.seen)} entries run; samples seen: "
              + ", ".join(f"{n}: {c}" for n, c in enumerate(counts) if c))
        if args.plans:
            path, shapes, _, held_out = analysis_cost.MODELS[name](64)
            full = json.loads((analysis_cost.WORK / f"{name}_full.json").read_text())["table"]
            compared = analysis_cost.plans((path, shapes), {"full": full, "adaptive": table.to_dict()}, held_out)
            for target, p in compared.items():
                print(f"  {target:.0%}: identical {p['identical']}, fidelity {p['fidelity']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
