"""Target Distribution Aware Sampling: transforms, filters and coloured noise (SEMANTICS §6),
frequency statistics (`stats`), filter calibration (`calibration`) and the paper's presets."""
