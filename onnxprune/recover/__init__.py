"""Recovery without training (`prune --data`): calibration data, data-aware channel choice, reconstruction.

- `calibration`: the calibration `.npz` (or arrays), checked against the model, in batches;
- `staged`: run a model stage by stage over the whole calibration set, weights changing between stages;
- `grams`: one pass over the unpruned model handing each layer its input (energies, A'A);
- `scores`: the data-aware criteria: what each channel carries on the data (`act`), or `greedy`;
- `greedy`: remove first what the re-solved layers can best make up for (`--criterion greedy`);
- `reconstruct`: re-solve the layers that read removed channels by least squares;
- `proxy`: what reconstruction cannot recover, in closed form (`--allocation reconstruction`).

How a layer is a matrix product (im2col for convs) is its operator's registry entry: `rules.linear`.
"""
