"""Target Distribution Aware Sampling: transforms, filters and coloured noise (docs/numerics.md §6),
the run's settings resolved once (`settings`), its file formats (`files`), frequency statistics
(`stats`), filter calibration (`calibration`) and the paper's presets."""
