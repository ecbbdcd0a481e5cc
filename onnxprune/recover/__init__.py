"""Recovery without training: calibration data, data-aware channel choice, least-squares reconstruction.

`scores` measures what each channel carries on the data (for `--criterion act`); `reconstruct` re-solves
the layers that read removed channels; `staged` runs a model stage by stage over the calibration set.
"""
