"""The full table of benchmarks/analysis_cost.py, with every entry's per-sample metric kept beside it.

With each entry's value on each of the 64 samples (and what each part of a job costs), a stopping rule
or a refinement round can be tried offline (`simulate`) on the exact numbers the analysis would see:
an entry stopped after n samples (in the adaptive analysis' seeded order) is the mean of its first n.

    python benchmarks/analysis_samples.py --models resnet50

Writes benchmarks/out/analysis_cost/{model}_full.json (the table analysis_cost.py reuses) and
{model}_samples.npz (per entry: its values by sample index; per group: suffix and prefix shares).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import analysis_cost

from onnxprune.analysis import evaluator


def record(name: str, samples: int) -> None:
    """Run the full table of `name` with `Evaluator._measure` recording per-sample values."""
    values: dict[tuple[str, str], np.ndarray] = {}
    shares: dict[str, tuple[float, float, float]] = {}

    def measure(self, job, entry, runner):
        metric, before = self.payload.metric, self.meter.spent
        per = np.concatenate([metric.per_sample(runner, k, feeds) for k, feeds in metric.data.batches()])
        values[(job.group, entry.ratio)] = per
        prefix = runner.prefix
        full = prefix.cut.prefix({})
        incremental = prefix.sessions.get(True)
        shares[job.group] = (runner.share, self.meter.share(full) if full is not None else 0.0,
                             incremental[1] if incremental else -1.0)
        value = float(np.mean(per))
        finite = value if np.isfinite(value) else None
        return evaluator.Result(job.group, entry.ratio, finite, len(per), self.meter.spent - before)

    evaluator.Evaluator._measure = measure
    path, shapes, data, _ = analysis_cost.MODELS[name](samples)
    analysis_cost.WORK.mkdir(parents=True, exist_ok=True)
    data_path = analysis_cost.WORK / f"{name}_{samples}.npz"
    np.savez(data_path, **data)
    analysis_cost.full_table(name, (path, shapes), data_path, fresh=True)
    keys = sorted(values)
    np.savez(analysis_cost.WORK / f"{name}_samples.npz",
             entries=np.array([f"{g}\t{r}" for g, r in keys]), values=np.stack([values[k] for k in keys]),
             groups=np.array(list(shares)), shares=np.array(list(shares.values())))
    print(json.dumps({"model": name, "entries": len(keys)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50")
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    for name in args.models.split(","):
        record(name, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
