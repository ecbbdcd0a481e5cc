"""Recovery without training (`prune --data`): calibration data, data-aware channel choice, reconstruction.

- `calibration`: the calibration `.npz` (or arrays), checked against the model, in batches;
- `staged`: run a model stage by stage over the whole calibration set, weights changing between stages;
- `grams`: one pass over the unpruned model, in windows of layers, feeding each layer's input to the
  caller's sums (energies, A'A, reconstruction's targets);
- `scores`: the data-aware criteria: what each channel carries on the data (`act`), or `greedy`;
- `greedy`: remove first what the re-solved layers can best make up for (`--criterion greedy`), and
  the error that leaves per group and ratio;
- `lstsq`: the sampled feature rows and the ridge solves all of them share (`spd`: float32 Cholesky);
- `reconstruct`: re-solve the layers that read removed channels by least squares (`edits`: the sparse
  zeros, applied as the pruned run reaches them);
- `targets`: what the unpruned model computes at a layer's sampled rows, for `reconstruct` to fit (kept
  by the greedy pass when it runs first);
- `resolve`: each group's readers re-solved alone, in closed form (`analyze --reconstruct`);
- `allocation`: per-group ratios from the greedy pass's error curves, priced per MAC (`--allocation
  reconstruction`, the default with `--data`).

How a layer is a matrix product (im2col for convs) is its operator's registry entry: `rules.linear`.
"""
