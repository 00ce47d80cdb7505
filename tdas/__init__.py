"""Target Distribution Aware Sampling: transforms, filters and coloured noise (SEMANTICS §6)."""
